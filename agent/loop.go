package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"github.com/pgha/pgha/agent/decide"
	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

// haLoop is the HA loop: one goroutine that observes the local
// PostgreSQL, the FSM and gossip, asks decide.Decide what to do and does
// it. Everything below the embedded *Agent is the loop's own state: only
// the loop's goroutine reads or writes it, so none of it needs a lock.
// Operator requests that act on PostgreSQL (switchover, restart,
// reinitialize...) run on this goroutine too, as jobs between rounds
// (see do), so they never race a round.
type haLoop struct {
	*Agent // the node's parts and the boards the loop writes

	jobs chan func(ctx context.Context)
	// stopped is closed when run returns: a job nobody will take fails.
	stopped chan struct{}

	// term is the leader term this node acts in, nil when it does not
	// lead (see termFor).
	term *leaderTerm
	// form is the state of cluster formation (bootstrap_expect).
	form formation
	// fastTimers: Raft runs on formation timers until a leader exists.
	fastTimers bool

	// firedExit is the postmaster exit channel that already woke the loop
	// (it stays closed until the next start).
	firedExit <-chan struct{}
	// lastStart is when the loop last started PostgreSQL.
	lastStart time.Time
	// failingSince is when this record holder began failing to run
	// PostgreSQL as primary (see trackPrimaryStart).
	failingSince time.Time
	// lastLSNAt is when the primary's position was last committed.
	lastLSNAt time.Time
	// lastSlots and slotsFor: when, and for which member set, the
	// replication slots were last reconciled.
	lastSlots time.Time
	slotsFor  string
	// savedPeers is what peers.json last got.
	savedPeers string
	// ignoredParams are the dynamic parameters pgnode last left out.
	ignoredParams string
	// oldTimelineSince: since when this replica has run on a timeline
	// older than the cluster's without streaming.
	oldTimelineSince time.Time
	// followedTLI is the newest timeline the running postmaster's
	// walreceiver has received (replica; see probe).
	followedTLI uint32
	// The running postmaster's answers to the probe: pgExited tells one
	// postmaster from the next (its exit channel), pgSeenAt is when this
	// one was first seen, pgLastAnswer its last answer (zero: none yet).
	pgExited <-chan struct{}
	// connectFailSince: since when new management connections fail
	// while the kept one may still answer (a hung postmaster).
	connectFailSince time.Time
	// logCheckedAt: when rotateLog last looked.
	logCheckedAt time.Time
	pgSeenAt     time.Time
	pgLastAnswer time.Time
	// unresponsive and startLimit are the dynamic configuration's
	// primary_unresponsive_timeout and primary_start_timeout, as of the
	// last round.
	unresponsive, startLimit time.Duration
	// replicas is pg_stat_replication at the last probe (primary).
	replicas []pgnode.ReplicaInfo
	// primaryContact is this node's last Raft contact with the primary's
	// node while that node led: the start of a failover's write downtime
	// as the agents saw it.
	primaryContact time.Time
	// multiSince: since when more than one member has looked writable.
	multiSince time.Time
	// touched: this round started, stopped, reloaded or otherwise changed
	// PostgreSQL (it is probed again before publishing).
	touched bool
	// written and writtenAt: the configuration ensureRunning last wrote,
	// and when (see configRecheck).
	written   *pgnode.Desired
	writtenAt time.Time
}

func newHALoop(a *Agent) *haLoop {
	return &haLoop{Agent: a, jobs: make(chan func(context.Context)), stopped: make(chan struct{})}
}

// transitionRecheck is how soon the loop runs again while PostgreSQL is
// between states (a replica not yet streaming).
const transitionRecheck = 200 * time.Millisecond

// run runs rounds every loopInterval, and at once when the FSM, the
// gossip view, leadership or the postmaster changes, or after a job.
func (l *haLoop) run(ctx context.Context) {
	defer close(l.stopped)
	// Everything the loop runs carries the mark, so that a job that calls
	// an operation which is itself a job runs it inline (see do).
	ctx = context.WithValue(ctx, onLoopKey{}, true)
	t := time.NewTicker(loopInterval)
	defer t.Stop()
	for {
		// While a graceful leave runs, the loop stands still (and goes on
		// if the leave fails).
		var soon <-chan time.Time
		if !l.leaving.Load() {
			start := time.Now()
			busy := l.round(ctx)
			l.metrics.LoopDuration.Observe(time.Since(start).Seconds())
			l.watchWritable(time.Now())
			if busy {
				// Something is on its way (a replica connecting to its
				// primary): look again shortly rather than in a second.
				soon = time.After(transitionRecheck)
			}
		}
		var exited <-chan struct{}
		if l.pg != nil {
			exited = l.pg.Exited()
		}
		if exited == l.firedExit {
			exited = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-soon:
		case <-l.wake:
		case <-exited:
			l.firedExit = exited
			l.log.Warn("postgres exited")
		case job := <-l.jobs:
			job(ctx)
		}
	}
}

