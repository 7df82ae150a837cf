package agent

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/jackc/pgx/v5"
	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

// checkCandidate says why name cannot be promoted now, or nil. force skips
// the lag check only. A switchover needs a streaming candidate; a failover
// (the primary is gone) cannot ask for that.
func (a *Agent) checkCandidate(st raftfsm.State, name string, force, switchover bool) error {
	if _, ok := st.Members[name]; !ok {
		return api.Errorf(http.StatusBadRequest, "no member named %q", name)
	}
	if name == st.Primary.Member {
		return api.Errorf(http.StatusBadRequest, "%s is already the primary", name)
	}
	g, ok := a.gossipByName()[name]
	if !ok || !g.Alive {
		return api.Errorf(http.StatusConflict, "candidate %s is not reachable", name)
	}
	switch {
	case g.Meta.Witness:
		return api.Errorf(http.StatusConflict, "candidate %s is a witness (no PostgreSQL)", name)
	case g.Meta.NoFail:
		return api.Errorf(http.StatusConflict, "candidate %s has the nofailover tag", name)
	case g.Meta.Role != "replica" || (g.Meta.PGState != "streaming" && g.Meta.PGState != "running"):
		return api.Errorf(http.StatusConflict, "candidate %s is not a running replica (%s %s)", name, g.Meta.Role, g.Meta.PGState)
	}
	if st.Config.SynchronousMode && !st.InSyncSet(name) {
		return api.Errorf(http.StatusConflict, "candidate %s is not in the synchronous set (%s): promoting it could lose acknowledged commits", name, strings.Join(st.SyncSet, ", "))
	}
	if force {
		return nil
	}
	if switchover && g.Meta.PGState != "streaming" {
		return api.Errorf(http.StatusConflict, "candidate %s is not streaming; use --force to promote it anyway", name)
	}
	if lag := behind(primaryPosition(st, a.gossipByName()), max(g.Meta.Recv, g.Meta.WAL)); lag > st.Config.MaximumLagOnFailover {
		return api.Errorf(http.StatusConflict, "candidate %s is %d bytes behind the primary (maximum_lag_on_failover is %d); wait, or use --force", name, lag, st.Config.MaximumLagOnFailover)
	}
	return nil
}

