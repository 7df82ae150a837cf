package agent

import (
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"github.com/pgha/pgha/agent/decide"
	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/metrics"
	"github.com/pgha/pgha/pgnode"
)

// What the API reads: built on the API's goroutines from the FSM, the
// Raft configuration, gossip and the status board. None of it changes
// anything.

// voters returns the Raft configuration's voters (nil when it cannot be
// read: the eligibility rule then refuses promotion).
func (a *Agent) voters() map[string]bool {
	servers, err := a.raft.Servers()
	if err != nil {
		return nil
	}
	out := map[string]bool{}
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			out[string(s.ID)] = true
		}
	}
	return out
}

// Cluster builds GET /cluster from the FSM (authoritative), the Raft
// configuration and the gossip view (volatile status).
func (a *Agent) Cluster() api.ClusterInfo {
	st := a.raft.ClusterState()
	leaderID, _ := a.raft.Leader()
	ci := api.ClusterInfo{
		Cluster:     a.cfg.Cluster,
		ClusterID:   st.ClusterID,
		SystemID:    st.SystemID,
		Initialized: st.SystemID != 0,
		Leader:      leaderID,
		Paused:      st.Paused,
		Sync:        syncStatus(st),
		Observer:    a.cfg.Name,
	}
	if st.Primary != nil {
		ci.Primary, ci.Epoch, ci.Timeline = st.Primary.Member, st.Primary.Epoch, st.Primary.Timeline
	}
	if st.PrimaryLSN != nil {
		ci.PrimaryLSN = pgnode.FormatLSN(st.PrimaryLSN.LSN)
	}
	if sc := st.Scheduled; sc != nil {
		ci.ScheduledSwitchover = &api.ScheduledInfo{At: sc.At, From: sc.From, Candidate: sc.Candidate}
	}
	suffrage := map[string]string{}
	voters := map[string]bool{}
	servers, serr := a.raft.Servers()
	for _, s := range servers {
		v := "voter"
		if s.Suffrage != raft.Voter {
			v = "nonvoter"
		} else {
			voters[string(s.ID)] = true
		}
		suffrage[string(s.ID)] = v
	}
	if serr != nil {
		voters = nil
	}
	gossip := a.gossipByName()
	names := map[string]bool{}
	for n := range st.Members {
		names[n] = true
	}
	for n := range suffrage {
		names[n] = true
	}
	for n := range gossip {
		names[n] = true
	}
	primaryPos := decide.PrimaryPosition(st, gossip)
	promotion := decide.PromotionRule(st, gossip, decide.ForPromotion, false)
	self := a.Status()
	for _, name := range sortedNames(names) {
		fm, inFSM := st.Members[name]
		g, seen := gossip[name]
		mi := api.MemberInfo{Name: name, Host: fm.PGAddr, API: fm.APIAddr, Role: "replica", Raft: "none"}
		if v, ok := suffrage[name]; ok {
			mi.Raft = v
		}
		if name == leaderID {
			mi.Raft = "leader"
		}
		if st.IsPrimary(name) {
			mi.Role = "leader"
		} else if st.InSyncSet(name) {
			mi.Role = "sync_standby"
		}
		if fm.Witness || (seen && g.Meta.Witness) {
			mi.Role = "witness"
		}
		switch {
		case seen && !g.Alive:
			mi.State = cluster.StateUnreachable
			mi.Host, mi.API = g.Meta.PG, g.Meta.API
		case seen:
			if mi.Host == "" {
				mi.Host = g.Meta.PG
			}
			if mi.API == "" {
				mi.API = g.Meta.API
			}
			mi.State = g.Meta.PGState
			if mi.State == "" {
				mi.State = cluster.StateStarting
			}
			if !inFSM && mi.Raft == "none" {
				mi.State = cluster.StateJoining
			}
			if g.Meta.Leaving {
				mi.State = cluster.StateLeaving
			}
			mi.Timeline = g.Meta.Timeline
			if g.Meta.WAL != 0 {
				mi.WAL = pgnode.FormatLSN(g.Meta.WAL)
			}
			if g.Meta.Role == cluster.RoleReplica && primaryPos.LSN != 0 {
				if lag, ok := decide.Behind(primaryPos, decide.Position{Timeline: g.Meta.Timeline, LSN: g.Meta.WAL}); ok {
					mi.LagBytes = &lag
				}
			}
			mi.Error = g.Meta.Err
			mi.Waiting = g.Meta.Wait
			mi.Write, mi.Read = g.Meta.Write, g.Meta.Read
			mi.Tags = tagsOf(g.Meta.NoFail, g.Meta.NoLB, g.Meta.Priority, g.Meta.Pending)
		default:
			mi.State = cluster.StateUnreachable
		}
		if inFSM && mi.Role != "witness" && !st.IsPrimary(name) && st.Primary != nil {
			// Why this member could not be promoted right now, if so: the
			// same rule automatic failover applies.
			if err := decide.Eligible(st, decide.ViewOf(g, voters), promotion); err != nil {
				mi.Ineligible = err.Reason
			}
		}
		if name == a.cfg.Name {
			mi.Waiting = self.Waiting
			if self.Error != "" {
				mi.Error = self.Error
			}
		}
		ci.Members = append(ci.Members, mi)
	}
	return ci
}

