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
//   - The primary's leadership counts as confirmed at time T when a
//     quorum of voters (this node included) answered Raft heartbeats that
//     were sent at or after T (raftfsm.Node.LeaseSince): such a follower
//     votes for nobody else for a heartbeat timeout after it heard us.
//     The heartbeats flow about ten times a heartbeat timeout whatever
//     Raft's main loop does, so neither a confirmation round trip of its
//     own nor the log's fsync is waited for: a slow disk under a bulk load
//     cannot make a healthy primary fence itself. A confirmation counts
//     from the moment the heartbeat was sent, not when the answer
//     arrived, so a slow or resumed process never stretches it. When no
//     confirmation is newer than fenceBudget, or Raft says it lost
//     leadership, the watchdog fences: SIGQUIT to the postmaster and each
//     backend, SIGKILL after fenceGrace.
//   - A new leader is elected no sooner than heartbeat_timeout after a
//     quorum last heard the old one (followers refuse votes while they
//     know a leader), so the old primary's last confirmation V is at most
//     the election time E minus heartbeat_timeout, and the old primary
//     has stopped by V + fenceBudget + fenceSlack + fenceGrace
//     (fenceSlack: the timer's and the scheduler's lateness).
//   - The new leader therefore promotes no sooner than E + fenceBudget +
//     fenceSlack + fenceGrace + fenceMargin - heartbeat_timeout (0.5 s
//     with the defaults). Nothing the network says can shorten that wait: a
//     refused connection looks the same from a dead node and from behind a
//     rejecting firewall.
//   - Raft's main loop is watched separately: the leader asks it to
//     confirm leadership every loopPingEvery while it guards a primary.
//     A loop that has not answered for raftStallLimit is stuck (a frozen
//     filesystem: it waits on the log's fsync, forever, while the
//     heartbeats go on and no follower elects anyone): the node fences
//     and cuts its Raft transport, so its followers stop hearing from it
//     and elect; once the loop answers again the transport is restored
//     and Raft finds itself superseded. raftStallLimit is above the
//     fsync stalls a bulk load caused here (2-3 s); a longer stall
//     costs a failover, as a hang would.
const (
	fenceSlack  = 100 * time.Millisecond
	fenceBudget = 1000 * time.Millisecond
	fenceGrace  = 150 * time.Millisecond
	fenceMargin = 250 * time.Millisecond
	// verifyEvery is how often a fenced leader rereads its lease to clear
	// the latch (the heartbeats renew it ten times a second).
	verifyEvery   = 250 * time.Millisecond
	loopPingEvery = 500 * time.Millisecond
)

// raftStallLimit: see above (a variable so that tests can shorten it).
var raftStallLimit = 4 * time.Second

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
	// answeredAt is when the local PostgreSQL last answered the HA loop's
	// probe (or was armed); silentLimit is primary_unresponsive_timeout.
	// A primary silent for longer than that plus silentSlack is fenced by
	// the watchdog even if the HA loop itself is stuck (the probe's own
	// staleness counts).
	answeredAt  atomic.Int64  // unix ns
	armedAt     atomic.Int64  // unix ns: when armed last went from false to true
	silentLimit atomic.Int64  // ns; 0 (maintenance mode) turns the check off
	lost        chan struct{} // poked when Raft leadership is lost
	wake        chan struct{} // poked when armed or latched: the loop wakes
}

func (w *watchdog) latched() bool { return w.fencedAt.Load() > w.confirmedAt.Load() }

// arm makes the watchdog guard a primary from now on.
func (w *watchdog) arm() {
	if w.armed.CompareAndSwap(false, true) {
		w.armedAt.Store(time.Now().UnixNano())
	}
	notify(w.wake)
}

// silentSlack: the watchdog's staleness check leaves the HA loop (which
// fences a silent primary after primary_unresponsive_timeout) this much
// more, so it only acts when the loop itself is stuck.
const silentSlack = 5 * time.Second

