package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

// Membership operations: join, leave, remove.

// Join makes this node join the cluster that req.Addr (a gossip address)
// belongs to: it joins gossip, asks to be added, and waits until the
// leader has added it to Raft.
func (a *Agent) Join(ctx context.Context, req api.JoinRequest) error {
	if a.leaving.Load() {
		return cluster.Conflictf("this node is leaving")
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
			return cluster.Unreachablef("cannot reach %s: %v", req.Addr, err)
		}
	case <-ctx.Done():
		return cluster.Timeoutf("no answer from %s within %s", req.Addr, timeout)
	}
	if a.inRaftConfig() {
		return nil
	}
	if a.raft.HadState() {
		return cluster.Conflictf("this node has Raft state of a cluster it is no longer part of; move %s away to join afresh", filepath.Join(a.cfg.DataDir, "raft"))
	}
	a.wantJoin.Store(true)
	a.poke()
	a.log.Info("asking the leader to add this node", "via", req.Addr)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for !a.inRaftConfig() {
		select {
		case <-ctx.Done():
			return cluster.Timeoutf("joined gossip through %s but the leader did not add this node within %s: is a leader elected, and is this node's cluster name (%q) the same?", req.Addr, timeout, a.cfg.Cluster)
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

// Leave removes this node from the cluster gracefully: on the primary it
// switches over first, hands Raft leadership away if it holds it, has the
// leader remove it, stops PostgreSQL, leaves gossip and stops the agent.
// Its PostgreSQL data stays on disk; its Raft state is discarded, since a
// removed member's copy of the log must never vote again.
func (a *Agent) Leave(ctx context.Context) error {
	st := a.raft.ClusterState()
	if st.IsPrimary(a.cfg.Name) {
		// Hand the primary role off first, without losing a commit.
		if !a.isLeader() {
			return cluster.Conflictf("%s holds the primary record but not Raft leadership; retry in a moment", a.cfg.Name)
		}
		a.log.Info("leave: this node is the primary; switching over first")
		if _, err := a.Switchover(ctx, api.SwitchoverRequest{}); err != nil {
			return cluster.Conflictf("%s is the primary and the switchover before leaving failed: %v", a.cfg.Name, err)
		}
	}
	if !a.leaving.CompareAndSwap(false, true) {
		return cluster.Conflictf("already leaving")
	}
	a.log.Info("leaving the cluster")
	// Tell the others at once, from the HA loop (it stands still from
	// its next round on, while leaving).
	err := a.loop.do(ctx, func(context.Context) error {
		m := a.gossip.LocalMeta()
		m.Leaving = true
		return a.gossip.SetMeta(m)
	})
	if err != nil {
		a.log.Warn("publish leaving", "err", err)
	}
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

// leaveRaft has the leader remove this node and waits until it is gone:
// until its own copy of the configuration no longer has it, or the
// leader says it removed it (a leader stops replicating to a server it
// removed, so that copy may never hear of it).
func (a *Agent) leaveRaft(ctx context.Context) error {
	for {
		if !a.inRaftConfig() {
			return nil
		}
		var err error
		if a.raft.IsLeader() {
			// A leader cannot remove itself cleanly: hand leadership over.
			err = handOffLeadership(a.raft, a.cfg.Name)
		} else if addr := a.LeaderAPI(); addr == "" {
			err = errors.New("no leader known")
		} else {
			err = a.apiClient(addr).Remove(ctx, api.RemoveRequest{Name: a.cfg.Name, Force: true})
			if err == nil {
				return nil
			}
		}
		if err != nil {
			a.log.Warn("leave: waiting for the leader to remove this node", "err", err)
		}
		select {
		case <-ctx.Done():
			return cluster.Timeoutf("leave: the leader did not remove this node in time: %v", err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// handOffLeadership transfers Raft leadership to another voter, the
// primary's node first.
func handOffLeadership(r raftMembers, self string) error {
	servers, err := r.Servers()
	if err != nil {
		return err
	}
	st := r.ClusterState()
	var target raft.Server
	for _, s := range servers {
		if s.Suffrage != raft.Voter || string(s.ID) == self {
			continue
		}
		if target.ID == "" || st.IsPrimary(string(s.ID)) {
			target = s
		}
	}
	if target.ID == "" {
		return errors.New("no other voter to hand leadership to")
	}
	return transferLeadership(r, string(target.ID))
}

// Remove removes a member from the FSM and Raft. Leader only (the
// Barrier-checked leadership of a leader term). The FSM goes first: it
// refuses to remove the primary, and a member that is in Raft but not in
// the FSM is harmless, while the reverse would leave a member nobody can
// reach the Raft way.
func (a *Agent) Remove(ctx context.Context, req api.RemoveRequest) error {
	return a.asLeader(ctx, func(_ context.Context, l *haLoop, t *leaderTerm) error {
		return l.remove(t, req)
	})
}

func (l *haLoop) remove(t *leaderTerm, req api.RemoveRequest) error {
	st := l.raft.ClusterState()
	if req.Name == l.cfg.Name && !l.leaving.Load() {
		return cluster.Invalidf("%s is this node (the leader): run `pgha leave` on it instead", req.Name)
	}
	if st.IsPrimary(req.Name) {
		return cluster.Conflictf("%s is the primary and cannot be removed; switch over first", req.Name)
	}
	_, inFSM := st.Members[req.Name]
	inRaft := false
	servers, err := l.raft.Servers()
	if err != nil {
		return fmt.Errorf("read the Raft configuration: %w", err)
	}
	for _, s := range servers {
		if string(s.ID) == req.Name {
			inRaft = true
		}
	}
	if !inFSM && !inRaft {
		return cluster.NotFoundf("no member named %q", req.Name)
	}
	if g, ok := l.gossipByName()[req.Name]; ok && g.Alive && !g.Meta.Leaving && !req.Force {
		return cluster.Conflictf("%s is alive: run `pgha leave` on it, or use --force", req.Name)
	}
	l.log.Info("removing member", "member", req.Name)
	if inFSM {
		if err := l.raft.Apply(raftfsm.RemoveMember{Name: req.Name}, applyTimeout); err != nil {
			return domainErr(err)
		}
	}
	if inRaft {
		if err := l.raft.RemoveServer(req.Name, applyTimeout); err != nil {
			return domainErr(err)
		}
	}
	t.forget(req.Name)
	l.poke()
	return nil
}
