package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/internal/testutil"
)

// partProbe is one write attempt against the isolated primary.
type partProbe struct {
	id         int
	start, end time.Time
	ok         bool
	out        string
}

// TestPartitionedPrimary runs a 3-node cluster with one node per network
// namespace, cuts the primary's namespace off the network, and checks what
// the README promises: the isolated primary stops accepting writes within
// its fence budget (0.6-1.6 s; asserted generously at 10 s), the majority
// elects a new primary that accepts writes, and no write is accepted by
// the old primary once the new one accepts writes. After the network
// heals, the old primary rewinds and follows the new timeline.
//
// Needs root and working `ip netns` (it skips otherwise). Run it with:
//
//	cd /work/main && go build -o bin/pgha ./cmd/pgha && \
//	  PGHA_BIN=$PWD/bin/pgha go test -count=1 -v -run TestPartitionedPrimary ./integration/
func TestPartitionedPrimary(t *testing.T) {
	nsRequireNetns(t)
	lab := newNetLab(t, 3)
	nc := newNSCluster(t, lab)
	all := []string{"n1", "n2", "n3"}
	formStart := time.Now()
	nc.StartAll()
	ci := nc.WaitHealthy(3*time.Minute, all...)
	t.Logf("3-node cluster in namespaces formed in %.1fs; primary %s, epoch %d", time.Since(formStart).Seconds(), ci.Primary, ci.Epoch)
	old := nc.Node(ci.Primary)
	epoch0 := ci.Epoch
	ctx := context.Background()

	// A table with some rows, replicated everywhere.
	func() {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		pc, err := pgx.Connect(cctx, nc.DSN(old))
		if err != nil {
			t.Fatalf("connect to primary %s over the bridge: %v", old.Name, err)
		}
		defer pc.Close(context.Background())
		if _, err := pc.Exec(cctx, "CREATE TABLE part (id int PRIMARY KEY, via text, at timestamptz DEFAULT clock_timestamp())"); err != nil {
			t.Fatal(err)
		}
		if _, err := pc.Exec(cctx, "INSERT INTO part (id, via) SELECT g, 'setup' FROM generate_series(1, 100) g"); err != nil {
			t.Fatal(err)
		}
	}()
	for _, n := range all {
		if n == old.Name {
			continue
		}
		nd := nc.Node(n)
		testutil.WaitFor(t, 30*time.Second, "setup rows on "+n, func() error {
			if got := partCount(nc, nd, "via = 'setup'"); got != 100 {
				return fmt.Errorf("%d rows", got)
			}
			return nil
		})
	}
	// The probe path (psql inside the primary's namespace) works.
	if out, err := nc.PsqlInNS(old, "INSERT INTO part (id, via) VALUES (1000, 'probe-check')"); err != nil {
		t.Fatalf("write probe from inside %s's namespace failed before the partition: %v: %s", old.Name, err, out)
	}

	// Probe the primary from inside its namespace every ~100 ms, from
	// shortly before the cut until told to stop (bounded to 60 s).
	var mu sync.Mutex
	var probes []partProbe
	stop := make(chan struct{})
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		deadline := time.Now().Add(60 * time.Second)
		for id := 2000; time.Now().Before(deadline); id++ {
			select {
			case <-stop:
				return
			default:
			}
			p := partProbe{id: id, start: time.Now()}
			out, err := nc.PsqlInNS(old, fmt.Sprintf("INSERT INTO part (id, via) VALUES (%d, 'isolated-probe')", id))
			p.end, p.ok, p.out = time.Now(), err == nil, out
			mu.Lock()
			probes = append(probes, p)
			mu.Unlock()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	stopProbe := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-probeDone
	}
	defer stopProbe()
	time.Sleep(500 * time.Millisecond)

	oldIdx := nc.index[old.Name]
	cutAt := time.Now()
	lab.Isolate(oldIdx)
	healed := false
	defer func() {
		if !healed {
			lab.Heal(oldIdx)
		}
	}()
	t.Logf("cut %s (%s) off the network", old.Name, lab.NS[oldIdx])

	// The majority elects a new primary.
	var newP *Node
	lastView := ""
	testutil.WaitFor(t, 60*time.Second, "a new primary other than "+old.Name, func() error {
		ci, err := nc.Info(old.Name)
		if err != nil {
			return err
		}
		// Log each change of the majority's view, to see where time goes.
		if view := fmt.Sprintf("raft leader %q, primary record %s epoch %d", ci.Leader, ci.Primary, ci.Epoch); view != lastView {
			t.Logf("+%.2fs %s sees %s", time.Since(cutAt).Seconds(), ci.Observer, view)
			lastView = view
		}
		for _, m := range ci.Members {
			if m.Role == "leader" && m.State == "running" && m.Name != old.Name {
				newP = nc.Node(m.Name)
				return nil
			}
		}
		return fmt.Errorf("primary record %s (epoch %d)", ci.Primary, ci.Epoch)
	})
	electedAt := time.Now()
	var newWriteAt time.Time
	testutil.WaitFor(t, 30*time.Second, "a write on the new primary "+newP.Name, func() error {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		conn, err := pgx.Connect(cctx, nc.DSN(newP))
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(cctx, "INSERT INTO part (id, via) VALUES (3000, 'new-primary')"); err != nil {
			return err
		}
		newWriteAt = time.Now()
		return nil
	})

	// The isolated primary must have stopped accepting writes.
	var firstRefused *partProbe
	testutil.WaitFor(t, 15*time.Second, "the isolated primary to refuse writes", func() error {
		mu.Lock()
		defer mu.Unlock()
		for i := range probes {
			if !probes[i].ok && probes[i].start.After(cutAt) {
				p := probes[i]
				firstRefused = &p
				return nil
			}
		}
		return fmt.Errorf("%d probes so far, none refused after the cut", len(probes))
	})
	// Keep probing a little longer: the old primary must stay fenced.
	time.Sleep(3 * time.Second)
	stopProbe()

	mu.Lock()
	var lastAccepted *partProbe
	var ackedAfterCut []int
	for i := range probes {
		p := probes[i]
		if !p.ok {
			continue
		}
		if p.start.After(cutAt) || p.end.After(cutAt) {
			ackedAfterCut = append(ackedAfterCut, p.id)
		}
		if p.start.After(firstRefused.start) {
			t.Errorf("the isolated primary accepted write %d at +%.2fs, after it had refused one at +%.2fs",
				p.id, p.start.Sub(cutAt).Seconds(), firstRefused.start.Sub(cutAt).Seconds())
		}
		if p.start.After(newWriteAt) {
			t.Errorf("split brain: the isolated primary accepted write %d started at +%.2fs, after the new primary %s had accepted one at +%.2fs",
				p.id, p.start.Sub(cutAt).Seconds(), newP.Name, newWriteAt.Sub(cutAt).Seconds())
		}
		lastAccepted = &p
	}
	nProbes := len(probes)
	mu.Unlock()
	fence := firstRefused.start.Sub(cutAt)
	lastOK := "none after the cut"
	if lastAccepted != nil && lastAccepted.end.After(cutAt) {
		lastOK = fmt.Sprintf("+%.2fs", lastAccepted.end.Sub(cutAt).Seconds())
	}
	t.Logf("isolated primary %s: last write acknowledged %s, first write refused at +%.2fs (%q); %d probes",
		old.Name, lastOK, fence.Seconds(), partFirstLine(firstRefused.out), nProbes)
	t.Logf("new primary %s: seen running at +%.2fs, first write at +%.2fs",
		newP.Name, electedAt.Sub(cutAt).Seconds(), newWriteAt.Sub(cutAt).Seconds())
	if fence > 10*time.Second {
		t.Errorf("the isolated primary took %.2fs to stop accepting writes (README: 0.6-1.6 s)", fence.Seconds())
	}
	if ci, err := nc.Info(old.Name); err == nil {
		if ci.Epoch <= epoch0 {
			t.Errorf("epoch %d after failover, was %d", ci.Epoch, epoch0)
		}
		if ci.Timeline < 2 {
			t.Errorf("cluster timeline %d after failover, want >= 2", ci.Timeline)
		}
	}

	// Writes on the new primary while the old one is still cut off.
	func() {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(cctx, nc.DSN(newP))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(cctx, "INSERT INTO part (id, via) SELECT g, 'after' FROM generate_series(3001, 3050) g"); err != nil {
			t.Fatal(err)
		}
		// Writes the isolated primary acknowledged after the cut, before
		// its fence, are not on the new primary unless they replicated
		// first: with asynchronous replication that is the known window.
		if len(ackedAfterCut) > 0 {
			var present int
			if err := conn.QueryRow(cctx, "SELECT count(*) FROM part WHERE id = ANY($1)", ackedAfterCut).Scan(&present); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d writes acknowledged by the isolated primary after the cut; %d of them reached the new primary (asynchronous replication)", len(ackedAfterCut), present)
		}
	}()

	// Heal: the old primary rewinds and follows the new one.
	healAt := time.Now()
	lab.Heal(oldIdx)
	healed = true
	ci = nc.WaitHealthy(3*time.Minute, all...)
	t.Logf("after healing: all three healthy in %.1fs, primary %s, timeline %d", time.Since(healAt).Seconds(), ci.Primary, ci.Timeline)
	if ci.Primary != newP.Name {
		t.Errorf("primary after healing is %s, want %s", ci.Primary, newP.Name)
	}
	for _, m := range ci.Members {
		if m.Name == old.Name {
			if m.Role != "replica" {
				t.Errorf("old primary %s is %s after healing, want replica", m.Name, m.Role)
			}
			if m.Timeline < 2 {
				t.Errorf("old primary %s on timeline %d after healing, want >= 2", m.Name, m.Timeline)
			}
		}
	}
	testutil.WaitFor(t, 30*time.Second, "the new primary's rows on the old primary", func() error {
		if got := partCount(nc, old, "via IN ('after', 'new-primary')"); got != 51 {
			return fmt.Errorf("%d of 51 rows", got)
		}
		return nil
	})
	func() {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		conn, err := pgx.Connect(cctx, nc.DSN(old))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		var rec bool
		if err := conn.QueryRow(cctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || !rec {
			t.Errorf("old primary: pg_is_in_recovery = %v (%v), want true", rec, err)
		}
	}()

	out, stderr, code := cli(t, "history", "-o", "json", "--api", nc.APIAddr(newP))
	if code != 0 {
		t.Fatalf("pgha history: exit %d: %s", code, stderr)
	}
	var hist []api.HistoryEntry
	if err := json.Unmarshal([]byte(out), &hist); err != nil {
		t.Fatalf("decode history %q: %v", out, err)
	}
	found := false
	for _, e := range hist {
		if e.Old == old.Name && e.New == newP.Name && e.Epoch > epoch0 {
			found = true
			down := "?"
			if e.DowntimeSec != nil {
				down = fmt.Sprintf("%.2fs", *e.DowntimeSec)
			}
			t.Logf("history: epoch %d %s -> %s timeline %d reason %q write downtime %s", e.Epoch, e.Old, e.New, e.Timeline, e.Reason, down)
		}
	}
	if !found {
		t.Errorf("history has no entry %s -> %s: %s", old.Name, newP.Name, out)
	}
}

// partCount counts rows of part matching where on nd, over the bridge;
// -1 on error.
func partCount(nc *nsCluster, nd *Node, where string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, nc.DSN(nd))
	if err != nil {
		return -1
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM part WHERE "+where).Scan(&n); err != nil {
		return -1
	}
	return n
}

func partFirstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
