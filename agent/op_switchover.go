package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/pgha/pgha/agent/decide"
	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

// handover is a change of primary an operator started: committed on the
// HA loop, then waited for by the caller (waitNewPrimary).
type handover struct {
	old, cand string
	epoch     uint64    // the epoch before the change
	stoppedAt time.Time // when the old primary stopped taking writes
}

// Switchover hands the primary role to a replica without losing a
// committed transaction: the primary stops cleanly (its WAL senders ship
// everything up to the shutdown checkpoint), the candidate confirms it
// received that checkpoint, the new primary record is committed, and Raft
// leadership moves to the candidate, which promotes itself. The old
// primary then follows it. Runs on the leader, as a job of its HA loop.
func (a *Agent) Switchover(ctx context.Context, req api.SwitchoverRequest) (api.SwitchoverResult, error) {
	var res api.SwitchoverResult
	var h handover
	err := a.asLeader(ctx, func(lctx context.Context, l *haLoop, t *leaderTerm) error {
		st := l.raft.ClusterState()
		if err := l.checkSwitchover(st, req); err != nil {
			return err
		}
		if req.ScheduledAt != "" {
			var err error
			res, err = l.scheduleSwitchover(st, req)
			return err
		}
		var err error
		h, err = l.switchover(lctx, t, st, req)
		return err
	})
	if err != nil || req.ScheduledAt != "" {
		return res, err
	}
	a.poke()
	return a.waitNewPrimary(ctx, h)
}

// checkSwitchover refuses a switchover the cluster's state does not allow.
func (l *haLoop) checkSwitchover(st raftfsm.State, req api.SwitchoverRequest) error {
	switch {
	case st.Primary == nil || st.SystemID == 0:
		return cluster.NotInitialisedf("the cluster is not initialised")
	case req.Leader != "" && req.Leader != st.Primary.Member:
		return cluster.Conflictf("the primary is %s, not %s", st.Primary.Member, req.Leader)
	case st.Primary.Member != l.cfg.Name:
		return cluster.Conflictf("primary %s does not lead the cluster right now; use pgha failover", st.Primary.Member)
	}
	return nil
}

// candidate picks (name "") or checks the member to promote, with the one
// eligibility rule.
func (a *Agent) candidate(st raftfsm.State, name string, p decide.Purpose, force bool) (string, error) {
	gossip := a.gossipByName()
	rule := decide.PromotionRule(st, gossip, p, force)
	views := decide.Views(st, gossip, a.voters(), nil)
	if name == "" {
		best, why := decide.Best(st, views, rule)
		if best == "" {
			return "", cluster.Conflictf("no member can be promoted: %s", why)
		}
		return best, nil
	}
	if _, ok := st.Members[name]; !ok {
		return "", cluster.Invalidf("no member named %q", name)
	}
	if st.IsPrimary(name) {
		return "", cluster.Invalidf("%s is already the primary", name)
	}
	for _, v := range views {
		if v.Name == name {
			if err := decide.Eligible(st, v, rule); err != nil {
				if p == decide.ForSwitchover && !force {
					err.Reason += " (pgha switchover --force takes a replica that is behind or not streaming)"
				}
				return "", err
			}
		}
	}
	return name, nil
}

// drainWait is how long a switchover lets every proxy see the demoting
// mark (and hold new connections) before the primary stops: the FSM
// change reaches each node one Raft round trip after it commits (the
// no-op that follows every command carries the commit index, see
// raftfsm.Node.Apply), and its routing loop reacts at once.
const drainWait = 200 * time.Millisecond

// switchover is the part of a switchover that runs on the HA loop.
func (l *haLoop) switchover(ctx context.Context, t *leaderTerm, st raftfsm.State, req api.SwitchoverRequest) (handover, error) {
	h := handover{old: st.Primary.Member, epoch: st.Primary.Epoch}
	cand, err := l.candidate(st, req.Candidate, decide.ForSwitchover, req.Force)
	if err != nil {
		return h, err
	}
	h.cand = cand
	candMember := st.Members[cand]
	// Proxies first stop sending new connections to this primary (they
	// are held, not refused), then it stops: no client meets a server
	// that is shutting down.
	if err := l.raft.Apply(raftfsm.SetDemoting{Member: l.cfg.Name, Epoch: st.Primary.Epoch, Demoting: true}, applyTimeout); err != nil {
		return h, domainErr(err)
	}
	l.pokeRoutes()
	select {
	case <-ctx.Done():
		return h, l.abortSwitchover(ctx, ctx.Err())
	case <-time.After(drainWait):
	}
	l.log.Info("switchover: stopping the primary cleanly", "candidate", cand)
	l.guard.disarm()
	stopCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	err = l.pg.Stop(stopCtx, pgnode.StopFast)
	cancel()
	h.stoppedAt = time.Now()
	if err != nil {
		return h, l.abortSwitchover(ctx, fmt.Errorf("stop the primary: %w", err))
	}
	cd, err := l.pg.ControlData(ctx)
	if err != nil {
		return h, l.abortSwitchover(ctx, fmt.Errorf("read the shutdown checkpoint: %w", err))
	}
	if err := l.waitReceived(ctx, candMember.PGAddr, cd.CheckpointLSN, 15*time.Second); err != nil {
		return h, l.abortSwitchover(ctx, fmt.Errorf("candidate %s did not receive the last WAL: %w", cand, err))
	}
	err = l.raft.Apply(raftfsm.SetPrimary{
		Member: cand, ExpectEpoch: st.Primary.Epoch, Timeline: st.Primary.Timeline, LSN: cd.CheckpointLSN,
		Reason: "switchover", At: time.Now().UTC(), LastSeen: h.stoppedAt.UTC(),
	}, applyTimeout)
	if err != nil {
		return h, l.abortSwitchover(ctx, fmt.Errorf("commit the new primary record: %w", err))
	}
	// From here on the record names the candidate: never restart as
	// primary. If the transfer fails, the HA loop retries it (a leader
	// hands leadership to the live holder of the record).
	if err := t.transferTo(cand); err != nil {
		l.log.Warn("switchover: leadership transfer failed; the HA loop retries", "err", err)
	}
	return h, nil
}

