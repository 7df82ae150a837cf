package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/raft"
	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

// Fencing and promotion timing. The numbers fit together like this:
//
//   - The primary's agent confirms its Raft leadership with a quorum
//     (VerifyLeader) every fenceTick. A confirmation counts from the
//     moment it was asked for, not when the answer arrived, so a slow or
//     resumed process never stretches it. When no confirmation succeeded
//     for fenceBudget, or Raft says it lost leadership, it fences: SIGQUIT
//     to the postmaster and each backend, SIGKILL after fenceGrace.
//   - A new leader is elected no sooner than heartbeat_timeout after a
//     quorum last heard the old one (followers refuse votes while they
//     know a leader), so the old primary's last successful confirmation V
//     is at most the election time E minus heartbeat_timeout, and the old
//     primary has stopped by V + fenceBudget + fenceTick + fenceGrace.
//   - The new leader therefore promotes no sooner than E + fenceBudget +
//     fenceTick + fenceGrace + fenceMargin - heartbeat_timeout (0.5 s with
//     the defaults). Nothing the network says can shorten that wait: a
//     refused connection looks the same from a dead node and from behind a
//     rejecting firewall.
//
// primaryStartTimeout: a record holder that leads but has not managed to
// run PostgreSQL as primary for this long yields, so the leader fails
// over rather than hand leadership back forever (Patroni's
// master_start_timeout).
const primaryStartTimeout = 30 * time.Second

const (
	fenceTick   = 100 * time.Millisecond
	fenceBudget = 1000 * time.Millisecond
	fenceGrace  = 150 * time.Millisecond
	fenceMargin = 250 * time.Millisecond
	// askTimeout bounds the leader's question to the old primary's agent.
	askTimeout = 300 * time.Millisecond
)

// promoteNotBefore is the earliest time this leader may promote a new
// primary (see above). Zero when not leader.
func (a *Agent) promoteNotBefore() time.Time {
	since, _ := a.leaderSince.Load().(time.Time)
	if since.IsZero() {
		return time.Time{}
	}
	wait := fenceBudget + fenceTick + fenceGrace + fenceMargin - a.cfg.Raft.HeartbeatTimeout.Duration
	if wait < 0 {
		wait = 0
	}
	return since.Add(wait)
}

// askPrimary asks the recorded primary's agent, through its REST API,
// whether it is alive. Only an answer from that very member counts.
func (a *Agent) askPrimary(ctx context.Context, st raftfsm.State) OldPrimary {
	m, ok := st.Members[st.Primary.Member]
	if !ok || m.APIAddr == "" {
		return OldPrimarySilent
	}
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	h, _, err := a.apiClient(m.APIAddr).Health(ctx)
	if err == nil && h.Name == st.Primary.Member && !h.Yield {
		return OldPrimaryAlive
	}
	return OldPrimarySilent
}

// fence stops PostgreSQL at once: it must not take another write. Until
// a leadership confirmation asked for after this moment succeeds, the
// node does not act as leader (see isLeader), so a stalled leader cannot
// restart what it just fenced.
func (a *Agent) fence(reason string) error {
	a.fencedAt.Store(time.Now().UnixNano())
	a.primaryUp.Store(false)
	if a.pg == nil || !a.pg.Running() {
		return nil
	}
	a.log.Error("fencing: stopping PostgreSQL immediately", "reason", reason)
	return a.pg.Fence(fenceGrace)
}

// fenceLoop is the primary's dead-man switch, independent of the HA loop
// (which may be busy cloning or waiting): while PostgreSQL runs as
// primary, leadership must be confirmed by a quorum at least every
// fenceBudget, or PostgreSQL is fenced. Staleness is checked before
// anything else, so a process resumed after a freeze (SIGSTOP, a VM
// pause) fences on its first tick. A leader whose confirmations fail while
// Raft still calls it leader (a stalled Raft loop, a disk that hangs)
// hands leadership away so that another node can take over.
func (a *Agent) fenceLoop(ctx context.Context) {
	t := time.NewTicker(fenceTick)
	defer t.Stop()
	lastOK := time.Now()
	var verifying chan verifyResult
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.lostLeadership:
		case <-t.C:
		case r := <-verifying:
			verifying = nil
			if r.err == nil {
				lastOK = r.asked
				a.confirmedAt.Store(r.asked.UnixNano())
			}
			continue
		}
		now := time.Now()
		guarding := a.primaryUp.Load()
		if !guarding || (a.raft.IsLeader() && a.isSoleVoter()) {
			// Not guarding a primary; or the only voter, which no other
			// node can supersede: a slow confirmation there (a Raft log
			// fsync stalled behind a bulk load's writeback) must not stop
			// the only database.
			lastOK = now
		} else {
			if now.Sub(lastOK) > fenceBudget {
				a.mustFence(fmt.Sprintf("Raft leadership not confirmed for %s", now.Sub(lastOK).Round(time.Millisecond)))
				if a.raft.IsLeader() {
					a.stepDown("leadership could not be confirmed with a quorum")
				}
				a.poke()
				continue
			}
			if !a.raft.IsLeader() {
				a.mustFence("lost Raft leadership")
				a.poke()
				continue
			}
		}
		// Confirm leadership while guarding a primary, and while the latch
		// of an earlier fence is set (the HA loop waits for it).
		latched := a.fencedAt.Load() > a.confirmedAt.Load()
		if verifying == nil && a.raft.IsLeader() && (guarding || latched) {
			verifying = make(chan verifyResult, 1)
			go a.verify(verifying)
		}
	}
}

