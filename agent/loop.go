package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

// bootstrapSettle is how long the candidate set must stay the same on
// every candidate before the chosen node bootstraps.
const bootstrapSettle = 300 * time.Millisecond

// haLoop runs rounds every loopInterval, and at once when the FSM, the
// gossip view, leadership or the postmaster changes.
func (a *Agent) haLoop(ctx context.Context) {
	t := time.NewTicker(loopInterval)
	defer t.Stop()
	// A crashed postmaster's exit channel stays closed until the next
	// start: remember the one that fired so it wakes the loop only once.
	var fired <-chan struct{}
	for {
		// While a graceful leave runs, the loop stands still (and goes on
		// if the leave fails).
		var soon <-chan time.Time
		if !a.leaving.Load() {
			start := time.Now()
			busy := a.round(ctx)
			a.metrics.LoopDuration.Observe(time.Since(start).Seconds())
			a.watchWritable(time.Now())
			if busy {
				// Something is on its way (a replica connecting to its
				// primary): look again shortly rather than in a second.
				soon = time.After(transitionRecheck)
			}
		}
		var exited <-chan struct{}
		if a.pg != nil {
			exited = a.pg.Exited()
		}
		if exited == fired {
			exited = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-soon:
		case <-a.wake:
		case <-exited:
			fired = exited
			a.log.Warn("postgres exited")
		}
	}
}

// transitionRecheck is how soon the loop runs again while PostgreSQL is
// between states (a replica not yet streaming).
const transitionRecheck = 200 * time.Millisecond

// round is one pass: gather inputs, decide, act, publish status. It
// reports whether the local PostgreSQL is in transition.
func (a *Agent) round(ctx context.Context) bool {
	// A switchover in progress owns PostgreSQL: the loop waits for it.
	a.actionMu.Lock()
	defer a.actionMu.Unlock()
	local := a.probe(ctx)
	if !a.raft.HasConfiguration() {
		a.publish(local, a.maybeBootstrap())
		return false
	}
	if a.formation.Load() {
		if id, _ := a.raft.Leader(); id != "" {
			if err := a.raft.SetFormationTimeouts(false); err != nil {
				a.log.Warn("restore raft timeouts", "err", err)
			}
			a.formation.Store(false)
		}
	}
	leader := a.isLeader()
	if leader {
		a.reconcileMembers()
	}
	if servers, err := a.raft.Servers(); err == nil {
		inRaft := map[string]bool{}
		for _, s := range servers {
			inRaft[string(s.ID)] = true
		}
		a.savePeers(inRaft)
	}
	st := a.raft.FSM().State()
	if id, _ := a.raft.Leader(); st.Primary != nil && id == st.Primary.Member && id != a.cfg.Name {
		a.primaryContact.Store(a.raft.LastContact())
	}
	in := Input{
		Self:             a.cfg.Name,
		Witness:          a.cfg.Witness,
		Tags:             Tags{NoFailover: a.cfg.Tags.NoFailover, Priority: a.cfg.Tags.FailoverPriority},
		Leader:           leader,
		Now:              time.Now(),
		PromoteNotBefore: a.promoteNotBefore(),
		State:            st,
		Gossip:           a.gossipByName(),
		PG:               a.withTimelineAge(local, st, time.Now()),
		Yield:            a.yield.Load(),
	}
	if leader && st.Primary != nil && st.Primary.Member != a.cfg.Name {
		in.OldPrimary = a.askPrimary(ctx, st)
	}
	if servers, err := a.raft.Servers(); err == nil {
		in.Voters = map[string]bool{}
		for _, s := range servers {
			if s.Suffrage == raft.Voter {
				in.Voters[string(s.ID)] = true
			}
		}
	}
	a.applyDynamic(st, st.IsPrimary(a.cfg.Name))
	if leader && st.IsPrimary(a.cfg.Name) && st.Scheduled != nil && !st.Paused {
		a.runScheduled(ctx, st)
	}
	var waiting, failure string
	holder := st.IsPrimary(a.cfg.Name) && leader
	primaryOK := local.Running && !local.InRecovery
	for _, act := range Decide(in) {
		switch act.Kind {
		case ActWait:
			waiting = act.Reason
			continue
		case ActRefuse:
			failure = act.Reason
			continue
		}
		if err := a.perform(ctx, act, in); err != nil {
			if ctx.Err() != nil {
				return false
			}
			failure = fmt.Sprintf("%s: %v", act.Kind, err)
			break
		}
	}
	// Re-read PostgreSQL after acting so the published status is fresh.
	local = a.probe(ctx)
	a.trackPrimaryStart(holder, primaryOK || (local.Running && !local.InRecovery), st)
	a.noteProblem(waiting, failure)
	a.publish(local, waiting)
	return local.Running && local.InRecovery && !local.Streaming && time.Since(a.lastStart) < 10*time.Second
}