// silentFor returns how long PostgreSQL has gone without answering when
// that exceeds the watchdog's limit, else 0.
func (w *watchdog) silentFor(now time.Time) time.Duration {
	limit := time.Duration(w.silentLimit.Load())
	answered := w.answeredAt.Load()
	// Only a primary that has answered since it was armed is judged here:
	// a start (crash recovery) or a promotion in progress blocks the HA
	// loop legitimately, and has its own bounds (start and promote
	// timeouts, primary_start_timeout).
	if limit <= 0 || answered < w.armedAt.Load() {
		return 0
	}
	if d := now.Sub(time.Unix(0, answered)); d > limit+silentSlack {
		return d
	}
	return 0
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
// fenceBudget, or PostgreSQL is fenced. It sleeps until the deadline of
// the last confirmation (or its next look at Raft's main loop), so a
// process resumed after a freeze (SIGSTOP, a VM pause) finds its
// deadline passed and fences at once. A leader whose confirmations fail
// while Raft still calls it leader hands leadership away; one whose Raft
// main loop is stuck cuts its transport (see the timing above). It
// sleeps for good while there is nothing to guard and no latch it can
// clear (only a leader can): an idle replica, or a fenced former primary,
// costs nothing here; a primary about two wake-ups a second.
func (a *Agent) fenceLoop(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	active := false
	lastOK := time.Now()
	var pinging chan pingResult
	var lastPing, lastLook time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.guard.lost:
		case <-a.guard.wake:
		case <-t.C:
		case r := <-pinging:
			pinging = nil
			a.loopAnswered(r)
		}
		a.guard.wakes.Add(1)
		now := time.Now()
		if lease := a.raft.LeaseSince(); !lease.IsZero() {
			// Never backwards: the budget may have restarted (armed anew)
			// after these heartbeats were sent.
			lastOK = later(lastOK, lease)
			if lease.UnixNano() > a.guard.confirmedAt.Load() {
				a.guard.confirmedAt.Store(lease.UnixNano())
			}
		}
		lastLook = now
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
			// node can supersede.
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
		case a.guard.silentFor(now) > 0:
			// Yield too: the agent's API still answers, and a new leader
			// must not hand the role back to a node whose loop is stuck.
			a.status.update(func(s *NodeStatus) { s.Yield = true })
			a.mustFence(fmt.Sprintf("PostgreSQL has not answered the HA loop's probe for %s (a stuck loop or a hung server)", a.guard.silentFor(now).Round(time.Second)))
			a.stepDown("PostgreSQL does not answer")
			a.poke()
		}
		guarding, latched = a.guard.armed.Load(), a.guard.latched()
		// Watch Raft's main loop while leading a primary (or cut: until
		// the loop answers again).
		watchLoop := a.raft.Cut() || (a.raft.IsLeader() && guarding)
		if pinging == nil && watchLoop && now.Sub(lastPing) >= loopPingEvery {
			lastPing = now
			ch := make(chan pingResult, 1)
			pinging = ch
			a.spawn(func() { a.pingLoop(ch) })
		}
		t.Stop()
		next := time.Duration(-1)
		if guarding {
			next = lastOK.Add(fenceBudget + time.Millisecond).Sub(now) // the deadline
		}
		if latched && a.raft.IsLeader() {
			// Clear the latch as soon as the lease is renewed.
			if d := lastLook.Add(verifyEvery).Sub(now); next < 0 || d < next {
				next = d
			}
		}
		if pinging == nil && watchLoop {
			if d := lastPing.Add(loopPingEvery).Sub(now); next < 0 || d < next {
				next = d
			}
		}
		if next >= 0 {
			t.Reset(max(next, time.Millisecond))
		}
	}
}

type pingResult struct {
	asked    time.Time
	answered bool
	err      error
}

// pingLoop asks Raft's main loop to confirm leadership, giving it
// raftStallLimit; the result goes to ch (buffered, so this goroutine ends
// even if nobody reads it any more).
func (a *Agent) pingLoop(ch chan<- pingResult) {
	asked := time.Now()
	answered, err := a.raft.LoopAnswers(raftStallLimit)
	ch <- pingResult{asked: asked, answered: answered, err: err}
}

// loopAnswered acts on a look at Raft's main loop: a loop that did not
// answer within raftStallLimit is stuck, so this node fences and cuts
// its transport; one that answers again gets it back.
func (a *Agent) loopAnswered(r pingResult) {
	switch {
	case !r.answered && !a.raft.Cut():
		// Cut first: the fence may wait on processes stuck on the same
		// hung disk, and the followers must stop hearing from us now.
		// Yield too, so the new leader does not hand the role back.
		a.log.Error("cutting this node's Raft transport so that the other members elect a new leader: its Raft loop is stuck",
			"stuck_for", time.Since(r.asked).Round(time.Millisecond))
		a.raft.SetCut(true)
		a.status.update(func(s *NodeStatus) { s.Yield = true })
		a.mustFence(fmt.Sprintf("Raft's main loop has not answered for %s (a hung disk?)", raftStallLimit))
		a.poke()
	case r.answered && a.raft.Cut():
		a.log.Warn("Raft's main loop answers again; restoring this node's Raft transport", "answer", errString(r.err))
		a.raft.SetCut(false)
		// No longer a reason to yield: if nobody took over meanwhile (no
		// candidate), the record holder must be able to lead again.
		a.status.update(func(s *NodeStatus) { s.Yield = false })
		a.poke()
	}
}

func errString(err error) string {
	if err == nil {
		return "leader"
	}
	return err.Error()
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
