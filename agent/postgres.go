package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"time"

	"github.com/pgha/pgha/agent/decide"
	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

// What the HA loop does to the local PostgreSQL: run it with the wanted
// configuration, clone, rewind, promote. Every change of configuration
// goes through desired: pgnode gets the whole configuration in one call,
// never state set beforehand.

// desired is the configuration the local PostgreSQL should run with in
// state st, as role, streaming from up (replica). The synchronous
// standby names follow the record: the record holder gets the primary's
// (with a standby being added by this leader term), others what they
// would need once promoted.
func (l *haLoop) desired(st raftfsm.State, role pgnode.Role, up *pgnode.Upstream) pgnode.Desired {
	asPrimary := st.IsPrimary(l.cfg.Name)
	adding := ""
	if asPrimary && l.term != nil {
		adding = l.term.sync.name
	}
	return pgnode.Desired{
		Role: role, Upstream: up, Parameters: st.Config.Parameters,
		SyncStandbyNames: syncStandbyNames(st, l.cfg.Name, asPrimary, adding),
	}
}

// configRecheck is how long ensureRunning trusts the files it wrote for
// an unchanged configuration before it writes (compares) them again:
// rewriting every round costs reads, a chown and an fsync a second, and
// the files only change through pgha (or an operator, whose edit is
// undone within this time).
const configRecheck = 30 * time.Second

// writeConfig writes d, logging once per change which dynamic parameters
// pgnode left out (pgha manages them itself).
func (l *haLoop) writeConfig(d pgnode.Desired) (pgnode.ConfigChange, error) {
	l.written = nil
	ch, err := l.pg.WriteConfig(d)
	if err != nil {
		return ch, err
	}
	l.written, l.writtenAt = &d, time.Now()
	if ch.Changed {
		l.touched = true
	}
	if ignored := strings.Join(ch.Ignored, ","); ignored != l.ignoredParams {
		l.ignoredParams = ignored
		if ignored != "" {
			l.log.Warn("ignoring dynamic parameters pgha manages itself", "parameters", ch.Ignored)
		}
	}
	return ch, nil
}

// ensureRunning writes the configuration d and makes PostgreSQL run with
// it: start when stopped, reload when a reloadable setting changed. A
// running server whose change needs a restart is not restarted behind the
// operator's back: it is reported as "restart pending" (pgha restart).
func (l *haLoop) ensureRunning(ctx context.Context, d pgnode.Desired) error {
	if l.pg.Running() && l.written != nil && reflect.DeepEqual(*l.written, d) && time.Since(l.writtenAt) < configRecheck {
		return nil // written moments ago; nothing to do
	}
	ch, err := l.writeConfig(d)
	if err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if !l.pg.Running() {
		l.setState(cluster.StateStarting)
		l.log.Info("starting PostgreSQL", "role", d.Role.String())
		term := l.raft.Term()
		if d.Role == pgnode.RolePrimary {
			// Guard it from its first write on: armed before the start, so
			// the watchdog already counts while crash recovery runs.
			l.guard.arm()
		}
		sctx, cancel := context.WithTimeout(ctx, l.cfg.PostgreSQL.StartTimeout.Duration)
		defer cancel()
		if err := l.pg.Start(sctx); err != nil {
			return fmt.Errorf("start: %w", err)
		}
		if d.Role == pgnode.RolePrimary && (!l.raft.IsLeader() || l.raft.Term() != term || l.guard.latched()) {
			// A start (crash recovery) can take long: leadership may have
			// moved meanwhile. Confirm it again before the first write.
			_ = l.fence("Raft leadership changed while PostgreSQL started as primary")
			return fmt.Errorf("start: leadership changed while PostgreSQL started; fenced it")
		}
		l.lastStart = time.Now()
		l.touched = true
		l.status.update(func(s *NodeStatus) { s.Pending = false })
		return nil
	}
	if ch.RestartNeeded && !l.status.get().Pending {
		l.log.Warn("PostgreSQL settings changed that need a restart: restart pending (pgha restart)")
	}
	if ch.Changed || ch.RestartNeeded {
		if ch.Changed {
			l.log.Info("reloading PostgreSQL configuration")
			if err := l.pg.Reload(ctx); err != nil {
				return err
			}
		}
		// pg_settings knows best what waits for a restart.
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		pending, err := l.pg.PendingRestart(pctx)
		cancel()
		if err == nil {
			l.status.update(func(s *NodeStatus) { s.Pending = pending || ch.RestartNeeded })
		}
	}
	return nil
}