// noteProblem records why nothing happens and logs it once per change.
func (a *Agent) noteProblem(waiting, failure string) {
	a.mu.Lock()
	prevW, prevE := a.status.Waiting, a.status.Error
	a.status.Waiting, a.status.Error = waiting, failure
	a.mu.Unlock()
	if failure != "" && failure != prevE {
		a.log.Error("cannot proceed", "reason", failure)
	}
	if waiting != "" && waiting != prevW {
		a.log.Info("waiting", "reason", waiting)
	}
}

// probe reads the local PostgreSQL: data directory, system id, and, when
// it runs, one status query.
func (a *Agent) probe(ctx context.Context) LocalPG {
	var l LocalPG
	if a.pg == nil {
		return LocalPG{Data: DataEmpty} // a witness
	}
	ds, err := a.pg.DataState()
	if err != nil {
		a.log.Warn("read data directory", "err", err)
		l.Running = a.pg.Running()
		return l
	}
	switch ds {
	case pgnode.DataEmpty:
		l.Data = DataEmpty
	case pgnode.DataValid:
		l.Data = DataValid
	case pgnode.DataInvalid:
		l.Data = DataInvalid
	}
	l.Running = a.pg.Running()
	if l.Data == DataValid {
		// While PostgreSQL is stopped the data directory may change under
		// us (an operator swapping it): read pg_control every round then.
		// While it runs, the directory is the one it runs on.
		if sid := a.Status().SysID; sid != 0 && l.Running {
			l.SysID = sid
		} else if cd, err := a.pg.ControlData(ctx); err == nil {
			l.SysID = cd.SystemID
			if !l.Running {
				l.WasPrimary, l.CtlTimeline = cd.WasPrimary(), cd.Timeline
			}
		} else {
			a.log.Warn("pg_controldata", "err", err)
			l.Data = DataUnknown
		}
	}
	if l.Running {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := a.pg.Status(pctx)
		cancel()
		if err == nil {
			l.InRecovery = st.InRecovery
			l.Timeline = st.Timeline
			l.WAL = st.WalLSN
			l.Streaming = st.Streaming
			l.Receive = st.ReceiveLSN
			a.setStatus(func(s *NodeStatus) {
				s.Receive, s.Replay, s.ReplayLag = st.ReceiveLSN, st.ReplayLSN, st.ReplayLagSeconds
			})
			a.mu.Lock()
			a.replicas = st.Replicas
			a.mu.Unlock()
		} else {
			a.log.Debug("status query failed", "err", err)
			// Running but not answering (starting, crash recovery): keep
			// the role we knew so a primary is not mistaken for a replica.
			l.InRecovery = a.Status().InRecov
		}
	}
	a.primaryUp.Store(l.Running && !l.InRecovery)
	a.setStatus(func(s *NodeStatus) {
		if l.Data != DataValid {
			s.SysID = 0
		} else {
			s.SysID = l.SysID
		}
		s.PGRunning, s.InRecov = l.Running, l.InRecovery
		s.Timeline, s.WAL, s.Streaming = l.Timeline, l.WAL, l.Streaming
	})
	return l
}