// do runs f on the HA loop's goroutine between two rounds, with the
// loop's context (an operation that has started is not abandoned half-way
// because its caller went away), and returns f's error. ctx bounds only
// the caller's wait: for the loop to take the job (it may be busy cloning
// for minutes) and for the job to end.
func (l *haLoop) do(ctx context.Context, f func(ctx context.Context) error) error {
	if ctx.Value(onLoopKey{}) != nil {
		return f(ctx) // already on the loop: waiting for it would wait forever
	}
	done := make(chan error, 1)
	select {
	case l.jobs <- func(lctx context.Context) { done <- f(lctx) }:
	case <-l.stopped:
		return cluster.Conflictf("the agent is stopping")
	case <-ctx.Done():
		return cluster.Timeoutf("the HA loop is busy (%v); retry later", ctx.Err())
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return cluster.Timeoutf("the operation is still running on the HA loop (%v); see pgha list", ctx.Err())
	}
}

// onLoopKey marks the contexts of the HA loop's goroutine.
type onLoopKey struct{}

// round is one pass: gather inputs, decide, act, publish status. It
// reports whether the local PostgreSQL is in transition.
func (l *haLoop) round(ctx context.Context) bool {
	local := l.probe(ctx)
	if !l.raft.HasConfiguration() {
		l.publish(local, l.formationStep())
		return false
	}
	l.endFormation()
	l.term = l.termFor(l.leaderTerm())
	servers, serr := l.raft.Servers()
	if l.term != nil && serr == nil {
		l.term.reconcile(l.gossipByName(), servers, time.Now())
	}
	var voters map[string]bool
	if serr == nil {
		voters = map[string]bool{}
		inRaft := map[string]bool{}
		for _, s := range servers {
			inRaft[string(s.ID)] = true
			if s.Suffrage == raft.Voter {
				voters[string(s.ID)] = true
			}
		}
		l.savePeers(inRaft)
	}
	st := l.raft.ClusterState()
	l.unresponsive, l.startLimit = st.Config.UnresponsiveTimeout(), st.Config.StartTimeout()
	if st.Paused {
		l.guard.silentLimit.Store(0) // maintenance mode: nothing is fenced for silence
	} else {
		l.guard.silentLimit.Store(int64(l.unresponsive))
	}
	if id, _ := l.raft.Leader(); st.Primary != nil && id == st.Primary.Member && id != l.cfg.Name {
		l.primaryContact = l.raft.LastContact()
	}
	now := time.Now()
	in := decide.Input{
		Self:             l.cfg.Name,
		Witness:          l.cfg.Witness,
		Tags:             decide.Tags{NoFailover: l.cfg.Tags.NoFailover, Priority: l.cfg.Tags.FailoverPriority},
		Leader:           l.term != nil,
		Now:              now,
		PromoteNotBefore: l.promoteNotBefore(),
		State:            st,
		Voters:           voters,
		Gossip:           l.gossipByName(),
		PG:               l.withTimelineAge(local, st, now),
		Yield:            l.status.get().Yield,
	}
	if l.term != nil && st.Primary != nil && st.Primary.Member != l.cfg.Name {
		in.OldPrimary = l.term.askPrimary(ctx, st)
	}
	if l.term != nil && st.IsPrimary(l.cfg.Name) && st.Scheduled != nil && !st.Paused && !now.Before(st.Scheduled.At) {
		// A due scheduled switchover runs here, on the loop; the next
		// round starts from the state it leaves.
		l.runScheduled(ctx, st)
		return false
	}
	var waiting, failure string
	holder := st.IsPrimary(l.cfg.Name) && l.term != nil
	primaryOK := local.Running && !local.InRecovery && !local.Hung
	if holder && local.Hung && !st.Paused && !l.status.get().Yield {
		l.log.Error("PostgreSQL does not answer; fencing it and yielding the primary role", "silent", local.Silent.Round(time.Second))
		l.status.update(func(s *NodeStatus) { s.Yield = true })
		in.Yield = true
	}
	l.touched = false
	for _, act := range decide.Decide(in) {
		switch act.Kind {
		case decide.ActWait:
			waiting = act.Reason
			continue
		case decide.ActRefuse:
			failure = act.Reason
			continue
		case decide.ActRunPrimary, decide.ActRunReplica, decide.ActEnsureSlots, decide.ActRecordLSN, decide.ActSyncStandbys:
			// Steady state: they touch PostgreSQL only when something
			// changed, and say so (ensureRunning sets touched).
		default:
			l.touched = true
		}
		actx, cancel := ctx, context.CancelFunc(func() {})
		if steadyAction(act.Kind) {
			// The steady round's queries are quick; one that waits on a
			// hung server must not hold up the loop that judges it.
			actx, cancel = context.WithTimeout(ctx, steadyActionTimeout)
		}
		err := l.perform(actx, act, in)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return false
			}
			failure = fmt.Sprintf("%s: %v", act.Kind, err)
			break
		}
	}
	// Re-read PostgreSQL after acting so the published status is fresh
	// (a steady round changed nothing: the first probe still holds).
	if l.touched {
		local = l.probe(ctx)
	}
	l.trackPrimaryStart(holder, primaryOK || (local.Running && !local.InRecovery && !local.Hung), st)
	l.noteProblem(waiting, failure)
	l.publish(local, waiting)
	l.rotateLog()
	return local.Running && local.InRecovery && !local.Streaming && time.Since(l.lastStart) < 10*time.Second
}

