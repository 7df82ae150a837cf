package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/pgnode"
)

// Operations on this member's own PostgreSQL: restart, reload,
// reinitialize. Each runs as a job of the HA loop, so no round acts on
// PostgreSQL while it is being restarted or moved aside.

// localJob runs f on the HA loop, refusing on a witness.
func (a *Agent) localJob(ctx context.Context, f func(ctx context.Context, l *haLoop) error) error {
	if a.pg == nil {
		return cluster.Conflictf("%s is a witness: it has no PostgreSQL", a.cfg.Name)
	}
	return a.loop.do(ctx, func(lctx context.Context) error { return f(lctx, a.loop) })
}

// Restart restarts the local PostgreSQL (fast stop, start). On the
// primary this is a brief write outage without a failover.
func (a *Agent) Restart(ctx context.Context) error {
	return a.localJob(ctx, func(ctx context.Context, l *haLoop) error {
		if !l.pg.Running() {
			return cluster.Conflictf("PostgreSQL is not running on %s", l.cfg.Name)
		}
		st := l.raft.ClusterState()
		primary := st.IsPrimary(l.cfg.Name)
		if primary && !l.isLeader() {
			return cluster.Conflictf("%s holds the primary record without leadership; not restarting", l.cfg.Name)
		}
		l.log.Info("restarting PostgreSQL on request")
		l.guard.disarm()
		sctx, cancel := context.WithTimeout(ctx, 2*l.cfg.PostgreSQL.StartTimeout.Duration)
		defer cancel()
		if err := l.pg.Stop(sctx, pgnode.StopFast); err != nil {
			return fmt.Errorf("stop: %w", err)
		}
		if primary {
			l.guard.arm()
		}
		if err := l.pg.Start(sctx); err != nil {
			return fmt.Errorf("start: %w", err)
		}
		l.lastStart = time.Now()
		l.status.update(func(s *NodeStatus) { s.Pending = false })
		l.poke()
		return nil
	})
}

// Reload makes PostgreSQL re-read its configuration files as they are
// (the HA loop keeps them current; this does not rewrite them) and
// refreshes the pending-restart flag.
func (a *Agent) Reload(ctx context.Context) error {
	return a.localJob(ctx, func(ctx context.Context, l *haLoop) error {
		if !l.pg.Running() {
			return cluster.Conflictf("PostgreSQL is not running on %s", l.cfg.Name)
		}
		if err := l.pg.Reload(ctx); err != nil {
			return err
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if pending, err := l.pg.PendingRestart(pctx); err == nil {
			l.status.update(func(s *NodeStatus) { s.Pending = pending })
		}
		return nil
	})
}

// Reinitialize throws this replica's data directory away (moved aside,
// not deleted) and lets the HA loop clone it again from the primary:
// Patroni's `reinit`, for a replica that diverged or got corrupted.
func (a *Agent) Reinitialize(ctx context.Context) error {
	return a.localJob(ctx, func(ctx context.Context, l *haLoop) error {
		st := l.raft.ClusterState()
		s := l.status.get()
		if st.IsPrimary(l.cfg.Name) {
			return cluster.Conflictf("%s is the primary: switch over first, then reinitialize it as a replica", l.cfg.Name)
		}
		if s.PGRunning && !s.InRecov {
			// Not the recorded primary yet accepting writes: the HA loop
			// fences it; its data is evidence, not to be moved by a request.
			return cluster.Conflictf("PostgreSQL on %s runs as a primary without the primary record; it is being fenced, not reinitialized", l.cfg.Name)
		}
		if st.Primary == nil {
			return cluster.NotInitialisedf("no primary to clone from")
		}
		if g, ok := l.gossipByName()[st.Primary.Member]; !ok || !g.Alive || g.Meta.Role != cluster.RolePrimary {
			return cluster.Conflictf("primary %s is not running: nothing to clone from, the data stays", st.Primary.Member)
		}
		l.log.Warn("reinitializing on request: stopping PostgreSQL and moving the data directory aside")
		sctx, cancel := context.WithTimeout(ctx, l.cfg.PostgreSQL.StartTimeout.Duration)
		defer cancel()
		if err := l.pg.Stop(sctx, pgnode.StopFast); err != nil {
			return fmt.Errorf("stop PostgreSQL: %w", err)
		}
		moved, err := l.pg.MoveAside()
		if err != nil {
			return fmt.Errorf("move the data directory aside: %w", err)
		}
		l.log.Info("old data directory kept; the HA loop clones a fresh copy", "kept_at", moved)
		l.status.update(func(s *NodeStatus) { s.SysID = 0; s.State = cluster.StateReinitializing })
		l.poke()
		return nil
	})
}
