package agent

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// Fencing and promotion timing. The numbers fit together like this:
//
//   - The primary's agent confirms its Raft leadership with a quorum
//     (VerifyLeader) every verifyEvery, and wakes when its last
//     confirmation is fenceBudget old. A confirmation counts from the
//     moment it was asked for, not when the answer arrived, so a slow or
//     resumed process never stretches it. When no confirmation succeeded
//     for fenceBudget, or Raft says it lost leadership, it fences: SIGQUIT
//     to the postmaster and each backend, SIGKILL after fenceGrace.
//   - A new leader is elected no sooner than heartbeat_timeout after a
//     quorum last heard the old one (followers refuse votes while they
//     know a leader), so the old primary's last successful confirmation V
//     is at most the election time E minus heartbeat_timeout, and the old
//     primary has stopped by V + fenceBudget + fenceSlack + fenceGrace
//     (fenceSlack: the timer's and the scheduler's lateness).
//   - The new leader therefore promotes no sooner than E + fenceBudget +
//     fenceSlack + fenceGrace + fenceMargin - heartbeat_timeout (0.5 s
//     with the defaults). Nothing the network says can shorten that wait: a
//     refused connection looks the same from a dead node and from behind a
//     rejecting firewall.
const (
	fenceSlack  = 100 * time.Millisecond
	fenceBudget = 1000 * time.Millisecond
	fenceGrace  = 150 * time.Millisecond
	fenceMargin = 250 * time.Millisecond
	// verifyEvery spaces the confirmations: each is a round of
	// heartbeats to every voter, and four chances per budget are plenty.
	verifyEvery = 250 * time.Millisecond
)

// watchdog is what the fence watchdog shares with the rest of the agent.
// The fence loop owns its timers; these fields are the only state others
// touch, all atomic:
//
//   - armed: PostgreSQL runs (or is about to run) as primary, so the
//     watchdog must guard it. Set by whoever starts or promotes a primary
//     before it takes a write, cleared by whoever stops it.
//   - the fence latch: fencedAt is when the node last fenced, confirmedAt
//     when a leadership confirmation that was asked for after it
//     succeeded. While fencedAt > confirmedAt the node does not act as
//     leader (see Agent.leaderTerm), so a stalled leader cannot restart
//     what it just fenced.
type watchdog struct {
	armed        atomic.Bool
	fencedAt     atomic.Int64 // unix ns
	confirmedAt  atomic.Int64 // unix ns
	steppingDown atomic.Bool
	// wakes counts the watchdog's wake-ups (what an idle node should
	// not have many of; tests watch it).
	wakes atomic.Uint64
	lost  chan struct{} // poked when Raft leadership is lost
	wake  chan struct{} // poked when armed or latched: the loop wakes
}

func (w *watchdog) latched() bool { return w.fencedAt.Load() > w.confirmedAt.Load() }

// arm makes the watchdog guard a primary from now on.
func (w *watchdog) arm() {
	w.armed.Store(true)
	notify(w.wake)
}

// disarm stops guarding: PostgreSQL no longer runs as primary.
func (w *watchdog) disarm() { w.armed.Store(false) }

// fence stops PostgreSQL at once: it must not take another write. It
// sets the latch first (see watchdog).
func (a *Agent) fence(reason string) error {
	a.guard.fencedAt.Store(time.Now().UnixNano())
	a.guard.disarm()
	notify(a.guard.wake) // confirm leadership again to clear the latch
	if a.pg == nil || !a.pg.Running() {
		return nil
	}
	a.log.Error("fencing: stopping PostgreSQL immediately", "reason", reason)
	return a.pg.Fence(fenceGrace)
}

// mustFence fences and reports a failure loudly: the watchdog has nobody
// to return an error to, and a fence that failed must not go unnoticed.
func (a *Agent) mustFence(reason string) {
	if err := a.fence(reason); err != nil {
		a.log.Error("FENCE FAILED: PostgreSQL may still accept writes", "reason", reason, "err", err)
	}
}

