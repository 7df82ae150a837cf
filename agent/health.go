package agent

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/metrics"
	"github.com/pgha/pgha/pgnode"
)

// Health is this node's status for the health endpoints (GET /primary,
// /replica, /health...), which decide 200 or 503 from it.
func (a *Agent) Health() api.HealthInfo {
	s := a.Status()
	st := a.raft.FSM().State()
	leaderID, _ := a.raft.Leader()
	h := api.HealthInfo{
		Name: s.Name, Cluster: a.cfg.Cluster, Role: s.Role, State: s.State,
		PGRunning: s.PGRunning, InRecovery: s.InRecov, Timeline: s.Timeline,
		Raft: a.raft.State(), Leader: leaderID, Paused: st.Paused, PendingRestart: s.Pending,
		Waiting: s.Waiting, Error: s.Error, LoopAt: s.LoopAt, Yield: a.yield.Load(),
		MaxLagOnFailover: st.Config.MaximumLagOnFailover,
		// Primary needs the record and leadership now: a node that lost
		// leadership is being fenced and must leave the write pool at once.
		Primary: st.IsPrimary(a.cfg.Name) && a.isLeader(),
		Tags: map[string]any{
			"nofailover":        a.cfg.Tags.NoFailover,
			"noloadbalance":     a.cfg.Tags.NoLoadBalance,
			"failover_priority": a.cfg.Tags.FailoverPriority,
		},
	}
	if s.WAL != 0 {
		h.WAL = pgnode.FormatLSN(s.WAL)
	}
	if s.PGRunning && s.InRecov {
		h.ReplicationState = "in archive recovery"
		if s.Streaming {
			h.ReplicationState = "streaming"
		}
		if s.Receive != 0 {
			h.ReceiveLSN = pgnode.FormatLSN(s.Receive)
		}
		if s.Replay != 0 {
			h.ReplayLSN = pgnode.FormatLSN(s.Replay)
		}
		if pos := primaryPosition(st, a.gossipByName()); pos != 0 {
			lag := behind(pos, s.WAL)
			h.LagBytes = &lag
		}
		h.ReplayLagSeconds = s.ReplayLag
		h.SyncStandby = st.InSyncSet(a.cfg.Name)
	}
	return h
}

// MetricsSnapshot is what GET /metrics exports.
func (a *Agent) MetricsSnapshot() metrics.Snapshot {
	h := a.Health()
	s := a.Status()
	st := a.raft.FSM().State()
	snap := metrics.Snapshot{
		Name: a.cfg.Name, Cluster: a.cfg.Cluster, Role: s.Role, PGRunning: s.PGRunning,
		Primary: h.Primary, SyncStandby: h.SyncStandby, Paused: st.Paused, Pending: s.Pending,
		Timeline: s.Timeline, LagBytes: h.LagBytes, ReplayLagSeconds: s.ReplayLag,
		RaftState: a.raft.State(), RaftLastContact: -1,
		PrimaryChanges: map[string]int{},
		Proxy:          a.proxy.Stats(),
	}
	if s.PGRunning && !s.InRecov {
		snap.CurrentLSN = s.WAL
	} else if s.PGRunning {
		snap.ReceiveLSN, snap.ReplayLSN = s.Receive, s.Replay
	}
	stats := a.raft.Stats()
	u := func(k string) uint64 { v, _ := strconv.ParseUint(stats[k], 10, 64); return v }
	snap.RaftTerm, snap.RaftLastIndex = u("term"), u("last_log_index")
	snap.RaftCommit, snap.RaftApplied = u("commit_index"), u("applied_index")
	if a.raft.IsLeader() {
		snap.RaftLastContact = 0
	} else if lc := a.raft.LastContact(); !lc.IsZero() {
		snap.RaftLastContact = time.Since(lc)
	}
	if servers, err := a.raft.Servers(); err == nil {
		for _, sv := range servers {
			if sv.Suffrage == raft.Voter {
				snap.RaftVoters++
			}
		}
	}
	for _, e := range st.History {
		snap.PrimaryChanges[e.Reason]++
	}
	gossip := a.gossipByName()
	snap.Members = len(gossip)
	for _, m := range gossip {
		if m.Alive {
			snap.MembersAlive++
		}
	}
	snap.WritableMembers = len(a.writable())
	return snap
}