// clone copies the primary with pg_basebackup, showing progress, then
// starts the replica.
func (l *haLoop) clone(ctx context.Context, act decide.Action, st raftfsm.State) error {
	up, err := l.upstream(act.Upstream)
	if err != nil {
		return err
	}
	l.setState(cluster.StateCloning)
	l.publish(decide.LocalPG{}, "")
	l.log.Info("cloning from the primary (pg_basebackup)", "primary", act.Target, "addr", act.Upstream)
	start := time.Now()
	// No slot for the copy itself: the primary may not have created it
	// yet, and pg_basebackup fails on a missing slot. wal_keep_size covers
	// the gap until streaming starts on the slot.
	err = l.pg.Clone(ctx, pgnode.Upstream{Host: up.Host, Port: up.Port}, func(pct int, detail string) {
		l.log.Info("cloning", "progress", fmt.Sprintf("%d%%", pct), "detail", detail)
	})
	if err != nil {
		l.setState(cluster.StateStopped)
		return fmt.Errorf("clone from %s: %w", act.Target, err)
	}
	l.log.Info("clone finished", "took", time.Since(start).Round(time.Millisecond))
	return l.ensureRunning(ctx, l.desired(st, pgnode.RoleReplica, &up))
}

// rewind makes a former primary follow the new one: pg_rewind, or, if that
// fails while the new primary is reachable, a fresh clone with the old
// data directory moved aside (kept, never deleted).
func (l *haLoop) rewind(ctx context.Context, act decide.Action, st raftfsm.State) error {
	up, err := l.upstream(act.Upstream)
	if err != nil {
		return err
	}
	l.setState(cluster.StateRewinding)
	wasReplica := l.pg.Running()
	if wasReplica {
		// A running replica that diverged (it received WAL the new
		// primary never had): pg_rewind needs it stopped.
		l.log.Warn("replica diverged from the primary's timeline: stopping it to rewind", "reason", act.Reason)
		sctx, cancel := context.WithTimeout(ctx, l.cfg.PostgreSQL.StartTimeout.Duration)
		err := l.pg.Stop(sctx, pgnode.StopFast)
		cancel()
		if err != nil {
			return fmt.Errorf("stop the diverged replica: %w", err)
		}
		l.oldTimelineSince = time.Time{}
	}
	l.log.Info("rewinding before following", "primary", act.Target)
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	err = l.pg.Rewind(rctx, up)
	cancel()
	if err == nil {
		l.log.Info("rewind finished", "took", time.Since(start).Round(time.Millisecond))
		return l.ensureRunning(ctx, l.desired(st, pgnode.RoleReplica, &up))
	}
	l.log.Error("pg_rewind failed", "err", err)
	l.setState(cluster.StateStopped)
	if wasReplica {
		// Maybe it was not diverged at all (see decide.divergedAfter),
		// only cut off from a primary that refuses connections: its data
		// is kept and it runs as a replica again; an operator can `pgha
		// reinit`.
		return errors.Join(fmt.Errorf("rewind of the replica from %s: %w", act.Target, err), l.ensureRunning(ctx, l.desired(st, pgnode.RoleReplica, &up)))
	}
	if !reachable(ctx, act.Upstream) {
		return fmt.Errorf("rewind from %s: %w (primary unreachable; will retry)", act.Target, err)
	}
	moved, merr := l.pg.MoveAside()
	if merr != nil {
		return fmt.Errorf("rewind failed (%v) and moving the data directory aside failed: %w", err, merr)
	}
	l.log.Warn("rewind failed: old data directory kept, re-cloning", "kept_at", moved)
	return l.clone(ctx, decide.Action{Kind: decide.ActClone, Target: act.Target, Upstream: act.Upstream}, st)
}

