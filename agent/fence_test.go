package agent

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/testutil"
)

// startFenceLoop runs the watchdog of a on fakes until the test ends.
func startFenceLoop(t *testing.T, a *Agent) *fakeConsensus {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a.spawn(func() { a.fenceLoop(ctx) })
	t.Cleanup(func() { cancel(); a.wg.Wait() })
	return a.raft.(*fakeConsensus)
}

// TestFenceLatchedFollowerSleepsUntilItLeads: a fenced former primary
// that is not leader cannot clear its latch, and must not spin trying;
// once it leads again (the watcher wakes the watchdog) the latch clears.
func TestFenceLatchedFollowerSleepsUntilItLeads(t *testing.T) {
	a := testAgent(newFakeRaft(threeMembers(), []string{"n1", "n2", "n3"}), &fakeGossip{})
	fc := a.raft.(*fakeConsensus)
	fc.leader.Store(false)
	a.guard.fencedAt.Store(time.Now().UnixNano())
	startFenceLoop(t, a)
	notify(a.guard.wake)
	time.Sleep(300 * time.Millisecond)
	if n := a.guard.wakes.Load(); n > 5 {
		t.Fatalf("a latched follower woke %d times in 300 ms", n)
	}
	if !a.guard.latched() {
		t.Fatal("the latch cleared without a confirmation")
	}
	fc.leader.Store(true)
	notify(a.guard.wake) // what watchLeadership does once its Barrier passed
	testutil.WaitUntil(t, 5*time.Second, "the latch to clear once leading", func() bool { return !a.guard.latched() })
}

// TestFenceDeadline: a primary whose followers stop answering its
// heartbeats (a partition) is fenced once its last confirmation is
// fenceBudget old, and not before.
func TestFenceDeadline(t *testing.T) {
	a := testAgent(newFakeRaft(threeMembers(), []string{"n1", "n2", "n3"}), &fakeGossip{})
	fc := a.raft.(*fakeConsensus)
	fc.lease = func() time.Time { return time.Time{} }
	armed := time.Now()
	a.guard.arm()
	startFenceLoop(t, a)
	testutil.WaitUntil(t, 5*time.Second, "the fence", func() bool { return a.guard.fencedAt.Load() != 0 })
	if took := time.Unix(0, a.guard.fencedAt.Load()).Sub(armed); took < fenceBudget {
		t.Fatalf("fenced %s after arming, before the %s budget ran out", took, fenceBudget)
	}
	if a.guard.armed.Load() {
		t.Fatal("still armed after the fence")
	}
}

// TestFenceHealthyPrimaryFewWakeups: a primary whose confirmations
// succeed is never fenced, and the watchdog wakes a few times a second,
// not every tick of a clock.
func TestFenceHealthyPrimaryFewWakeups(t *testing.T) {
	a := testAgent(newFakeRaft(threeMembers(), []string{"n1", "n2", "n3"}), &fakeGossip{})
	a.guard.arm()
	startFenceLoop(t, a)
	time.Sleep(1500 * time.Millisecond)
	if a.guard.fencedAt.Load() != 0 {
		t.Fatal("a healthy primary was fenced")
	}
	if !a.guard.armed.Load() {
		t.Fatal("disarmed")
	}
	// The deadline (about once a second, the lease being renewed by the
	// heartbeats) and a look at Raft's loop every 500 ms with its answer:
	// about 8 in 1.5 s. A ticking clock would be tens, a spin thousands.
	if n := a.guard.wakes.Load(); n > 14 {
		t.Fatalf("%d wake-ups in 1.5 s", n)
	}
}

// setStallLimit shortens raftStallLimit until the test's goroutines are
// gone (cleanups run last-in first-out: this one after the fence loop's).
func setStallLimit(t *testing.T, d time.Duration) {
	old := raftStallLimit
	raftStallLimit = d
	t.Cleanup(func() { raftStallLimit = old })
}