// publish sets the status and the gossip metadata from the local view.
func (a *Agent) publish(l LocalPG, waiting string) {
	role, state := "", "stopped"
	switch {
	case a.cfg.Witness:
		role, state = "witness", "witness"
	case l.Running && !l.InRecovery:
		role, state = "primary", "running"
	case l.Running && l.Streaming:
		role, state = "replica", "streaming"
	case l.Running:
		role, state = "replica", "running"
	}
	cur := a.Status()
	if cur.State == "cloning" || cur.State == "initializing" || cur.State == "starting" {
		if !l.Running {
			state = cur.State
		}
	}
	if cur.Error != "" && !l.Running {
		state = "refused"
	}
	a.setStatus(func(s *NodeStatus) {
		s.Role, s.State, s.LoopAt = role, state, time.Now()
	})
	m := a.baseMeta()
	m.HasRaft = a.raft.HasConfiguration()
	m.Join = !m.HasRaft && (a.cfg.BootstrapExpect == 0 || a.joinWanted())
	if m.Join || !m.HasRaft {
		// Asking to join, or a bootstrap candidate: both become voters
		// only with proof of the cluster's API credentials.
		m.JoinProof = a.ownJoinProof()
	}
	m.Leaving = a.leaving.Load()
	m.Seen = a.seenHash()
	m.Role, m.PGState, m.Timeline, m.WAL, m.SysID = role, state, l.Timeline, l.WAL, cur.SysID
	m.Recv = cur.Receive
	m.Pending = cur.Pending
	m.Err = cur.Error
	m.Wait = waiting
	m.At = time.Now().UnixMilli()
	if err := a.gossip.SetMeta(m); err != nil {
		a.log.Warn("publish status", "err", err)
	}
}

// staleAfter is how long a member may go without republishing its status
// before it counts as unreachable: agents republish every second (see
// beat), so this is far quicker than memberlist's own verdict.
const staleAfter = 3 * time.Second

// gossipByName returns this cluster's gossip members by name; Alive is
// false for members whose status went stale.
func (a *Agent) gossipByName() map[string]membership.Member {
	out := map[string]membership.Member{}
	now := time.Now()
	for _, m := range a.gossip.Members() {
		if m.MetaOK && m.Meta.Cluster == a.cfg.Cluster {
			m.Alive = m.Name == a.cfg.Name || now.Sub(m.LastUpdate) < staleAfter
			out[m.Name] = m
		}
	}
	return out
}

// beat republishes this node's status every second with a fresh
// timestamp, even while the HA loop is busy (cloning can take minutes),
// so peers can tell a silent node from a busy one.
func (a *Agent) beat(ctx context.Context) {
	t := time.NewTicker(loopInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := a.gossip.Touch(time.Now().UnixMilli()); err != nil {
			a.log.Debug("republish status", "err", err)
		}
	}
}