// isSoleVoter reports whether this node is the only voter of the latest
// Raft configuration (read without the Raft loop, so a stalled loop
// cannot block the watchdog; a voter being added is already in it).
func (a *Agent) isSoleVoter() bool {
	servers, err := a.raft.Servers()
	if err != nil {
		return false
	}
	voters := 0
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			if string(s.ID) != a.cfg.Name {
				return false
			}
			voters++
		}
	}
	return voters == 1
}

// mustFence fences and reports a failure loudly: the watchdog has nobody
// to return an error to, and a fence that failed must not go unnoticed.
func (a *Agent) mustFence(reason string) {
	if err := a.fence(reason); err != nil {
		a.log.Error("FENCE FAILED: PostgreSQL may still accept writes", "reason", reason, "err", err)
	}
}

type verifyResult struct {
	asked time.Time
	err   error
}

// verify asks Raft to confirm leadership; the result goes to ch (buffered,
// so this goroutine ends even if nobody reads it any more). Raft answers
// every future, at the latest when it shuts down.
func (a *Agent) verify(ch chan<- verifyResult) {
	asked := time.Now()
	err := a.raft.VerifyLeader(fenceBudget)
	ch <- verifyResult{asked: asked, err: err}
}

// stepDown hands Raft leadership to any other voter, in the background.
func (a *Agent) stepDown(reason string) {
	if !a.steppingDown.CompareAndSwap(false, true) {
		return
	}
	a.log.Error("stepping down as Raft leader", "reason", reason)
	go func() {
		defer a.steppingDown.Store(false)
		if err := a.raft.StepDown(5 * time.Second); err != nil {
			a.log.Error("step down", "err", err)
		}
	}()
}

// promote turns the local standby into the primary. The primary record
// for this node is already committed and this node leads (safety rule 1).
// lastSeen, when known, is when the old primary last took writes.
func (a *Agent) promote(ctx context.Context, in Input, lastSeen time.Time) error {
	if !a.pg.Running() {
		// Start in recovery first: promotion then always moves to a new
		// timeline, so the old primary's history can never be mistaken for
		// ours.
		if _, _, err := a.pg.WriteConfig(pgnode.RoleReplica, nil); err != nil {
			return fmt.Errorf("write standby config: %w", err)
		}
		sctx, cancel := context.WithTimeout(ctx, a.cfg.PostgreSQL.StartTimeout.Duration)
		err := a.pg.Start(sctx)
		cancel()
		if err != nil {
			return fmt.Errorf("start standby before promotion: %w", err)
		}
	}
	if !a.isLeader() {
		return errors.New("lost leadership before promotion")
	}
	// Write the primary's configuration first, synchronous_standby_names
	// included, so that in synchronous mode the very first commit after
	// the promotion waits for the synchronous set (the remaining members
	// of the old one, which are the only ones promotion trusted).
	// (A standby without upstream: standby.signal stays, PostgreSQL
	// removes it itself when it promotes.)
	st := a.raft.FSM().State()
	a.syncAdding = nil
	a.applyDynamic(st, true)
	if _, _, err := a.pg.WriteConfig(pgnode.RoleReplica, nil); err != nil {
		return fmt.Errorf("write config before promotion: %w", err)
	}
	if err := a.pg.Reload(ctx); err != nil {
		return fmt.Errorf("reload before promotion: %w", err)
	}
	a.log.Info("promoting PostgreSQL", "epoch", in.State.Primary.Epoch)
	pctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	// Mark the primary as up before the promotion returns: the fence
	// watchdog must cover the moment PostgreSQL starts taking writes.
	a.primaryUp.Store(true)
	tl, err := a.pg.Promote(pctx)
	if err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	now := time.Now().UTC()
	a.log.Info("promoted: this node is the primary", "timeline", tl, "epoch", in.State.Primary.Epoch)
	if _, _, err := a.pg.WriteConfig(pgnode.RolePrimary, nil); err != nil {
		a.log.Warn("write primary config after promotion", "err", err)
	}
	a.lastSlots = time.Time{}
	if err := a.raft.Apply(raftfsm.Promoted{Member: a.cfg.Name, Epoch: in.State.Primary.Epoch, Timeline: tl, At: now}, applyTimeout); err != nil {
		a.log.Warn("record promotion", "err", err)
	}
	return nil
}