// TestFenceSlowDiskIsNotAFence: a Raft loop that answers slowly (its
// log's fsync behind a bulk load's writeback) while the heartbeats keep
// the lease: no fence, no cut.
func TestFenceSlowDiskIsNotAFence(t *testing.T) {
	setStallLimit(t, 2*time.Second)
	a := testAgent(newFakeRaft(threeMembers(), []string{"n1", "n2", "n3"}), &fakeGossip{})
	fc := a.raft.(*fakeConsensus)
	fc.loop = func(timeout time.Duration) (bool, error) {
		time.Sleep(min(1500*time.Millisecond, timeout))
		return true, nil
	}
	a.guard.arm()
	startFenceLoop(t, a)
	time.Sleep(3500 * time.Millisecond)
	if a.guard.fencedAt.Load() != 0 || fc.Cut() {
		t.Fatalf("a slow but live Raft loop: fenced=%v cut=%v", a.guard.fencedAt.Load() != 0, fc.Cut())
	}
}

// TestFenceStuckRaftLoopCuts: a leader whose Raft main loop does not
// answer (a frozen filesystem) while its heartbeats still flow fences and
// cuts its transport after raftStallLimit, and restores it once the loop
// answers again.
func TestFenceStuckRaftLoopCuts(t *testing.T) {
	setStallLimit(t, 500*time.Millisecond)
	a := testAgent(newFakeRaft(threeMembers(), []string{"n1", "n2", "n3"}), &fakeGossip{})
	fc := a.raft.(*fakeConsensus)
	var stuck atomic.Bool
	stuck.Store(true)
	fc.loop = func(timeout time.Duration) (bool, error) {
		if stuck.Load() {
			time.Sleep(timeout)
			return false, nil
		}
		return true, errors.New("not leader")
	}
	a.guard.arm()
	start := time.Now()
	startFenceLoop(t, a)
	testutil.WaitUntil(t, 5*time.Second, "the transport cut", fc.Cut)
	if took := time.Since(start); took < raftStallLimit {
		t.Fatalf("cut after %s, before the %s limit", took, raftStallLimit)
	}
	if a.guard.fencedAt.Load() == 0 {
		t.Fatal("cut without fencing PostgreSQL first")
	}
	stuck.Store(false)
	testutil.WaitUntil(t, 5*time.Second, "the transport restored", func() bool { return !fc.Cut() })
}

// TestDoWhenTheLoopIsGone: a job nobody will take fails at once instead
// of waiting out its caller; a job started from the loop runs inline.
func TestDoWhenTheLoopIsGone(t *testing.T) {
	a := testAgent(newFakeRaft(threeMembers(), []string{"n1"}), &fakeGossip{})
	ran := false
	onLoop := context.WithValue(context.Background(), onLoopKey{}, true)
	if err := a.loop.do(onLoop, func(context.Context) error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("a job from the loop: ran %v, %v", ran, err)
	}
	close(a.loop.stopped)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	err := a.loop.do(ctx, func(context.Context) error { t.Error("a job ran on a stopped loop"); return nil })
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("do on a stopped loop: %v after %s", err, time.Since(start))
	}
}

// TestSilentFor: the watchdog judges only a primary that has answered
// since it was armed (a start or a promotion in progress has its own
// bounds), and nothing in maintenance mode (limit 0).
func TestSilentFor(t *testing.T) {
	var w watchdog
	w.silentLimit.Store(int64(10 * time.Second))
	w.arm()
	now := time.Now()
	if d := w.silentFor(now.Add(time.Minute)); d != 0 {
		t.Fatalf("armed, never answered (starting): silent %v, want not judged", d)
	}
	w.answeredAt.Store(now.UnixNano())
	if d := w.silentFor(now.Add(14 * time.Second)); d != 0 {
		t.Fatalf("14 s after the last answer: %v, want within the limit + slack", d)
	}
	if d := w.silentFor(now.Add(16 * time.Second)); d == 0 {
		t.Fatal("16 s after the last answer: not judged silent")
	}
	w.silentLimit.Store(0)
	if d := w.silentFor(now.Add(time.Hour)); d != 0 {
		t.Fatalf("maintenance mode: %v, want nothing", d)
	}
}