// maybeBootstrap forms a new cluster without any external service: when
// exactly bootstrap_expect nodes with no Raft state see each other, agree
// on that set (each publishes a hash of the set it sees), and the set has
// been stable for bootstrapSettle, the node with the smallest name
// bootstraps Raft with all of them as voters. The others wait for its
// leader to contact them. If any visible node already has Raft state, the
// cluster exists and nobody bootstraps: this node asks to join instead.
// It returns why it is still waiting.
func (a *Agent) maybeBootstrap() string {
	expect := a.cfg.BootstrapExpect
	if expect == 0 {
		return "waiting for a leader to add this node (pgha join ADDR, or gossip.join)"
	}
	if a.raft.HadState() {
		return "raft state on disk: waiting for the other members"
	}
	var cands []membership.Member
	var others []string
	for _, m := range a.gossip.Members() {
		if !m.MetaOK || m.Meta.Cluster != a.cfg.Cluster {
			continue
		}
		if m.Meta.HasRaft {
			a.setJoinWanted()
			return fmt.Sprintf("cluster already formed (%s has Raft state): asking to join", m.Name)
		}
		if m.Meta.Leaving {
			continue
		}
		if m.Meta.Expect != expect {
			others = append(others, fmt.Sprintf("%s (bootstrap_expect=%d)", m.Name, m.Meta.Expect))
			continue
		}
		if !a.joinAllowed(m.Name, m) {
			// Forming a cluster makes every candidate a voter: the same
			// proof of the API credentials as a join.
			others = append(others, fmt.Sprintf("%s (no proof of this cluster's API credentials)", m.Name))
			continue
		}
		cands = append(cands, m)
	}
	names := make([]string, len(cands))
	for i, c := range cands {
		names[i] = c.Name
	}
	set := strings.Join(names, ",")
	now := time.Now()
	if set != a.seenSet {
		a.seenSet, a.seenSince = set, now
	}
	if len(others) > 0 && len(cands) < expect {
		return fmt.Sprintf("%d of %d nodes visible; these disagree on bootstrap_expect: %s", len(cands), expect, strings.Join(others, ", "))
	}
	if len(cands) < expect {
		return fmt.Sprintf("waiting for the cluster to form: %d of %d nodes visible (%s)", len(cands), expect, set)
	}
	if len(cands) > expect {
		return fmt.Sprintf("%d nodes visible but bootstrap_expect is %d: refusing to guess which ones form the cluster; fix bootstrap_expect or start the extra nodes with bootstrap_expect: 0", len(cands), expect)
	}
	if names[0] != a.cfg.Name {
		return fmt.Sprintf("waiting for %s to bootstrap the cluster", names[0])
	}
	mine := a.seenHash()
	for _, c := range cands {
		if c.Name != a.cfg.Name && c.Meta.Seen != mine {
			return fmt.Sprintf("waiting for %s to see the same %d nodes", c.Name, expect)
		}
	}
	if now.Sub(a.seenSince) < bootstrapSettle {
		return "candidate set seen; letting it settle"
	}
	servers := make([]raft.Server, 0, len(cands))
	for _, c := range cands {
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(c.Name), Address: raft.ServerAddress(c.Meta.Raft)})
	}
	a.log.Info("bootstrapping the cluster", "voters", set)
	if err := a.raft.Bootstrap(servers); err != nil {
		a.log.Error("bootstrap failed", "err", err)
		return "bootstrap failed: " + err.Error()
	}
	return ""
}

func (a *Agent) seenHash() string {
	if a.seenSet == "" {
		return ""
	}
	h := fnv.New64a()
	h.Write([]byte(a.seenSet))
	return strconv.FormatUint(h.Sum64(), 36)
}

// reconcileMembers is the leader's bridge from gossip to Raft: it adds
// nodes that ask to join (first as non-voters, so an empty node never
// counts in a quorum), promotes them to voters once they have caught up,
// and keeps each member's addresses in the FSM current. It never removes
// anyone because gossip says they are gone: that is an operator's call.
func (a *Agent) reconcileMembers() {
	servers, err := a.raft.Servers()
	if err != nil {
		a.log.Warn("read raft configuration", "err", err)
		return
	}
	inRaft := map[string]raft.Server{}
	for _, s := range servers {
		inRaft[string(s.ID)] = s
	}
	st := a.raft.FSM().State()
	now := time.Now()
	for name, m := range a.gossipByName() {
		if m.Meta.Leaving || !m.Alive {
			continue
		}
		srv, ok := inRaft[name]
		if !ok {
			if !m.Meta.Join || m.Meta.Raft == "" {
				continue
			}
			if !a.joinAllowed(name, m) {
				if a.refusedJoins[name] != m.Meta.JoinProof+"|"+m.Meta.Raft {
					a.log.Warn("refusing to add a member: it did not prove it holds this cluster's API credentials (api.auth / api.token must match)",
						"member", name, "raft", m.Meta.Raft, "gossip", m.Addr)
					a.refusedJoins[name] = m.Meta.JoinProof + "|" + m.Meta.Raft
				}
				continue
			}
			a.log.Info("adding member to raft as non-voter", "member", name, "raft", m.Meta.Raft)
			if err := a.raft.AddNonvoter(name, m.Meta.Raft, applyTimeout); err != nil {
				// Retried every round: log a failure once per distinct reason
				// (a node from another CA is refused each second).
				if msg := err.Error(); a.refusedJoins[name] != msg {
					a.log.Warn("add non-voter", "member", name, "err", err)
					a.refusedJoins[name] = msg
				}
				continue
			}
			delete(a.refusedJoins, name)
			a.nonvoterSince(name, now)
			a.upsertMember(st, name, m)
			continue
		}
		if srv.Suffrage == raft.Nonvoter && m.Meta.HasRaft && now.Sub(a.nonvoterSince(name, now)) > 2*time.Second {
			a.log.Info("promoting member to voter", "member", name)
			if err := a.raft.AddVoter(name, string(srv.Address), applyTimeout); err != nil {
				a.log.Warn("promote to voter", "member", name, "err", err)
			}
		}
		a.upsertMember(st, name, m)
	}
}

