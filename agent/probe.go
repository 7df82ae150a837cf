package agent

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/pgha/pgha/agent/decide"
	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

// probe reads the local PostgreSQL: data directory, system id, and, when
// it runs, one status query. It arms the fence watchdog whenever
// PostgreSQL runs as a primary, whoever started it.
func (l *haLoop) probe(ctx context.Context) decide.LocalPG {
	var p decide.LocalPG
	if l.pg == nil {
		return decide.LocalPG{Data: decide.DataEmpty} // a witness
	}
	prev := l.status.get()
	ds, err := l.pg.DataState()
	if err != nil {
		l.log.Warn("read data directory", "err", err)
		p.Running = l.pg.Running()
		return p
	}
	switch ds {
	case pgnode.DataEmpty:
		p.Data = decide.DataEmpty
	case pgnode.DataValid:
		p.Data = decide.DataValid
	case pgnode.DataInvalid:
		p.Data = decide.DataInvalid
	}
	p.Running = l.pg.Running()
	if p.Data == decide.DataValid {
		// While PostgreSQL is stopped the data directory may change under
		// us (an operator swapping it): read pg_control every round then.
		// While it runs, the directory is the one it runs on.
		if prev.SysID != 0 && p.Running {
			p.SysID = prev.SysID
		} else if cd, err := l.pg.ControlData(ctx); err == nil {
			p.SysID = cd.SystemID
			if !p.Running {
				p.WasPrimary, p.CtlTimeline = cd.WasPrimary(), cd.Timeline
			}
		} else {
			l.log.Warn("pg_controldata", "err", err)
			p.Data = decide.DataUnknown
		}
	}
	var st pgnode.Status
	statusOK := false
	if p.Running {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err = l.pg.Status(pctx)
		cancel()
		if err == nil {
			statusOK = true
			p.InRecovery = st.InRecovery
			p.Timeline = st.Timeline
			if st.InRecovery {
				// The walreceiver's timeline is gone while the primary is
				// down, and the other sources trail a timeline switch
				// until the next restartpoint: remember the newest this
				// postmaster has received, so a replica that followed a
				// failover still says so when the next one is needed.
				l.followedTLI = max(l.followedTLI, st.ReceivedTLI)
				p.Timeline = max(p.Timeline, l.followedTLI)
			}
			p.WAL = st.WalLSN
			p.Streaming = st.Streaming
			p.Receive = st.ReceiveLSN
			l.replicas = st.Replicas
		} else {
			l.log.Debug("status query failed", "err", err)
			// Running but not answering (starting, crash recovery): keep
			// the role we knew so a primary is not mistaken for a replica.
			p.InRecovery = prev.InRecov
		}
	}
	if !p.Running {
		l.followedTLI = 0 // a new postmaster proves its timeline afresh
	}
	l.judgeAnswers(ctx, &p, statusOK, time.Now())
	if p.Running && !p.InRecovery {
		l.guard.arm()
	} else {
		l.guard.disarm()
	}
	l.status.update(func(s *NodeStatus) {
		if p.Data != decide.DataValid {
			s.SysID = 0
		} else {
			s.SysID = p.SysID
		}
		s.PGRunning, s.InRecov = p.Running, p.InRecovery
		s.Timeline, s.WAL, s.Streaming = p.Timeline, p.WAL, p.Streaming
		if statusOK {
			s.Receive, s.Replay, s.ReplayLag = st.ReceiveLSN, st.ReplayLSN, st.ReplayLagSeconds
		}
	})
	return p
}

// judgeAnswers fills p.Silent and p.Hung: PostgreSQL is judged by
// whether it answers a bounded query, not by its process existing (a
// SIGSTOPped or hung server keeps its process). A postmaster that never
// answered is starting: it is hung only once postgresql.start_timeout
// has passed; one that answered before is silent from its last answer,
// and hung after primary_unresponsive_timeout.
func (l *haLoop) judgeAnswers(ctx context.Context, p *decide.LocalPG, answered bool, now time.Time) {
	if !p.Running {
		l.pgExited, l.pgLastAnswer, l.connectFailSince = nil, time.Time{}, time.Time{}
		return
	}
	if ex := l.pg.Exited(); ex != l.pgExited {
		l.pgExited, l.pgSeenAt, l.pgLastAnswer, l.connectFailSince = ex, now, time.Time{}, time.Time{}
	}
	// The kept connection answering is not enough when no new session
	// can be opened: users cannot reach the server either. Once a fresh
	// connection failed, every round tries one until it works again.
	if answered && !l.connectFailSince.IsZero() {
		// Connect is bounded by pgnode's connect timeout (4 s), the same
		// a busy machine gets everywhere else.
		if c, err := l.pg.Connect(ctx); err == nil {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			c.Close(cctx)
			cancel()
			l.connectFailSince = time.Time{}
		}
	}
	answered = answered && l.connectFailSince.IsZero()
	limit := l.unresponsive
	if limit <= 0 {
		limit = raftfsm.DefaultPrimaryUnresponsiveTimeout
	}
	switch {
	case answered:
		l.pgLastAnswer = now
		l.guard.answeredAt.Store(now.UnixNano())
	case !l.pgLastAnswer.IsZero():
		p.Silent = now.Sub(l.pgLastAnswer)
		p.Hung = p.Silent >= limit
	default:
		start := l.cfg.PostgreSQL.StartTimeout.Duration
		p.Hung = start > 0 && now.Sub(l.pgSeenAt) >= start
		if p.Hung {
			p.Silent = now.Sub(l.pgSeenAt)
		}
	}
}