// abortSwitchover restarts the old primary after a switchover failed
// before the new record was committed (the record is still ours).
func (l *haLoop) abortSwitchover(ctx context.Context, cause error) error {
	l.log.Error("switchover aborted; restarting the primary", "err", cause)
	if st := l.raft.ClusterState(); st.IsPrimary(l.cfg.Name) && l.isLeader() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.PostgreSQL.StartTimeout.Duration)
		defer cancel()
		if !l.pg.Running() {
			l.guard.arm()
			if err := l.pg.Start(sctx); err != nil {
				l.log.Error("restart after aborted switchover", "err", err)
			}
		}
		if err := l.raft.Apply(raftfsm.SetDemoting{Member: l.cfg.Name, Epoch: st.Primary.Epoch}, applyTimeout); err != nil {
			l.log.Error("clear the demoting mark", "err", err)
		}
	}
	return cluster.Conflictf("switchover aborted, the primary is unchanged: %v", cause)
}

// waitReceived waits until the PostgreSQL at addr has received WAL past
// lsn, asking it directly (fresher than gossip).
func (l *haLoop) waitReceived(ctx context.Context, addr string, lsn uint64, timeout time.Duration) error {
	host, port, err := splitHostPort(addr)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := l.pg.ConnectTo(qctx, host, port)
		if err == nil {
			var recv string
			err = conn.QueryRow(qctx, "SELECT coalesce(pg_last_wal_receive_lsn(), '0/0')::text").Scan(&recv)
			conn.Close(context.Background())
			if err == nil {
				got, perr := pgnode.ParseLSN(recv)
				if perr == nil && got > lsn {
					cancel()
					return nil
				}
				err = fmt.Errorf("received up to %s, need past %s", recv, pgnode.FormatLSN(lsn))
			}
		}
		cancel()
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return last
}