// nonvoterSince remembers when the leader first saw a member as a
// non-voter (leader-local bookkeeping; a new leader starts afresh).
func (a *Agent) nonvoterSince(name string, now time.Time) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.nonvoters == nil {
		a.nonvoters = map[string]time.Time{}
	}
	t, ok := a.nonvoters[name]
	if !ok {
		a.nonvoters[name] = now
		return now
	}
	return t
}

func (a *Agent) upsertMember(st raftfsm.State, name string, g membership.Member) {
	want := raftfsm.Member{
		Name: name, RaftAddr: g.Meta.Raft, GossipAddr: g.Addr, APIAddr: g.Meta.API,
		PGAddr: g.Meta.PG, Witness: g.Meta.Witness,
	}
	if cur, ok := st.Members[name]; ok {
		want.JoinedAt = cur.JoinedAt
		if cur == want {
			return
		}
	} else {
		want.JoinedAt = time.Now().UTC()
	}
	if err := a.raft.Apply(raftfsm.UpsertMember{Member: want}, applyTimeout); err != nil {
		a.log.Warn("record member", "member", name, "err", err)
	}
}

// perform carries out one action.
func (a *Agent) perform(ctx context.Context, act Action, in Input) error {
	switch act.Kind {
	case ActInitClaim:
		id := make([]byte, 8)
		_, _ = rand.Read(id)
		a.log.Info("claiming cluster initialisation")
		return a.raft.Apply(raftfsm.InitCluster{ClusterID: hex.EncodeToString(id), Member: a.cfg.Name, At: time.Now().UTC()}, applyTimeout)

	case ActInitDB:
		a.setStatus(func(s *NodeStatus) { s.State = "initializing" })
		a.publish(in.PG, "")
		a.log.Info("initialising PostgreSQL (initdb)")
		start := time.Now()
		sysid, err := a.pg.Bootstrap(ctx)
		if err != nil {
			return fmt.Errorf("initdb: %w", err)
		}
		a.log.Info("PostgreSQL initialised", "system_id", sysid, "took", time.Since(start).Round(time.Millisecond))
		a.setStatus(func(s *NodeStatus) { s.SysID = sysid })
		// Tell the others PostgreSQL runs before they learn the system id,
		// so they start cloning without waiting for another gossip round.
		a.publish(a.probe(ctx), "")
		return a.raft.Apply(raftfsm.SetSystemID{SystemID: sysid, Member: a.cfg.Name, Timeline: 1}, applyTimeout)

	case ActRecordSystemID:
		if in.PG.SysID == 0 {
			return errors.New("system identifier of the local data directory unknown")
		}
		return a.raft.Apply(raftfsm.SetSystemID{SystemID: in.PG.SysID, Member: a.cfg.Name, Timeline: 1}, applyTimeout)

	case ActClone:
		return a.clone(ctx, act, in)

	case ActRunPrimary:
		if in.PG.Running && !a.pg.Running() {
			return nil // it stopped since we looked: decide again next round
		}
		return a.ensureRunning(ctx, pgnode.RolePrimary, nil)

	case ActRunReplica:
		if in.PG.Running && !a.pg.Running() {
			return nil // it stopped since we looked: decide again next round
		}
		host, port, err := splitHostPort(act.Upstream)
		if err != nil {
			return err
		}
		return a.ensureRunning(ctx, pgnode.RoleReplica, &pgnode.Upstream{Host: host, Port: port, Slot: pgnode.SlotName(a.cfg.Name)})

	case ActFence:
		return a.fence(act.Reason)

	case ActPromote:
		return a.promote(ctx, in, time.Time{})

	case ActFailover:
		return a.failover(ctx, in, act.Reason)

	case ActRewind:
		return a.rewind(ctx, act, in)

	case ActTransferLeadership:
		return a.transferLeadership(act.Target, act.Reason)

	case ActSyncStandbys:
		return a.manageSync(ctx, in)

	case ActEnsureSlots:
		if time.Since(a.lastSlots) < 5*time.Second && a.slotsFor == slotKey(in.State) {
			return nil
		}
		var want []string
		for _, name := range in.State.MemberNames() {
			if m := in.State.Members[name]; name != a.cfg.Name && !m.Witness {
				want = append(want, pgnode.SlotName(name))
			}
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		created, dropped, err := a.pg.EnsureSlots(sctx, want)
		if err != nil {
			return fmt.Errorf("replication slots: %w", err)
		}
		if len(created)+len(dropped) > 0 {
			a.log.Info("replication slots", "created", created, "dropped", dropped)
		}
		a.lastSlots, a.slotsFor = time.Now(), slotKey(in.State)
		return nil

	case ActRecordLSN:
		if time.Since(a.lastLSNAt) < 2*time.Second || in.PG.WAL == 0 {
			return nil
		}
		a.lastLSNAt = time.Now()
		err := a.raft.Apply(raftfsm.SetPrimaryLSN{
			Member: a.cfg.Name, Epoch: in.State.Primary.Epoch, LSN: in.PG.WAL,
			Timeline: in.PG.Timeline, At: time.Now().UTC(),
		}, applyTimeout)
		if errors.Is(err, raftfsm.ErrRejected) {
			// A new timeline starts below the old one's position on the
			// record only in a bug; log it, do not fail the round.
			a.log.Warn("primary LSN not recorded", "err", err)
			return nil
		}
		return err
	}
	return fmt.Errorf("unknown action %v", act.Kind)
}

func slotKey(st raftfsm.State) string { return strings.Join(st.MemberNames(), ",") }

// ensureRunning writes the managed configuration for role and makes
// PostgreSQL run with it: start when stopped, reload when a reloadable
// setting changed, restart when a replica needs it. A primary that needs
// a restart is not restarted behind the operator's back: it is reported
// as "restart pending".
func (a *Agent) ensureRunning(ctx context.Context, role pgnode.Role, up *pgnode.Upstream) error {
	changed, restart, err := a.pg.WriteConfig(role, up)
	if err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if !a.pg.Running() {
		a.setStatus(func(s *NodeStatus) { s.State = "starting" })
		a.log.Info("starting PostgreSQL", "role", role.String())
		sctx, cancel := context.WithTimeout(ctx, a.cfg.PostgreSQL.StartTimeout.Duration)
		defer cancel()
		if err := a.pg.Start(sctx); err != nil {
			return fmt.Errorf("start: %w", err)
		}
		a.lastStart = time.Now()
		a.setStatus(func(s *NodeStatus) { s.Pending = false })
		return nil
	}
	if restart && !a.Status().Pending {
		a.log.Warn("PostgreSQL settings changed that need a restart: restart pending (pgha restart)")
	}
	if changed || restart {
		if changed {
			a.log.Info("reloading PostgreSQL configuration")
			if err := a.pg.Reload(ctx); err != nil {
				return err
			}
		}
		// pg_settings knows best what waits for a restart.
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		pending, err := a.pg.PendingRestart(pctx)
		cancel()
		if err == nil {
			a.setStatus(func(s *NodeStatus) { s.Pending = pending || restart })
		}
	}
	return nil
}

// clone copies the primary with pg_basebackup, showing progress, then
// starts the replica.
func (a *Agent) clone(ctx context.Context, act Action, in Input) error {
	host, port, err := splitHostPort(act.Upstream)
	if err != nil {
		return err
	}
	a.setStatus(func(s *NodeStatus) { s.State = "cloning" })
	a.publish(in.PG, "")
	a.log.Info("cloning from the primary (pg_basebackup)", "primary", act.Target, "addr", act.Upstream)
	start := time.Now()
	// No slot for the copy itself: the primary may not have created it
	// yet, and pg_basebackup fails on a missing slot. wal_keep_size covers
	// the gap until streaming starts on the slot.
	err = a.pg.Clone(ctx, pgnode.Upstream{Host: host, Port: port}, func(pct int, detail string) {
		a.log.Info("cloning", "progress", fmt.Sprintf("%d%%", pct), "detail", detail)
	})
	if err != nil {
		a.setStatus(func(s *NodeStatus) { s.State = "stopped" })
		return fmt.Errorf("clone from %s: %w", act.Target, err)
	}
	a.log.Info("clone finished", "took", time.Since(start).Round(time.Millisecond))
	return a.ensureRunning(ctx, pgnode.RoleReplica, &pgnode.Upstream{Host: host, Port: port, Slot: pgnode.SlotName(a.cfg.Name)})
}

// transferLeadership hands Raft leadership to target, at most every 2 s.
func (a *Agent) transferLeadership(target, reason string) error {
	if time.Since(a.lastTransfer) < 2*time.Second {
		return nil
	}
	a.lastTransfer = time.Now()
	a.log.Info("transferring raft leadership", "to", target, "reason", reason)
	return a.transferTo(target)
}

func splitHostPort(hp string) (string, int, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: %w", hp, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: bad port", hp)
	}
	return h, port, nil
}