func tagsOf(nofail, nolb bool, priority int, pending bool) map[string]any {
	tags := map[string]any{}
	if nofail {
		tags["nofailover"] = true
	}
	if nolb {
		tags["noloadbalance"] = true
	}
	if priority != 1 {
		tags["failover_priority"] = priority
	}
	if pending {
		tags["pending_restart"] = true
	}
	if len(tags) == 0 {
		return nil
	}
	return tags
}

// LeaderAPI returns the API address of the Raft leader.
func (a *Agent) LeaderAPI() string {
	id, _ := a.raft.Leader()
	if id == "" {
		return ""
	}
	if m, ok := a.raft.ClusterState().Members[id]; ok && m.APIAddr != "" {
		return m.APIAddr
	}
	if g, ok := a.gossipByName()[id]; ok {
		return g.Meta.API
	}
	return ""
}

// Health is this node's status for the health endpoints (GET /primary,
// /replica, /health...), which decide 200 or 503 from it.
func (a *Agent) Health() api.HealthInfo {
	s := a.Status()
	st := a.raft.ClusterState()
	leaderID, _ := a.raft.Leader()
	h := api.HealthInfo{
		Name: s.Name, Cluster: a.cfg.Cluster, Role: s.Role, State: s.State,
		PGRunning: s.PGRunning, InRecovery: s.InRecov, Timeline: s.Timeline,
		Raft: a.raft.State(), Leader: leaderID, Paused: st.Paused, PendingRestart: s.Pending,
		Waiting: s.Waiting, Error: s.Error, LoopAt: s.LoopAt, Yield: s.Yield,
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
		if pos := decide.PrimaryPosition(st, a.gossipByName()); pos.LSN != 0 {
			if lag, ok := decide.Behind(pos, decide.Position{Timeline: s.Timeline, LSN: s.WAL}); ok {
				h.LagBytes = &lag
			}
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
	st := a.raft.ClusterState()
	snap := metrics.Snapshot{
		Name: a.cfg.Name, Cluster: a.cfg.Cluster, Role: s.Role, PGRunning: s.PGRunning,
		Primary: h.Primary, SyncStandby: h.SyncStandby, Paused: st.Paused, Pending: s.Pending,
		Timeline: s.Timeline, LagBytes: h.LagBytes, ReplayLagSeconds: s.ReplayLag,
		RaftState: a.raft.State(), RaftLastContact: -1,
		PrimaryChanges: map[string]int{},
		Proxy:          a.proxy.Stats(),
	}
	if a.api != nil {
		as := a.api.AuthStats()
		snap.APILoginFailures, snap.APILoginThrottled = as.Failures, as.Throttled
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
	snap.RaftVoters = len(a.voters())
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
	snap.WritableMembers = len(s.Writable)
	return snap
}

// History lists the changes of primary.
func (a *Agent) History() []api.HistoryEntry {
	st := a.raft.ClusterState()
	out := make([]api.HistoryEntry, 0, len(st.History))
	for _, h := range st.History {
		e := api.HistoryEntry{Epoch: h.Epoch, At: h.At, Old: h.Old, New: h.New, Timeline: h.Timeline, Reason: h.Reason}
		if h.LSN != 0 {
			e.LSN = pgnode.FormatLSN(h.LSN)
		}
		if !h.LastSeen.IsZero() && !h.PromotedAt.IsZero() {
			d := h.PromotedAt.Sub(h.LastSeen).Seconds()
			e.DowntimeSec = &d
		}
		out = append(out, e)
	}
	return out
}

// ProxyStats answers GET /proxy.
func (a *Agent) ProxyStats() any { return a.proxy.Stats() }

// Config answers GET /config.
func (a *Agent) Config() api.DynamicConfig { return toAPIConfig(a.raft.ClusterState()) }