// logCheckEvery is how often the loop looks at postgresql.log's size.
const logCheckEvery = 30 * time.Second

// rotateLog keeps postgresql.log bounded (pgnode.RotateLog).
func (l *haLoop) rotateLog() {
	if l.pg == nil || time.Since(l.logCheckedAt) < logCheckEvery {
		return
	}
	l.logCheckedAt = time.Now()
	if rotated, err := l.pg.RotateLog(pgnode.LogMaxSize, pgnode.LogKeep); err != nil {
		l.log.Warn("rotate postgresql.log", "err", err)
	} else if rotated {
		l.log.Info("rotated postgresql.log", "max_bytes", pgnode.LogMaxSize, "kept", pgnode.LogKeep)
	}
}

// steadyActionTimeout bounds each steady-state action (see round).
const steadyActionTimeout = 5 * time.Second

// steadyAction: the steady state's queries (not a start, which may run
// crash recovery for minutes).
func steadyAction(k decide.ActionKind) bool {
	return k == decide.ActEnsureSlots || k == decide.ActRecordLSN
}

// termFor returns the leader term object for Raft term n (0: not
// leader): the current one while the term lasts, a fresh one when a new
// term began, none when leadership is gone. Bookkeeping of a past term
// (non-voters seen, transfers tried, a synchronous standby being added)
// never leaks into the next.
func (l *haLoop) termFor(n uint64) *leaderTerm {
	switch {
	case n == 0:
		if l.term != nil {
			l.log.Info("leader term ended", "term", l.term.number)
		}
		return nil
	case l.term != nil && l.term.number == n:
		return l.term
	}
	l.log.Info("leader term begins", "term", n)
	return newLeaderTerm(n, l.Agent)
}

// noteProblem records why nothing happens and logs it once per change.
func (l *haLoop) noteProblem(waiting, failure string) {
	var prevW, prevE string
	l.status.update(func(s *NodeStatus) {
		prevW, prevE = s.Waiting, s.Error
		s.Waiting, s.Error = waiting, failure
	})
	if failure != "" && failure != prevE {
		l.log.Error("cannot proceed", "reason", failure)
	}
	if waiting != "" && waiting != prevW {
		l.log.Info("waiting", "reason", waiting)
	}
}

// trackPrimaryStart sets Yield when this node has held the primary record
// as leader for primaryStartTimeout without running PostgreSQL as
// primary, and clears it as soon as it does (or the record moves).
func (l *haLoop) trackPrimaryStart(holder, runningPrimary bool, st raftfsm.State) {
	yield := l.status.get().Yield
	switch {
	case !st.IsPrimary(l.cfg.Name) || runningPrimary || st.Paused:
		l.failingSince = time.Time{}
		if yield && (l.raft.Cut() || l.guard.latched()) && st.IsPrimary(l.cfg.Name) && !st.Paused {
			// The watchdog yielded (a stuck Raft loop, a silent server) and
			// fenced; this round's view may predate that.
			return
		}
		if yield {
			l.log.Info("no longer yielding the primary role")
			l.status.update(func(s *NodeStatus) { s.Yield = false })
		}
	case holder && l.failingSince.IsZero():
		l.failingSince = time.Now()
	case holder && time.Since(l.failingSince) > st.Config.StartTimeout() && !yield:
		l.log.Error("PostgreSQL could not run as primary; yielding the primary role", "for", time.Since(l.failingSince).Round(time.Second))
		l.status.update(func(s *NodeStatus) { s.Yield = true })
	}
}

// withTimelineAge fills l.OldTimelineFor: how long this replica has been
// running on a timeline older than the cluster's without streaming.
func (l *haLoop) withTimelineAge(p decide.LocalPG, st raftfsm.State, now time.Time) decide.LocalPG {
	behind := p.Running && p.InRecovery && !p.Streaming && st.Primary != nil &&
		p.Timeline != 0 && p.Timeline < st.Primary.Timeline
	if !behind {
		l.oldTimelineSince = time.Time{}
		return p
	}
	if l.oldTimelineSince.IsZero() {
		l.oldTimelineSince = now
	}
	p.OldTimelineFor = now.Sub(l.oldTimelineSince)
	return p
}