// Switchover hands the primary role to a replica without losing a
// committed transaction: the primary stops cleanly (its WAL senders ship
// everything up to the shutdown checkpoint), the candidate confirms it
// received that checkpoint, the new primary record is committed, and Raft
// leadership moves to the candidate, which promotes itself. The old
// primary then follows it. Runs on the leader.
func (a *Agent) Switchover(ctx context.Context, req api.SwitchoverRequest) (api.SwitchoverResult, error) {
	var res api.SwitchoverResult
	if !a.isLeader() {
		return res, api.ErrNotLeader
	}
	st := a.raft.FSM().State()
	if st.Primary == nil || st.SystemID == 0 {
		return res, api.Errorf(http.StatusConflict, "the cluster is not initialised")
	}
	if req.Leader != "" && req.Leader != st.Primary.Member {
		return res, api.Errorf(http.StatusConflict, "the primary is %s, not %s", st.Primary.Member, req.Leader)
	}
	if st.Primary.Member != a.cfg.Name {
		return res, api.Errorf(http.StatusConflict, "primary %s does not lead the cluster right now; use pgha failover", st.Primary.Member)
	}
	if req.ScheduledAt != "" {
		return a.scheduleSwitchover(st, req)
	}
	cand := req.Candidate
	if cand == "" {
		in := Input{Self: a.cfg.Name, State: st, Gossip: a.gossipByName(), Tags: Tags{NoFailover: true}}
		best, why := bestCandidate(in)
		if best == "" {
			return res, api.Errorf(http.StatusConflict, "no candidate for a switchover: %s", why)
		}
		cand = best
	}
	if err := a.checkCandidate(st, cand, req.Force, true); err != nil {
		return res, err
	}
	candMember := st.Members[cand]

	a.actionMu.Lock()
	locked := true
	defer func() {
		if locked {
			a.actionMu.Unlock()
		}
	}()
	// Proxies first stop sending new connections to this primary (they
	// are held, not refused), then it stops: no client meets a server
	// that is shutting down.
	if err := a.raft.Apply(raftfsm.SetDemoting{Member: a.cfg.Name, Epoch: st.Primary.Epoch, Demoting: true}, applyTimeout); err != nil {
		return res, errStatus(err)
	}
	time.Sleep(routeTick + 100*time.Millisecond)
	a.log.Info("switchover: stopping the primary cleanly", "candidate", cand)
	a.primaryUp.Store(false)
	stopCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	err := a.pg.Stop(stopCtx, pgnode.StopFast)
	cancel()
	stoppedAt := time.Now()
	if err != nil {
		return res, a.abortSwitchover(ctx, fmt.Errorf("stop the primary: %w", err))
	}
	cd, err := a.pg.ControlData(ctx)
	if err != nil {
		return res, a.abortSwitchover(ctx, fmt.Errorf("read the shutdown checkpoint: %w", err))
	}
	if err := a.waitReceived(ctx, candMember.PGAddr, cd.CheckpointLSN, 15*time.Second); err != nil {
		return res, a.abortSwitchover(ctx, fmt.Errorf("candidate %s did not receive the last WAL: %w", cand, err))
	}
	err = a.raft.Apply(raftfsm.SetPrimary{
		Member: cand, ExpectEpoch: st.Primary.Epoch, Timeline: st.Primary.Timeline, LSN: cd.CheckpointLSN,
		Reason: "switchover", At: time.Now().UTC(), LastSeen: stoppedAt.UTC(),
	}, applyTimeout)
	if err != nil {
		return res, a.abortSwitchover(ctx, fmt.Errorf("commit the new primary record: %w", err))
	}
	// From here on the record names the candidate: never restart as
	// primary. If the transfer fails, the HA loop retries it (a leader
	// hands leadership to the live holder of the record).
	if err := a.transferTo(cand); err != nil {
		a.log.Warn("switchover: leadership transfer failed; the HA loop retries", "err", err)
	}
	a.actionMu.Unlock()
	locked = false
	a.poke()
	return a.waitNewPrimary(ctx, st.Primary.Member, cand, st.Primary.Epoch+1, stoppedAt)
}

// abortSwitchover restarts the old primary after a switchover failed
// before the new record was committed (the record is still ours).
func (a *Agent) abortSwitchover(ctx context.Context, cause error) error {
	a.log.Error("switchover aborted; restarting the primary", "err", cause)
	if st := a.raft.FSM().State(); st.IsPrimary(a.cfg.Name) && a.isLeader() {
		sctx, cancel := context.WithTimeout(ctx, a.cfg.PostgreSQL.StartTimeout.Duration)
		defer cancel()
		if err := a.pg.Start(sctx); err != nil {
			a.log.Error("restart after aborted switchover", "err", err)
		}
		if err := a.raft.Apply(raftfsm.SetDemoting{Member: a.cfg.Name, Epoch: st.Primary.Epoch}, applyTimeout); err != nil {
			a.log.Error("clear the demoting mark", "err", err)
		}
	}
	return api.Errorf(http.StatusConflict, "switchover aborted, the primary is unchanged: %v", cause)
}

// transferTo hands Raft leadership to a voter of the configuration and
// checks that it won.
func (a *Agent) transferTo(name string) error {
	servers, err := a.raft.Servers()
	if err != nil {
		return err
	}
	for _, s := range servers {
		if string(s.ID) != name {
			continue
		}
		if s.Suffrage != raft.Voter {
			return fmt.Errorf("cannot hand leadership to %s: not a voter", name)
		}
		return a.raft.TransferLeadership(name, string(s.Address), 5*time.Second)
	}
	return fmt.Errorf("cannot hand leadership to %s: not in the raft configuration", name)
}

