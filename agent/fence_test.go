package agent

import (
	"context"
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

// TestFenceDeadline: a primary whose confirmations stall (a Raft loop
// stuck on its disk) is fenced once its last confirmation is fenceBudget
// old, and not before.
func TestFenceDeadline(t *testing.T) {
	a := testAgent(newFakeRaft(threeMembers(), []string{"n1", "n2", "n3"}), &fakeGossip{})
	fc := a.raft.(*fakeConsensus)
	stall := make(chan struct{})
	defer close(stall)
	fc.verify = func(timeout time.Duration) error {
		select {
		case <-stall:
		case <-time.After(timeout):
		}
		return context.DeadlineExceeded
	}
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
	// An ask and its answer every verifyEvery: about 12 in 1.5 s. A
	// ticking clock would be 15 more, a spin thousands.
	if n := a.guard.wakes.Load(); n > 25 {
		t.Fatalf("%d wake-ups in 1.5 s", n)
	}
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
