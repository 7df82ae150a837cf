package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

// The agent is the API's backend.
var _ api.Backend = (*Agent)(nil)

// Cluster builds GET /cluster from the FSM (authoritative), the Raft
// configuration and the gossip view (volatile status).
func (a *Agent) Cluster() api.ClusterInfo {
	st := a.raft.FSM().State()
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
	if servers, err := a.raft.Servers(); err == nil {
		for _, s := range servers {
			v := "voter"
			if s.Suffrage != raft.Voter {
				v = "nonvoter"
			}
			suffrage[string(s.ID)] = v
		}
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
	primaryWAL := primaryPosition(st, gossip)
	for _, name := range sortedNames(names) {
		fm, inFSM := st.Members[name]
		g, alive := gossip[name]
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
		if fm.Witness || (alive && g.Meta.Witness) {
			mi.Role = "witness"
		}
		switch {
		case alive && !g.Alive:
			mi.State = "unreachable"
			mi.Host, mi.API = g.Meta.PG, g.Meta.API
		case alive:
			if mi.Host == "" {
				mi.Host = g.Meta.PG
			}
			if mi.API == "" {
				mi.API = g.Meta.API
			}
			mi.State = g.Meta.PGState
			if mi.State == "" {
				mi.State = "starting"
			}
			if !inFSM && mi.Raft == "none" {
				mi.State = "joining"
			}
			if g.Meta.Leaving {
				mi.State = "leaving"
			}
			mi.Timeline = g.Meta.Timeline
			if g.Meta.WAL != 0 {
				mi.WAL = pgnode.FormatLSN(g.Meta.WAL)
			}
			if g.Meta.Role == "replica" && primaryWAL != 0 {
				lag := behind(primaryWAL, g.Meta.WAL)
				mi.LagBytes = &lag
			}
			mi.Error = g.Meta.Err
			mi.Waiting = g.Meta.Wait
			mi.Write, mi.Read = g.Meta.Write, g.Meta.Read
			tags := map[string]any{}
			if g.Meta.NoFail {
				tags["nofailover"] = true
			}
			if g.Meta.NoLB {
				tags["noloadbalance"] = true
			}
			if g.Meta.Priority != 1 {
				tags["failover_priority"] = g.Meta.Priority
			}
			if g.Meta.Pending {
				tags["pending_restart"] = true
			}
			if len(tags) > 0 {
				mi.Tags = tags
			}
		default:
			mi.State = "unreachable"
		}
		if name == a.cfg.Name {
			s := a.Status()
			mi.Waiting = s.Waiting
			if s.Error != "" {
				mi.Error = s.Error
			}
		}
		ci.Members = append(ci.Members, mi)
	}
	return ci
}

// LeaderAPI returns the API address of the Raft leader.
func (a *Agent) LeaderAPI() string {
	id, _ := a.raft.Leader()
	if id == "" {
		return ""
	}
	if m, ok := a.raft.FSM().State().Members[id]; ok && m.APIAddr != "" {
		return m.APIAddr
	}
	if g, ok := a.gossipByName()[id]; ok {
		return g.Meta.API
	}
	return ""
}

// Join makes this node join the cluster that req.Addr (a gossip address)
// belongs to: it joins gossip, asks to be added, and waits until the
// leader has added it to Raft.
func (a *Agent) Join(ctx context.Context, req api.JoinRequest) error {
	if a.leaving.Load() {
		return api.Errorf(http.StatusConflict, "this node is leaving")
	}
	timeout := 60 * time.Second
	if req.TimeoutSeconds > 0 {
		timeout = time.Duration(req.TimeoutSeconds) * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if a.inRaftConfig() {
		for _, m := range a.gossip.Members() {
			if m.Addr == req.Addr {
				return nil // already a member of that cluster: nothing to do
			}
		}
	}
	joined := make(chan error, 1)
	go func() {
		_, err := a.gossip.Join([]string{req.Addr})
		joined <- err
	}()
	select {
	case err := <-joined:
		if err != nil {
			return api.Errorf(http.StatusBadGateway, "cannot reach %s: %v", req.Addr, err)
		}
	case <-ctx.Done():
		return api.Errorf(http.StatusGatewayTimeout, "no answer from %s within %s", req.Addr, timeout)
	}
	if a.inRaftConfig() {
		return nil
	}
	if a.raft.HadState() {
		return api.Errorf(http.StatusConflict, "this node has Raft state of a cluster it is no longer part of; move %s away to join afresh", filepath.Join(a.cfg.DataDir, "raft"))
	}
	a.setJoinWanted()
	a.poke()
	a.log.Info("asking the leader to add this node", "via", req.Addr)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for !a.inRaftConfig() {
		select {
		case <-ctx.Done():
			return api.Errorf(http.StatusGatewayTimeout, "joined gossip through %s but the leader did not add this node within %s: is a leader elected, and is this node's cluster name (%q) the same?", req.Addr, timeout, a.cfg.Cluster)
		case <-t.C:
		}
	}
	a.log.Info("joined the cluster")
	return nil
}

// inRaftConfig reports whether this node is in its Raft configuration.
func (a *Agent) inRaftConfig() bool {
	servers, err := a.raft.Servers()
	if err != nil {
		return false
	}
	for _, s := range servers {
		if string(s.ID) == a.cfg.Name {
			return true
		}
	}
	return false
}

// Leave removes this node from the cluster gracefully: it refuses while
// the node is the primary, hands Raft leadership away if it holds it, has
// the leader remove it, stops PostgreSQL, leaves gossip and stops the
// agent. Its PostgreSQL data stays on disk; its Raft state is discarded,
// since a removed member's copy of the log must never vote again.
func (a *Agent) Leave(ctx context.Context) error {
	st := a.raft.FSM().State()
	if st.IsPrimary(a.cfg.Name) {
		// Hand the primary role off first, without losing a commit.
		if !a.isLeader() {
			return api.Errorf(http.StatusConflict, "%s holds the primary record but not Raft leadership; retry in a moment", a.cfg.Name)
		}
		a.log.Info("leave: this node is the primary; switching over first")
		if _, err := a.Switchover(ctx, api.SwitchoverRequest{}); err != nil {
			return api.Errorf(http.StatusConflict, "%s is the primary and the switchover before leaving failed: %v", a.cfg.Name, err)
		}
	}
	if !a.leaving.CompareAndSwap(false, true) {
		return api.Errorf(http.StatusConflict, "already leaving")
	}
	a.log.Info("leaving the cluster")
	// Tell the others at once, after any HA loop round in progress (the
	// loop stands still while leaving).
	a.actionMu.Lock()
	m := a.gossip.LocalMeta()
	m.Leaving = true
	if err := a.gossip.SetMeta(m); err != nil {
		a.log.Warn("publish leaving", "err", err)
	}
	a.actionMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := a.leaveRaft(ctx); err != nil {
		a.leaving.Store(false)
		return err
	}
	a.left.Store(true)
	if a.pg != nil {
		sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
		defer scancel()
		if err := a.pg.Stop(sctx, pgnode.StopFast); err != nil {
			a.log.Warn("stop PostgreSQL", "err", err)
		}
	}
	if err := a.gossip.Leave(2 * time.Second); err != nil {
		a.log.Warn("leave gossip", "err", err)
	}
	a.log.Info("left the cluster; stopping")
	a.closeOnce.Do(func() { close(a.shutdown) })
	return nil
}

// leaveRaft has the leader remove this node and waits until it is gone.
func (a *Agent) leaveRaft(ctx context.Context) error {
	if !a.inRaftConfig() {
		return nil
	}
	for {
		var err error
		if a.raft.IsLeader() {
			// A leader cannot remove itself cleanly: hand leadership over.
			err = a.handOffLeadership()
		} else if addr := a.LeaderAPI(); addr == "" {
			err = errors.New("no leader known")
		} else {
			err = a.apiClient(addr).Remove(ctx, api.RemoveRequest{Name: a.cfg.Name, Force: true})
		}
		if err == nil && !a.inRaftConfig() {
			return nil
		}
		if err != nil {
			a.log.Warn("leave: waiting for the leader to remove this node", "err", err)
		}
		select {
		case <-ctx.Done():
			return api.Errorf(http.StatusGatewayTimeout, "leave: the leader did not remove this node in time: %v", err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// handOffLeadership transfers Raft leadership to another voter, the
// primary's node first.
func (a *Agent) handOffLeadership() error {
	servers, err := a.raft.Servers()
	if err != nil {
		return err
	}
	st := a.raft.FSM().State()
	var target raft.Server
	for _, s := range servers {
		if s.Suffrage != raft.Voter || string(s.ID) == a.cfg.Name {
			continue
		}
		if target.ID == "" || st.IsPrimary(string(s.ID)) {
			target = s
		}
	}
	if target.ID == "" {
		return errors.New("no other voter to hand leadership to")
	}
	return a.transferTo(string(target.ID))
}

// Remove removes a member from Raft and the FSM. Leader only.
func (a *Agent) Remove(ctx context.Context, req api.RemoveRequest) error {
	if !a.raft.IsLeader() {
		return api.ErrNotLeader
	}
	st := a.raft.FSM().State()
	if req.Name == a.cfg.Name && !a.leaving.Load() {
		return api.Errorf(http.StatusBadRequest, "%s is this node (the leader): run `pgha leave` on it instead", req.Name)
	}
	if st.IsPrimary(req.Name) {
		return api.Errorf(http.StatusConflict, "%s is the primary and cannot be removed", req.Name)
	}
	_, inFSM := st.Members[req.Name]
	inRaft := false
	if servers, err := a.raft.Servers(); err == nil {
		for _, s := range servers {
			if string(s.ID) == req.Name {
				inRaft = true
			}
		}
	}
	if !inFSM && !inRaft {
		return api.Errorf(http.StatusNotFound, "no member named %q", req.Name)
	}
	if g, ok := a.gossipByName()[req.Name]; ok && g.Alive && !g.Meta.Leaving && !req.Force {
		return api.Errorf(http.StatusConflict, "%s is alive: run `pgha leave` on it, or use --force", req.Name)
	}
	a.log.Info("removing member", "member", req.Name)
	if inRaft {
		if err := a.raft.RemoveServer(req.Name, applyTimeout); err != nil {
			if errors.Is(err, raftfsm.ErrNotLeader) {
				return api.ErrNotLeader
			}
			return err
		}
	}
	if inFSM {
		if err := a.raft.Apply(raftfsm.RemoveMember{Name: req.Name}, applyTimeout); err != nil {
			if errors.Is(err, raftfsm.ErrNotLeader) {
				return api.ErrNotLeader
			}
			return fmt.Errorf("remove %s from the cluster state: %w", req.Name, err)
		}
	}
	a.mu.Lock()
	delete(a.nonvoters, req.Name)
	a.mu.Unlock()
	a.poke()
	return nil
}

// discardRaftState removes the Raft directory of a node that has left.
func (a *Agent) discardRaftState() {
	dir := filepath.Join(a.cfg.DataDir, "raft")
	if err := os.RemoveAll(dir); err != nil {
		a.log.Warn("discard raft state", "dir", dir, "err", err)
		return
	}
	a.log.Info("discarded the Raft state of this former member", "dir", dir)
}