// fenceLoop is the primary's dead-man switch, independent of the HA loop
// (which may be busy cloning or waiting): while PostgreSQL runs as
// primary, leadership must be confirmed by a quorum at least every
// fenceBudget, or PostgreSQL is fenced. It sleeps until the earlier of
// the next confirmation to ask for and the deadline of the last one, so a
// process resumed after a freeze (SIGSTOP, a VM pause) finds its
// deadline passed and fences at once. A leader whose confirmations fail
// while Raft still calls it leader (a stalled Raft loop, a disk that
// hangs) hands leadership away so that another node can take over. It
// sleeps for good while there is nothing to guard and no latch it can
// clear (only a leader can): an idle replica, or a fenced former primary,
// costs nothing here; a primary a few wake-ups a second.
func (a *Agent) fenceLoop(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	active := false
	lastOK := time.Now()
	var verifying chan verifyResult
	var lastAsk time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.guard.lost:
		case <-a.guard.wake:
		case <-t.C:
		case r := <-verifying:
			verifying = nil
			if r.err == nil {
				// Never backwards: the budget may have restarted (armed
				// anew) after this confirmation was asked for.
				lastOK = later(lastOK, r.asked)
				a.guard.confirmedAt.Store(r.asked.UnixNano())
			}
		}
		a.guard.wakes.Add(1)
		now := time.Now()
		guarding, latched := a.guard.armed.Load(), a.guard.latched()
		if guarding || latched {
			if !active {
				// Armed (or latched) after an idle spell: the budget
				// starts now.
				active, lastOK = true, now
			}
		} else {
			active = false
		}
		switch {
		case !guarding || (a.raft.IsLeader() && a.isSoleVoter()):
			// Not guarding a primary; or the only voter, which no other
			// node can supersede: a slow confirmation there (a Raft log
			// fsync stalled behind a bulk load's writeback) must not stop
			// the only database.
			lastOK = now
		case now.Sub(lastOK) > fenceBudget:
			a.mustFence(fmt.Sprintf("Raft leadership not confirmed for %s", now.Sub(lastOK).Round(time.Millisecond)))
			if a.raft.IsLeader() {
				a.stepDown("leadership could not be confirmed with a quorum")
			}
			a.poke()
		case !a.raft.IsLeader():
			a.mustFence("lost Raft leadership")
			a.poke()
		}
		guarding, latched = a.guard.armed.Load(), a.guard.latched()
		// Confirm leadership while guarding a primary, and while the
		// latch of an earlier fence is set (the HA loop waits for it), at
		// most every verifyEvery. Only a leader can: a latched follower
		// sleeps until it leads again (watchLeadership wakes it).
		asking := a.raft.IsLeader() && (guarding || latched)
		if verifying == nil && asking && now.Sub(lastAsk) >= verifyEvery {
			lastAsk = now
			ch := make(chan verifyResult, 1)
			verifying = ch
			a.spawn(func() { a.verify(ch) })
		}
		t.Stop()
		next := time.Duration(-1)
		if guarding {
			next = lastOK.Add(fenceBudget + time.Millisecond).Sub(now) // the deadline
		}
		if verifying == nil && asking {
			if d := lastAsk.Add(verifyEvery).Sub(now); next < 0 || d < next {
				next = d
			}
		}
		if next >= 0 {
			t.Reset(max(next, time.Millisecond))
		}
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// isSoleVoter reports whether this node is the only voter of the latest
// Raft configuration (read without the Raft loop, so a stalled loop
// cannot block the watchdog; a voter being added is already in it).
func (a *Agent) isSoleVoter() bool {
	servers, err := a.raft.Servers()
	if err != nil {
		return false
	}
	voters := 0
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			if string(s.ID) != a.cfg.Name {
				return false
			}
			voters++
		}
	}
	return voters == 1
}

type verifyResult struct {
	asked time.Time
	err   error
}

// verify asks Raft to confirm leadership; the result goes to ch (buffered,
// so this goroutine ends even if nobody reads it any more). It returns
// within fenceBudget (raftfsm.Node.VerifyLeader's own timeout).
func (a *Agent) verify(ch chan<- verifyResult) {
	asked := time.Now()
	err := a.raft.VerifyLeader(fenceBudget)
	ch <- verifyResult{asked: asked, err: err}
}

// stepDown hands Raft leadership to any other voter, in the background
// (the watchdog must not wait on a Raft loop that may be stalled).
func (a *Agent) stepDown(reason string) {
	if !a.guard.steppingDown.CompareAndSwap(false, true) {
		return
	}
	a.log.Error("stepping down as Raft leader", "reason", reason)
	a.spawn(func() {
		defer a.guard.steppingDown.Store(false)
		if err := a.raft.StepDown(5 * time.Second); err != nil {
			a.log.Error("step down", "err", err)
		}
	})
}
