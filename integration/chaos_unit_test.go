//go:build chaos && linux

package integration

import (
	"testing"
	"time"
)

// TestChaosPlanDeterministic: one seed, one fault sequence; every round
// covers every kind.
func TestChaosPlanDeterministic(t *testing.T) {
	a, b, c := newChaosPlan(42), newChaosPlan(42), newChaosPlan(43)
	same := true
	seen := map[chaosKind]int{}
	for i := 0; i < 3*len(chaosKinds); i++ {
		fa, fb, fc := a.next(), b.next(), c.next()
		if fa != fb {
			t.Fatalf("step %d: %+v and %+v from the same seed", i, fa, fb)
		}
		if fa != fc {
			same = false
		}
		seen[fa.Kind]++
		if lo, hi := holdRange(fa.Kind); fa.Hold < lo || fa.Hold > hi {
			t.Errorf("step %d: hold %s outside [%s, %s]", i, fa.Hold, lo, hi)
		}
	}
	if same {
		t.Error("seeds 42 and 43 gave the same sequence")
	}
	for _, k := range chaosKinds {
		if seen[k] != 3 {
			t.Errorf("kind %s drawn %d times in 3 rounds, want 3", k, seen[k])
		}
	}
}

// TestChaosSplitBrainWindows: overlapping accept periods of two nodes
// make a window; a handover with a refused probe in between does not.
func TestChaosSplitBrainWindows(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ok := func(node string, ms int) probeRec {
		return probeRec{Node: node, Start: at(ms), End: at(ms + 5), OK: true, From: at(ms + 1), To: at(ms + 3)}
	}
	no := func(node string, ms int) probeRec { return probeRec{Node: node, Start: at(ms), End: at(ms + 5)} }

	handover := []probeRec{ok("n1", 0), ok("n1", 100), no("n1", 200), no("n1", 300),
		no("n2", 0), no("n2", 100), no("n2", 200), ok("n2", 300), ok("n2", 400)}
	if w := splitBrainWindows(handover, t0); len(w) != 0 {
		t.Errorf("clean handover: %d windows %+v, want none", len(w), w)
	}

	both := []probeRec{ok("n1", 0), ok("n1", 100), ok("n1", 200), ok("n1", 300), no("n1", 400),
		no("n2", 0), ok("n2", 150), ok("n2", 250), no("n2", 350)}
	w := splitBrainWindows(both, t0)
	if len(w) != 1 {
		t.Fatalf("two writable nodes: %d windows %+v, want 1", len(w), w)
	}
	if w[0].Nodes != [2]string{"n1", "n2"} || !w[0].Start.Equal(at(151)) || !w[0].End.Equal(at(253)) {
		t.Errorf("window %+v, want n1+n2 from +151ms to +253ms", w[0])
	}

	// A node that accepts again after a refusal starts a new period.
	again := []probeRec{ok("n1", 0), no("n1", 100), ok("n1", 500),
		ok("n2", 200), no("n2", 300)}
	if w := splitBrainWindows(again, t0); len(w) != 0 {
		t.Errorf("alternating writers without overlap: %+v, want none", w)
	}
}