// setState records a transitional state (cloning, starting...) that the
// next publish keeps while PostgreSQL is down.
func (l *haLoop) setState(s cluster.PGState) {
	l.status.update(func(n *NodeStatus) { n.State = s })
}

// publish sets the status and the gossip metadata from the local view.
func (l *haLoop) publish(p decide.LocalPG, waiting string) {
	role, state := p.Role(), p.State()
	if l.cfg.Witness {
		role, state = cluster.RoleWitness, cluster.StateWitness
	}
	cur := l.status.get()
	if cur.State.Transitional() && !p.Running {
		state = cur.State
	}
	if cur.Error != "" && !p.Running && !l.cfg.Witness {
		state = cluster.StateRefused
	}
	l.status.update(func(s *NodeStatus) {
		s.Role, s.State, s.LoopAt = role, state, time.Now()
	})
	m := l.baseMeta()
	m.HasRaft = l.raft.HasConfiguration()
	m.Join = !m.HasRaft && (l.cfg.BootstrapExpect == 0 || l.wantJoin.Load())
	if m.Join || !m.HasRaft {
		// Asking to join, or a bootstrap candidate: both become voters
		// only with proof of the cluster's API credentials.
		m.JoinProof = l.ownJoinProof()
	}
	m.Leaving = l.leaving.Load()
	m.Seen = l.form.seenHash()
	m.Role, m.PGState, m.Timeline, m.WAL, m.SysID = role, state, p.Timeline, p.WAL, cur.SysID
	m.Recv = cur.Receive
	m.Pending = cur.Pending
	m.Err = cur.Error
	m.Wait = waiting
	// The heartbeat (beat) dates the status every second; a round that
	// changed nothing else keeps the current date, so it is not one more
	// broadcast to every member.
	m.At = time.Now().UnixMilli()
	if cur := l.gossip.LocalMeta(); cur.At != 0 {
		same := cur
		same.At = m.At
		if same == m {
			m.At = cur.At
		}
	}
	if err := l.gossip.SetMeta(m); err != nil {
		l.log.Warn("publish status", "err", err)
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

// writableMembers names the members that report PostgreSQL running as a
// primary (accepting writes): this node from its own probe, the others
// from their gossip. More than one is a split brain that fencing should
// have made impossible; it is watched so that, should it ever happen, an
// operator hears of it (metric, pgha check, log).
func (l *haLoop) writableMembers() []string {
	var out []string
	for name, m := range l.gossipByName() {
		if name == l.cfg.Name {
			continue
		}
		if m.Alive && m.Meta.Role == cluster.RolePrimary {
			out = append(out, name)
		}
	}
	if s := l.status.get(); s.PGRunning && !s.InRecov && !l.cfg.Witness {
		out = append(out, l.cfg.Name)
	}
	slices.Sort(out)
	return out
}

// writableGrace is how long more than one member must look writable
// before it counts. During every failover the dead primary's last gossip
// still says "primary" for a moment (until it goes stale) while the new
// one promotes; that is not a split brain and must not page anyone.
const writableGrace = 3 * time.Second

// watchWritable updates the writable members that metrics and pgha check
// report, and logs an error when more than one member has looked
// writable for writableGrace.
func (l *haLoop) watchWritable(now time.Time) { l.settleWritable(now, l.writableMembers()) }

func (l *haLoop) settleWritable(now time.Time, w []string) {
	key := strings.Join(w, ",")
	last := l.status.get().Writable
	set := func() { l.status.update(func(s *NodeStatus) { s.Writable = w }) }
	if len(w) <= 1 {
		if len(last) > 1 {
			l.log.Info("a single writable member again", "members", key)
		}
		l.multiSince = time.Time{}
		set()
		return
	}
	if l.multiSince.IsZero() {
		l.multiSince = now
	}
	if now.Sub(l.multiSince) < writableGrace {
		return // keep reporting the previous set until it lasts
	}
	if strings.Join(last, ",") != key {
		l.log.Error("more than one member reports PostgreSQL accepting writes", "members", key,
			"for", now.Sub(l.multiSince).Round(time.Millisecond))
	}
	set()
}