// sortedNames returns map keys in order.
func sortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// trackPrimaryStart sets yield when this node has held the primary record
// as leader for primaryStartTimeout without running PostgreSQL as
// primary, and clears it as soon as it does (or the record moves).
func (a *Agent) trackPrimaryStart(holder, runningPrimary bool, st raftfsm.State) {
	switch {
	case !st.IsPrimary(a.cfg.Name) || runningPrimary || st.Paused:
		a.failingSince = time.Time{}
		if a.yield.Swap(false) {
			a.log.Info("no longer yielding the primary role")
		}
	case holder && a.failingSince.IsZero():
		a.failingSince = time.Now()
	case holder && time.Since(a.failingSince) > primaryStartTimeout && !a.yield.Load():
		a.log.Error("PostgreSQL could not run as primary; yielding the primary role", "for", time.Since(a.failingSince).Round(time.Second))
		a.yield.Store(true)
	}
}

// withTimelineAge fills l.OldTimelineFor: how long this replica has been
// running on a timeline older than the cluster's without streaming (HA
// loop only).
func (a *Agent) withTimelineAge(l LocalPG, st raftfsm.State, now time.Time) LocalPG {
	behind := l.Running && l.InRecovery && !l.Streaming && st.Primary != nil &&
		l.Timeline != 0 && l.Timeline < st.Primary.Timeline
	if !behind {
		a.oldTimelineSince = time.Time{}
		return l
	}
	if a.oldTimelineSince.IsZero() {
		a.oldTimelineSince = now
	}
	l.OldTimelineFor = now.Sub(a.oldTimelineSince)
	return l
}