// waitReceived waits until the PostgreSQL at addr has received WAL past
// lsn, asking it directly (fresher than gossip).
func (a *Agent) waitReceived(ctx context.Context, addr string, lsn uint64, timeout time.Duration) error {
	host, port, err := splitHostPort(addr)
	if err != nil {
		return err
	}
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return err
	}
	cfg.Host, cfg.Port = host, uint16(port)
	cfg.User, cfg.Password, cfg.Database = a.cfg.PostgreSQL.Superuser.Username, a.cfg.PostgreSQL.Superuser.Password, "postgres"
	cfg.RuntimeParams["application_name"] = "pgha"
	cfg.ConnectTimeout = 2 * time.Second
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.ConnectConfig(qctx, cfg)
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

// waitNewPrimary waits until the new primary runs as such (gossip), and
// reports the write gap as the agents saw it.
func (a *Agent) waitNewPrimary(ctx context.Context, old, cand string, epoch uint64, stoppedAt time.Time) (api.SwitchoverResult, error) {
	res := api.SwitchoverResult{Old: old, New: cand, Epoch: epoch}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		st := a.raft.FSM().State()
		if st.Primary != nil && st.Primary.Epoch > epoch {
			return res, api.Errorf(http.StatusConflict, "the primary changed again meanwhile (now %s)", st.Primary.Member)
		}
		for _, h := range st.History {
			if h.Epoch == epoch && !h.PromotedAt.IsZero() {
				res.WriteGapSec = h.PromotedAt.Sub(stoppedAt).Seconds()
				res.Message = fmt.Sprintf("%s is the new primary; %s follows it", cand, old)
				return res, nil
			}
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return res, api.Errorf(http.StatusGatewayTimeout, "record moved to %s but it did not report its promotion within 60s; see pgha list", cand)
}

// Failover promotes req.Candidate when the primary is unhealthy or gone.
// When the primary is healthy and leads, it is a switchover.
func (a *Agent) Failover(ctx context.Context, req api.SwitchoverRequest) (api.SwitchoverResult, error) {
	var res api.SwitchoverResult
	if !a.isLeader() {
		return res, api.ErrNotLeader
	}
	st := a.raft.FSM().State()
	if st.Primary == nil || st.SystemID == 0 {
		return res, api.Errorf(http.StatusConflict, "the cluster is not initialised")
	}
	if st.Primary.Member == a.cfg.Name && a.pg.Running() {
		return a.Switchover(ctx, req)
	}
	if err := a.checkCandidate(st, req.Candidate, req.Force, false); err != nil {
		return res, err
	}
	if nb := a.promoteNotBefore(); time.Now().Before(nb) {
		return res, api.Errorf(http.StatusConflict, "this node became leader moments ago: the old primary may still be fencing itself; retry in %s", time.Until(nb).Round(100*time.Millisecond))
	}
	a.actionMu.Lock()
	// Look again under the lock: the HA loop may have acted meanwhile.
	st = a.raft.FSM().State()
	if st.Primary.Member == a.cfg.Name {
		// Our own PostgreSQL must not take writes once the record moves.
		if err := a.fence("manual failover to " + req.Candidate); err != nil {
			a.actionMu.Unlock()
			return res, fmt.Errorf("fence the local primary: %w", err)
		}
	}
	err := a.raft.Apply(raftfsm.SetPrimary{
		Member: req.Candidate, ExpectEpoch: st.Primary.Epoch, Timeline: st.Primary.Timeline,
		Reason: "manual", At: time.Now().UTC(), LastSeen: time.Now().UTC(),
	}, applyTimeout)
	if err != nil {
		a.actionMu.Unlock()
		return res, errStatus(err)
	}
	a.log.Warn("manual failover committed", "old", st.Primary.Member, "new", req.Candidate)
	if req.Candidate != a.cfg.Name {
		if err := a.transferTo(req.Candidate); err != nil {
			a.log.Warn("manual failover: leadership transfer failed; the HA loop retries", "err", err)
		}
	}
	a.actionMu.Unlock()
	a.poke()
	return a.waitNewPrimary(ctx, st.Primary.Member, req.Candidate, st.Primary.Epoch+1, time.Now())
}

// SetPaused turns maintenance mode on or off. Leader only.
func (a *Agent) SetPaused(ctx context.Context, paused bool) error {
	if !a.isLeader() {
		return api.ErrNotLeader
	}
	if err := a.raft.Apply(raftfsm.SetPaused{Paused: paused}, applyTimeout); err != nil {
		return errStatus(err)
	}
	a.log.Info("maintenance mode", "paused", paused)
	return nil
}

// History lists the changes of primary.
func (a *Agent) History() []api.HistoryEntry {
	st := a.raft.FSM().State()
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

// scheduleSwitchover records a planned switchover in the FSM; the leader
// runs it when it is due (see runScheduled).
func (a *Agent) scheduleSwitchover(st raftfsm.State, req api.SwitchoverRequest) (api.SwitchoverResult, error) {
	var res api.SwitchoverResult
	at, err := time.Parse(time.RFC3339, req.ScheduledAt)
	if err != nil {
		return res, api.Errorf(http.StatusBadRequest, "scheduled_at %q: want RFC 3339", req.ScheduledAt)
	}
	if !at.After(time.Now()) {
		return res, api.Errorf(http.StatusBadRequest, "scheduled_at %s is not in the future", at.Format(time.RFC3339))
	}
	if req.Candidate != "" {
		if _, ok := st.Members[req.Candidate]; !ok || req.Candidate == st.Primary.Member {
			return res, api.Errorf(http.StatusBadRequest, "candidate %q is not a replica member", req.Candidate)
		}
	}
	sc := &raftfsm.ScheduledSwitchover{At: at.UTC(), From: st.Primary.Member, Candidate: req.Candidate, Force: req.Force}
	if err := a.raft.Apply(raftfsm.Schedule{Switchover: sc}, applyTimeout); err != nil {
		return res, errStatus(err)
	}
	a.log.Info("switchover scheduled", "at", sc.At, "candidate", sc.Candidate)
	res.Old, res.New, res.Epoch = st.Primary.Member, req.Candidate, st.Primary.Epoch
	res.Message = "switchover scheduled for " + sc.At.Format(time.RFC3339)
	return res, nil
}

// CancelSwitchover drops a scheduled switchover. Leader only.
func (a *Agent) CancelSwitchover(ctx context.Context) error {
	if !a.isLeader() {
		return api.ErrNotLeader
	}
	if a.raft.FSM().State().Scheduled == nil {
		return api.Errorf(http.StatusNotFound, "no switchover is scheduled")
	}
	if err := a.raft.Apply(raftfsm.Schedule{}, applyTimeout); err != nil {
		return errStatus(err)
	}
	a.log.Info("scheduled switchover cancelled")
	return nil
}

// runScheduled starts a due scheduled switchover, once, in the
// background: the switchover takes actionMu, which the HA loop round that
// noticed it holds.
func (a *Agent) runScheduled(ctx context.Context, st raftfsm.State) {
	sc := st.Scheduled
	if sc == nil || time.Now().Before(sc.At) || !a.scheduledRunning.CompareAndSwap(false, true) {
		return
	}
	a.spawn(func() {
		defer a.scheduledRunning.Store(false)
		if sc.From != st.Primary.Member {
			a.log.Warn("dropping a scheduled switchover: the primary changed since", "scheduled_from", sc.From)
		} else {
			a.log.Info("running the scheduled switchover", "candidate", sc.Candidate)
			res, err := a.Switchover(ctx, api.SwitchoverRequest{Candidate: sc.Candidate, Force: sc.Force})
			if err == nil {
				a.log.Info("scheduled switchover done", "new", res.New)
				return // the new record cleared the schedule
			}
			a.log.Error("scheduled switchover failed; dropping it", "err", err)
		}
		if a.isLeader() {
			if err := a.raft.Apply(raftfsm.Schedule{}, applyTimeout); err != nil {
				a.log.Warn("clear scheduled switchover", "err", err)
			}
		}
	})
}