// waitNewPrimary waits until the new primary reports its promotion (the
// FSM's history), and reports the write gap as the agents saw it.
func (a *Agent) waitNewPrimary(ctx context.Context, h handover) (api.SwitchoverResult, error) {
	epoch := h.epoch + 1
	res := api.SwitchoverResult{Old: h.old, New: h.cand, Epoch: epoch}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		st := a.raft.ClusterState()
		if st.Primary != nil && st.Primary.Epoch > epoch {
			return res, cluster.Conflictf("the primary changed again meanwhile (now %s)", st.Primary.Member)
		}
		for _, e := range st.History {
			if e.Epoch == epoch && !e.PromotedAt.IsZero() {
				res.WriteGapSec = e.PromotedAt.Sub(h.stoppedAt).Seconds()
				res.Message = fmt.Sprintf("%s is the new primary; %s follows it", h.cand, h.old)
				return res, nil
			}
		}
		select {
		case <-ctx.Done():
			return res, cluster.Timeoutf("the record moved to %s; stopped waiting for its promotion (%v): see pgha list", h.cand, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return res, cluster.Timeoutf("record moved to %s but it did not report its promotion within 60s; see pgha list", h.cand)
}

// Failover promotes req.Candidate when the primary is unhealthy or gone.
// When the primary is this leader and runs, it is a switchover.
func (a *Agent) Failover(ctx context.Context, req api.SwitchoverRequest) (api.SwitchoverResult, error) {
	var h handover
	err := a.asLeader(ctx, func(lctx context.Context, l *haLoop, t *leaderTerm) error {
		st := l.raft.ClusterState()
		if st.Primary == nil || st.SystemID == 0 {
			return cluster.NotInitialisedf("the cluster is not initialised")
		}
		if st.Primary.Member == l.cfg.Name && l.pg != nil && l.pg.Running() {
			var err error
			h, err = l.switchover(lctx, t, st, req)
			return err
		}
		var err error
		h, err = l.manualFailover(st, t, req)
		return err
	})
	if err != nil {
		return api.SwitchoverResult{}, err
	}
	a.poke()
	return a.waitNewPrimary(ctx, h)
}

// manualFailover commits req.Candidate as the primary while the recorded
// primary is down (or this leader's own PostgreSQL does not run).
func (l *haLoop) manualFailover(st raftfsm.State, t *leaderTerm, req api.SwitchoverRequest) (handover, error) {
	h := handover{old: st.Primary.Member, epoch: st.Primary.Epoch, stoppedAt: time.Now()}
	cand, err := l.candidate(st, req.Candidate, decide.ForPromotion, req.Force)
	if err != nil {
		return h, err
	}
	h.cand = cand
	if nb := l.promoteNotBefore(); time.Now().Before(nb) {
		return h, cluster.Conflictf("this node became leader moments ago: the old primary may still be fencing itself; retry in %s", time.Until(nb).Round(100*time.Millisecond))
	}
	if st.Primary.Member == l.cfg.Name {
		// Our own PostgreSQL must not take writes once the record moves.
		if err := l.fence("manual failover to " + cand); err != nil {
			return h, fmt.Errorf("fence the local primary: %w", err)
		}
	}
	err = l.raft.Apply(raftfsm.SetPrimary{
		Member: cand, ExpectEpoch: st.Primary.Epoch, Timeline: st.Primary.Timeline,
		Reason: "manual", At: time.Now().UTC(), LastSeen: time.Now().UTC(),
	}, applyTimeout)
	if err != nil {
		return h, domainErr(err)
	}
	l.log.Warn("manual failover committed", "old", st.Primary.Member, "new", cand)
	if cand != l.cfg.Name {
		if err := t.transferTo(cand); err != nil {
			l.log.Warn("manual failover: leadership transfer failed; the HA loop retries", "err", err)
		}
	}
	return h, nil
}

// scheduleSwitchover records a planned switchover in the FSM; the leader
// runs it when it is due (see runScheduled).
func (l *haLoop) scheduleSwitchover(st raftfsm.State, req api.SwitchoverRequest) (api.SwitchoverResult, error) {
	var res api.SwitchoverResult
	at, err := time.Parse(time.RFC3339, req.ScheduledAt)
	if err != nil {
		return res, cluster.Invalidf("scheduled_at %q: want RFC 3339", req.ScheduledAt)
	}
	if !at.After(time.Now()) {
		return res, cluster.Invalidf("scheduled_at %s is not in the future", at.Format(time.RFC3339))
	}
	if req.Candidate != "" {
		if _, ok := st.Members[req.Candidate]; !ok || req.Candidate == st.Primary.Member {
			return res, cluster.Invalidf("candidate %q is not a replica member", req.Candidate)
		}
	}
	sc := &raftfsm.ScheduledSwitchover{At: at.UTC(), From: st.Primary.Member, Candidate: req.Candidate, Force: req.Force}
	if err := l.raft.Apply(raftfsm.Schedule{Switchover: sc}, applyTimeout); err != nil {
		return res, domainErr(err)
	}
	l.log.Info("switchover scheduled", "at", sc.At, "candidate", sc.Candidate)
	res.Old, res.New, res.Epoch = st.Primary.Member, req.Candidate, st.Primary.Epoch
	res.Message = "switchover scheduled for " + sc.At.Format(time.RFC3339)
	return res, nil
}

// CancelSwitchover drops a scheduled switchover. Leader only.
func (a *Agent) CancelSwitchover(ctx context.Context) error {
	if !a.isLeader() {
		return cluster.ErrNotLeader
	}
	if a.raft.ClusterState().Scheduled == nil {
		return cluster.NotFoundf("no switchover is scheduled")
	}
	if err := a.raft.Apply(raftfsm.Schedule{}, applyTimeout); err != nil {
		return domainErr(err)
	}
	a.log.Info("scheduled switchover cancelled")
	return nil
}

// runScheduled carries out a due scheduled switchover on the HA loop, or
// drops it when it cannot be: a schedule is run once, never retried.
func (l *haLoop) runScheduled(ctx context.Context, st raftfsm.State) {
	sc := st.Scheduled
	if sc.From != st.Primary.Member {
		l.log.Warn("dropping a scheduled switchover: the primary changed since", "scheduled_from", sc.From)
	} else {
		l.log.Info("running the scheduled switchover", "candidate", sc.Candidate)
		h, err := l.switchover(ctx, l.term, st, api.SwitchoverRequest{Candidate: sc.Candidate, Force: sc.Force})
		if err == nil {
			l.log.Info("scheduled switchover committed", "new", h.cand)
			return // the new record cleared the schedule
		}
		l.log.Error("scheduled switchover failed; dropping it", "err", err)
	}
	if l.isLeader() {
		if err := l.raft.Apply(raftfsm.Schedule{}, applyTimeout); err != nil {
			l.log.Warn("clear scheduled switchover", "err", err)
		}
	}
}

// SetPaused turns maintenance mode on or off. Leader only.
func (a *Agent) SetPaused(ctx context.Context, paused bool) error {
	if !a.isLeader() {
		return cluster.ErrNotLeader
	}
	if err := a.raft.Apply(raftfsm.SetPaused{Paused: paused}, applyTimeout); err != nil {
		return domainErr(err)
	}
	a.log.Info("maintenance mode", "paused", paused)
	return nil
}