// failover commits this node as the new primary (compare-and-swap on the
// epoch), then promotes it: commit, then promote.
func (a *Agent) failover(ctx context.Context, in Input, reason string) error {
	st := in.State
	// When did the agents last see the old primary? Its last Raft
	// heartbeat to this node while it led, or its last gossip status.
	lastSeen, _ := a.primaryContact.Load().(time.Time)
	if g, ok := in.Gossip[st.Primary.Member]; ok && g.LastUpdate.After(lastSeen) {
		lastSeen = g.LastUpdate
	}
	if lastSeen.IsZero() {
		lastSeen, _ = a.leaderSince.Load().(time.Time)
	}
	a.log.Warn("failing over to this node", "old_primary", st.Primary.Member, "reason", reason)
	err := a.raft.Apply(raftfsm.SetPrimary{
		Member: a.cfg.Name, ExpectEpoch: st.Primary.Epoch, Timeline: st.Primary.Timeline,
		LSN: max(in.PG.Receive, in.PG.WAL), Reason: "failover", At: time.Now().UTC(), LastSeen: lastSeen.UTC(),
	}, applyTimeout)
	if err != nil {
		return fmt.Errorf("commit new primary record: %w", err)
	}
	in.State = a.raft.FSM().State()
	return a.promote(ctx, in, lastSeen)
}

// rewind makes a former primary follow the new one: pg_rewind, or, if that
// fails while the new primary is reachable, a fresh clone with the old
// data directory moved aside (kept, never deleted).
func (a *Agent) rewind(ctx context.Context, act Action, in Input) error {
	host, port, err := splitHostPort(act.Upstream)
	if err != nil {
		return err
	}
	up := pgnode.Upstream{Host: host, Port: port, Slot: pgnode.SlotName(a.cfg.Name)}
	a.setStatus(func(s *NodeStatus) { s.State = "rewinding" })
	wasReplica := a.pg.Running()
	if wasReplica {
		// A running replica that diverged (it received WAL the new
		// primary never had): pg_rewind needs it stopped.
		a.log.Warn("replica diverged from the primary's timeline: stopping it to rewind", "reason", act.Reason)
		sctx, cancel := context.WithTimeout(ctx, a.cfg.PostgreSQL.StartTimeout.Duration)
		err := a.pg.Stop(sctx, pgnode.StopFast)
		cancel()
		if err != nil {
			return fmt.Errorf("stop the diverged replica: %w", err)
		}
		a.oldTimelineSince = time.Time{}
	}
	a.log.Info("rewinding before following", "primary", act.Target)
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	err = a.pg.Rewind(rctx, up)
	cancel()
	if err == nil {
		a.log.Info("rewind finished", "took", time.Since(start).Round(time.Millisecond))
		return a.ensureRunning(ctx, pgnode.RoleReplica, &up)
	}
	a.log.Error("pg_rewind failed", "err", err)
	if wasReplica {
		// Maybe it was not diverged at all (see divergedAfter), only cut
		// off from a primary that refuses connections: its data is kept
		// and it runs as a replica again; an operator can `pgha reinit`.
		return errors.Join(fmt.Errorf("rewind of the replica from %s: %w", act.Target, err), a.ensureRunning(ctx, pgnode.RoleReplica, &up))
	}
	if !a.upstreamReachable(ctx, host, port) {
		return fmt.Errorf("rewind from %s: %w (primary unreachable; will retry)", act.Target, err)
	}
	moved, merr := a.pg.MoveAside()
	if merr != nil {
		return fmt.Errorf("rewind failed (%v) and moving the data directory aside failed: %w", err, merr)
	}
	a.log.Warn("rewind failed: old data directory kept, re-cloning", "kept_at", moved)
	return a.clone(ctx, Action{Kind: ActClone, Target: act.Target, Upstream: act.Upstream}, in)
}

// upstreamReachable reports whether a TCP connection to host:port opens.
func (a *Agent) upstreamReachable(ctx context.Context, host string, port int) bool {
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, fmt.Sprint(port)))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// errStatus maps errors of leader-only operations to API errors.
func errStatus(err error) error {
	if errors.Is(err, raftfsm.ErrNotLeader) {
		return api.ErrNotLeader
	}
	if errors.Is(err, raftfsm.ErrRejected) {
		return api.Errorf(http.StatusConflict, "%v", err)
	}
	return err
}