// reachable reports whether a TCP connection to addr opens.
func reachable(ctx context.Context, addr string) bool {
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// promote turns the local standby into the primary. The primary record
// for this node is already committed and this node leads (safety rule
// 1). The configuration is written once, before the promotion, as it
// must be after it (synchronous standby names included, so that in
// synchronous mode the very first commit waits for the synchronous set:
// the remaining members of the old one, which are the only ones promotion
// trusted); it differs from the primary's only by standby.signal, which
// PostgreSQL removes itself when it promotes.
func (l *haLoop) promote(ctx context.Context, st raftfsm.State) error {
	if l.term != nil {
		l.term.sync = syncAdding{}
	}
	d := l.desired(st, pgnode.RoleReplica, nil) // a standby with no upstream
	ch, err := l.writeConfig(d)
	if err != nil {
		return fmt.Errorf("write config before promotion: %w", err)
	}
	if !l.pg.Running() {
		// Start in recovery first: promotion then always moves to a new
		// timeline, so the old primary's history can never be mistaken for
		// ours.
		sctx, cancel := context.WithTimeout(ctx, l.cfg.PostgreSQL.StartTimeout.Duration)
		err := l.pg.Start(sctx)
		cancel()
		if err != nil {
			return fmt.Errorf("start standby before promotion: %w", err)
		}
	} else if ch.Changed {
		if err := l.pg.Reload(ctx); err != nil {
			return fmt.Errorf("reload before promotion: %w", err)
		}
	}
	// Starting may have taken a while: promote only if this node still
	// leads in the same term and the record is still this node's, in the
	// same epoch (safety rule 1).
	if l.term == nil || l.leaderTerm() != l.term.number {
		return cluster.Conflictf("lost leadership before promotion")
	}
	if now := l.raft.ClusterState(); !now.IsPrimary(l.cfg.Name) || now.Primary.Epoch != st.Primary.Epoch {
		return cluster.Conflictf("the primary record moved before promotion")
	}
	l.log.Info("promoting PostgreSQL", "epoch", st.Primary.Epoch)
	pctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	// Arm the watchdog before the promotion returns: it must cover the
	// moment PostgreSQL starts taking writes.
	l.guard.arm()
	tl, err := l.pg.Promote(pctx)
	if err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	now := time.Now().UTC()
	l.log.Info("promoted: this node is the primary", "timeline", tl, "epoch", st.Primary.Epoch)
	l.lastSlots = time.Time{}
	if err := l.raft.Apply(raftfsm.Promoted{Member: l.cfg.Name, Epoch: st.Primary.Epoch, Timeline: tl, At: now}, applyTimeout); err != nil {
		l.log.Warn("record promotion", "err", err)
	}
	return nil
}

// failover commits this node as the new primary (compare-and-swap on the
// epoch), then promotes it: commit, then promote.
func (l *haLoop) failover(ctx context.Context, in decide.Input, reason string) error {
	st := in.State
	// When did the agents last see the old primary? Its last Raft
	// heartbeat to this node while it led, or its last gossip status.
	lastSeen := l.primaryContact
	if g, ok := in.Gossip[st.Primary.Member]; ok && g.LastUpdate.After(lastSeen) {
		lastSeen = g.LastUpdate
	}
	if lastSeen.IsZero() {
		_, lastSeen = l.lead.get()
	}
	l.log.Warn("failing over to this node", "old_primary", st.Primary.Member, "reason", reason)
	err := l.raft.Apply(raftfsm.SetPrimary{
		// This replica's timeline can be one above the record's: the old
		// holder promoted, and died before it recorded it.
		Member: l.cfg.Name, ExpectEpoch: st.Primary.Epoch, Timeline: max(st.Primary.Timeline, in.PG.Timeline),
		LSN: max(in.PG.Receive, in.PG.WAL), Reason: "failover", At: time.Now().UTC(), LastSeen: lastSeen.UTC(),
	}, applyTimeout)
	if err != nil {
		return fmt.Errorf("commit new primary record: %w", err)
	}
	return l.promote(ctx, l.raft.ClusterState())
}