// writableMembers names the members that report PostgreSQL running as a
// primary (accepting writes): this node from its own probe, the others
// from their gossip. More than one is a split brain that fencing should
// have made impossible; it is watched so that, should it ever happen, an
// operator hears of it (metric, pgha check, log).
func (a *Agent) writableMembers() []string {
	var out []string
	for name, m := range a.gossipByName() {
		if name == a.cfg.Name {
			continue
		}
		if m.Alive && m.Meta.Role == "primary" {
			out = append(out, name)
		}
	}
	if s := a.Status(); s.PGRunning && !s.InRecov && !a.cfg.Witness {
		out = append(out, a.cfg.Name)
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
// writable for writableGrace (HA loop only).
func (a *Agent) watchWritable(now time.Time) { a.settleWritable(now, a.writableMembers()) }

func (a *Agent) settleWritable(now time.Time, w []string) {
	key := strings.Join(w, ",")
	if len(w) <= 1 {
		if len(a.lastWritable) > 1 {
			a.log.Info("a single writable member again", "members", key)
		}
		a.multiSince = time.Time{}
		a.setWritable(w)
		return
	}
	if a.multiSince.IsZero() {
		a.multiSince = now
	}
	if now.Sub(a.multiSince) < writableGrace {
		return // keep reporting the previous set until it lasts
	}
	if strings.Join(a.lastWritable, ",") != key {
		a.log.Error("more than one member reports PostgreSQL accepting writes", "members", key,
			"for", now.Sub(a.multiSince).Round(time.Millisecond))
	}
	a.setWritable(w)
}

func (a *Agent) setWritable(w []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lastWritable = w
}

// writable is the set watchWritable last settled on.
func (a *Agent) writable() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastWritable
}

// Reinitialize throws this replica's data directory away (moved aside,
// not deleted) and lets the HA loop clone it again from the primary:
// Patroni's `reinit`, for a replica that diverged or got corrupted.
func (a *Agent) Reinitialize(ctx context.Context) error {
	if a.pg == nil {
		return api.Errorf(http.StatusConflict, "%s is a witness: it has no PostgreSQL data", a.cfg.Name)
	}
	a.actionMu.Lock()
	defer a.actionMu.Unlock()
	st := a.raft.FSM().State()
	s := a.Status()
	var g membership.Member
	seen := false
	if st.Primary != nil {
		g, seen = a.gossipByName()[st.Primary.Member]
	}
	switch {
	case st.IsPrimary(a.cfg.Name):
		return api.Errorf(http.StatusConflict, "%s is the primary: switch over first, then reinitialize it as a replica", a.cfg.Name)
	case s.PGRunning && !s.InRecov:
		// Not the recorded primary yet accepting writes: the HA loop
		// fences it; its data is evidence, not to be moved by a request.
		return api.Errorf(http.StatusConflict, "PostgreSQL on %s runs as a primary without the primary record; it is being fenced, not reinitialized", a.cfg.Name)
	case st.Primary == nil:
		return api.Errorf(http.StatusConflict, "no primary to clone from")
	case !seen || !g.Alive || g.Meta.Role != "primary":
		return api.Errorf(http.StatusConflict, "primary %s is not running: nothing to clone from, the data stays", st.Primary.Member)
	}
	a.log.Warn("reinitializing on request: stopping PostgreSQL and moving the data directory aside")
	sctx, cancel := context.WithTimeout(ctx, a.cfg.PostgreSQL.StartTimeout.Duration)
	defer cancel()
	if err := a.pg.Stop(sctx, pgnode.StopFast); err != nil {
		return fmt.Errorf("stop PostgreSQL: %w", err)
	}
	moved, err := a.pg.MoveAside()
	if err != nil {
		return fmt.Errorf("move the data directory aside: %w", err)
	}
	a.log.Info("old data directory kept; the HA loop clones a fresh copy", "kept_at", moved)
	a.setStatus(func(s *NodeStatus) { s.SysID = 0; s.State = "reinitializing" })
	a.poke()
	return nil
}
