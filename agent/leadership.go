package agent

import (
	"context"
	"sync"
	"time"
)

// leadershipBoard is the leadership the watcher established: the Raft
// term this node leads and has passed the Barrier of, and since when it
// leads. Written by watchLeadership only; read by anyone.
type leadershipBoard struct {
	mu    sync.Mutex
	term  uint64    // term whose Barrier passed; 0 when not leader
	since time.Time // when this node last became leader; zero when not leader
}

func (b *leadershipBoard) get() (term uint64, since time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.term, b.since
}

func (b *leadershipBoard) set(term uint64, since time.Time) {
	b.mu.Lock()
	b.term, b.since = term, since
	b.mu.Unlock()
}

// watchLeadership is the one reader of Raft's NotifyCh. On gaining
// leadership it runs a Barrier so the FSM holds every committed entry
// before anyone acts as leader; only then is the term recorded on the
// board. One Barrier per term. Losing leadership clears the board at
// once and tells the fence watchdog.
func (a *Agent) watchLeadership(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case isLeader := <-a.raft.LeaderNotify():
			if !isLeader {
				a.lead.set(0, time.Time{})
				a.log.Info("lost raft leadership")
				notify(a.guard.lost)
				a.poke()
				a.pokeRoutes()
				continue
			}
			since := time.Now()
			a.lead.set(0, since)
			term := a.raft.Term()
			a.log.Info("gained raft leadership", "term", term)
			// Retry the barrier while this term lasts: without it the node
			// would hold leadership without ever acting on it.
			for {
				err := a.raft.Barrier(5 * time.Second)
				if err == nil {
					break
				}
				a.log.Warn("leader barrier failed", "err", err)
				if !a.raft.IsLeader() || a.raft.Term() != term || ctx.Err() != nil {
					break
				}
			}
			if a.raft.IsLeader() && a.raft.Term() == term {
				a.lead.set(term, since)
				// A latch set by an earlier fence clears only with a
				// confirmation a leader asks for: wake the watchdog.
				notify(a.guard.wake)
			}
			a.poke()
			a.pokeRoutes()
		}
	}
}

// leaderTerm is the term this node leads and may act in, or 0: Raft says
// leader in that very term, its Barrier passed, and no fence since the
// last leadership confirmation (see watchdog.latched: a stalled leader
// must not restart what it just fenced).
func (a *Agent) leaderTerm() uint64 {
	term, _ := a.lead.get()
	if term == 0 || !a.raft.IsLeader() || a.raft.Term() != term || a.guard.latched() {
		return 0
	}
	return term
}

// isLeader is the leadership every decision acts on (see leaderTerm).
func (a *Agent) isLeader() bool { return a.leaderTerm() != 0 }

// promoteNotBefore is the earliest time this leader may promote a new
// primary (see fence.go for the arithmetic). Zero when not leader.
func (a *Agent) promoteNotBefore() time.Time {
	_, since := a.lead.get()
	if since.IsZero() {
		return time.Time{}
	}
	wait := fenceBudget + fenceSlack + fenceGrace + fenceMargin - a.cfg.Raft.HeartbeatTimeout.Duration
	if wait < 0 {
		wait = 0
	}
	return since.Add(wait)
}
