package integration

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/internal/testutil"
)

// primaryNode returns the node the cluster records as primary.
func (c *Cluster) primaryNode(t *testing.T) *Node {
	t.Helper()
	ci, err := c.Info()
	if err != nil {
		t.Fatal(err)
	}
	return c.Node(ci.Primary)
}

// waitNewPrimary waits until a member other than old is the running
// primary, and returns it.
func (c *Cluster) waitNewPrimary(t *testing.T, old string, timeout time.Duration) *Node {
	t.Helper()
	var got string
	testutil.WaitFor(t, timeout, "a new primary other than "+old, func() error {
		ci, err := c.Info()
		if err != nil {
			return err
		}
		for _, m := range ci.Members {
			if m.Role == "leader" && m.State == "running" && m.Name != old {
				got = m.Name
				return nil
			}
		}
		return fmt.Errorf("primary record %s", ci.Primary)
	})
	return c.Node(got)
}

// insert writes one row directly on nd's PostgreSQL.
// childPIDs lists the processes whose parent is pid.
func childPIDs(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(stat), ')')
		if f := strings.Fields(string(stat[i+1:])); i > 0 && len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, c)
		}
	}
	return out
}

func insert(ctx context.Context, nd *Node, id int) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, nd.DSN())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "INSERT INTO fo (id) VALUES ($1)", id)
	return err
}

// ackWriter commits rows one by one directly on a node and remembers
// which commits were acknowledged.
type ackWriter struct {
	mu    sync.Mutex
	acked []int
	stop  chan struct{}
	wg    sync.WaitGroup
}

func startAckWriter(ctx context.Context, nd *Node, from int, pause time.Duration) *ackWriter {
	w := &ackWriter{stop: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for i := from; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			if insert(ctx, nd, i) == nil {
				w.mu.Lock()
				w.acked = append(w.acked, i)
				w.mu.Unlock()
			}
			time.Sleep(pause)
		}
	}()
	return w
}

// Stop ends the writer and returns the acknowledged ids.
// WaitAcked waits (bounded) until at least n commits are acknowledged, so
// a test does not depend on how fast a loaded machine commits.
func (w *ackWriter) WaitAcked(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	testutil.WaitFor(t, timeout, fmt.Sprintf("%d acknowledged commits", n), func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		if len(w.acked) < n {
			return fmt.Errorf("%d so far", len(w.acked))
		}
		return nil
	})
}

func (w *ackWriter) Stop() []int {
	close(w.stop)
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked
}

// missingOn counts the ids that are not in table fo on nd.
func missingOn(t *testing.T, nd *Node, ids []int) int {
	t.Helper()
	conn := connect(t, nd)
	var missing int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM unnest($1::int[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM fo WHERE fo.id = a.id)", ids).Scan(&missing); err != nil {
		t.Fatal(err)
	}
	return missing
}

func countRows(t *testing.T, nd *Node) int {
	t.Helper()
	conn := connect(t, nd)
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM fo").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestFailoverScenarios runs the failover issue's scenarios one after the
// other on one 3-node cluster: planned switchover (and a refused one),
// whole-node loss of the primary, a frozen primary, and maintenance mode.
func TestFailoverScenarios(t *testing.T) {
	c := newCluster(t, 3)
	c.StartAll()
	ci := c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	p := c.Node(ci.Primary)
	conn := connect(t, p)
	if _, err := conn.Exec(context.Background(), "CREATE TABLE fo (id int PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())
	nextID := 1
	ctx := context.Background()

	if !t.Run("switchover refused for a lagging candidate", func(t *testing.T) {
		p := c.primaryNode(t)
		var cand *Node
		for _, nd := range c.Nodes {
			if nd != p {
				cand = nd
				break
			}
		}
		// Freeze the candidate's WAL receiver and write 2 MB: it lags
		// beyond maximum_lag_on_failover (1 MB by default).
		rc := connect(t, cand)
		var pid int
		if err := rc.QueryRow(ctx, "SELECT pid FROM pg_stat_wal_receiver").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		defer syscall.Kill(pid, syscall.SIGCONT)
		pc := connect(t, p)
		if _, err := pc.Exec(ctx, "CREATE TABLE filler AS SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 3000) g"); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, 20*time.Second, "the candidate's lag to show", func() error {
			ci, err := c.Info()
			if err != nil {
				return err
			}
			for _, m := range ci.Members {
				if m.Name == cand.Name && m.LagBytes != nil && *m.LagBytes > 1<<20 {
					return nil
				}
			}
			return fmt.Errorf("no lag yet")
		})
		_, stderr, code := cli(t, "switchover", "--api", fmt.Sprintf("127.0.0.1:%d", p.API), "--candidate", cand.Name)
		if code == 0 || !strings.Contains(stderr, "behind") {
			t.Fatalf("switchover to a lagging candidate: exit %d, stderr %q; want a refusal saying it is behind", code, stderr)
		}
		syscall.Kill(pid, syscall.SIGCONT)
		c.WaitHealthy(time.Minute, "n1", "n2", "n3")
		// Let the candidate catch up before the next scenario switches
		// over to it.
		testutil.WaitFor(t, 30*time.Second, "the candidate to catch up", func() error {
			ci, err := c.Info()
			if err != nil {
				return err
			}
			for _, m := range ci.Members {
				if m.Name == cand.Name && (m.LagBytes == nil || *m.LagBytes > 64<<10) {
					return fmt.Errorf("lag %v", m.LagBytes)
				}
			}
			return nil
		})
	}) {
		return
	}

	if !t.Run("switchover to a named candidate", func(t *testing.T) {
		old := c.primaryNode(t)
		var cand *Node
		for _, nd := range c.Nodes {
			if nd != old {
				cand = nd
			}
		}
		// A writer commits rows one by one through the switchover; every
		// acknowledged row must be on the new primary.
		w := startAckWriter(ctx, old, 100000, 5*time.Millisecond)
		time.Sleep(300 * time.Millisecond)
		out, stderr, code := cli(t, "switchover", "--api", fmt.Sprintf("127.0.0.1:%d", old.API), "--candidate", cand.Name)
		acked := w.Stop()
		if code != 0 {
			t.Fatalf("pgha switchover: exit %d: %s %s", code, out, stderr)
		}
		t.Logf("pgha switchover: %s", strings.TrimSpace(out))
		newP := c.waitNewPrimary(t, old.Name, 30*time.Second)
		if newP != cand {
			t.Fatalf("new primary is %s, want %s", newP.Name, cand.Name)
		}
		c.WaitHealthy(time.Minute, "n1", "n2", "n3")
		if len(acked) == 0 {
			t.Fatal("the writer got no acknowledgement at all")
		}
		if missing := missingOn(t, newP, acked); missing != 0 {
			t.Fatalf("%d of %d acknowledged rows missing on the new primary", missing, len(acked))
		}
		out, _, _ = cli(t, "history", "--api", fmt.Sprintf("127.0.0.1:%d", cand.API))
		if !strings.Contains(out, "switchover") {
			t.Errorf("history lacks the switchover:\n%s", out)
		}
		t.Logf("pgha history:\n%s", out)
	}) {
		return
	}

	if !t.Run("whole-node loss of the primary", func(t *testing.T) {
		old := c.primaryNode(t)
		if err := insert(ctx, old, nextID); err != nil {
			t.Fatal(err)
		}
		nextID++
		pm := postmasterPID(old)
		start := time.Now()
		c.Kill(old)
		if pm > 0 {
			_ = syscall.Kill(pm, syscall.SIGKILL)
		}
		newP := c.waitNewPrimary(t, old.Name, 60*time.Second)
		testutil.WaitFor(t, 30*time.Second, "a write on the new primary", func() error { return insert(ctx, newP, nextID) })
		nextID++
		t.Logf("whole-node kill: first write on %s after %.2fs", newP.Name, time.Since(start).Seconds())
		c.Start(old)
		ci := c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
		for _, m := range ci.Members {
			if m.Name == old.Name && m.Timeline < 2 {
				t.Errorf("rejoined node on timeline %d", m.Timeline)
			}
		}
		if n := countRows(t, old); n < nextID-1 {
			t.Errorf("rejoined node has %d rows, want >= %d", n, nextID-1)
		}
	}) {
		return
	}

	if !t.Run("frozen primary is fenced", func(t *testing.T) {
		old := c.primaryNode(t)
		pm := postmasterPID(old)
		agentPID := old.proc.PID()
		syscall.Kill(agentPID, syscall.SIGSTOP)
		syscall.Kill(pm, syscall.SIGSTOP)
		resumed := false
		resume := func() {
			if !resumed {
				syscall.Kill(pm, syscall.SIGCONT)
				syscall.Kill(agentPID, syscall.SIGCONT)
				resumed = true
			}
		}
		defer resume()
		newP := c.waitNewPrimary(t, old.Name, 60*time.Second)
		testutil.WaitFor(t, 30*time.Second, "a write on the new primary", func() error { return insert(ctx, newP, nextID) })
		nextID++
		resume()
		// Right after the freeze ends, a direct write to the old primary
		// must fail: its agent fences it on its first tick.
		var accepted atomic.Int32
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if insert(ctx, old, 900000+int(accepted.Load())) == nil {
				accepted.Add(1)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if n := accepted.Load(); n > 0 {
			t.Errorf("the old primary accepted %d direct writes after it was resumed", n)
		}
		c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	}) {
		return
	}

	if !t.Run("hung PostgreSQL on the primary fails over", func(t *testing.T) {
		// The postmaster and every backend stopped (SIGSTOP to each: the
		// backends call setsid, so the postmaster's process group is the
		// postmaster alone): the processes exist, the agent, Raft and
		// gossip are fine,
		// but nothing answers. Judged by its probe, the primary is shown
		// as unresponsive, fenced after primary_unresponsive_timeout (10 s
		// by default) and handed over.
		old := c.primaryNode(t)
		pm := postmasterPID(old)
		if pm <= 0 {
			t.Fatal("no postmaster pid")
		}
		procs := append([]int{pm}, childPIDs(pm)...)
		start := time.Now()
		for _, p := range procs {
			syscall.Kill(p, syscall.SIGSTOP)
		}
		resume := func() {
			for _, p := range procs {
				syscall.Kill(p, syscall.SIGCONT)
			}
		}
		defer resume()
		var shown time.Duration
		testutil.WaitFor(t, 15*time.Second, old.Name+" listed as unresponsive", func() error {
			ci, err := c.Info()
			if err != nil {
				return err
			}
			for _, m := range ci.Members {
				if m.Name == old.Name && m.State == "unresponsive" {
					shown = time.Since(start)
					return nil
				}
			}
			return fmt.Errorf("not yet: %+v", ci.Members)
		})
		newP := c.waitNewPrimary(t, old.Name, 30*time.Second)
		testutil.WaitFor(t, 30*time.Second, "a write on the new primary", func() error { return insert(ctx, newP, nextID) })
		nextID++
		took := time.Since(start)
		t.Logf("hung primary: listed as unresponsive after %.1fs, a write on %s after %.1fs", shown.Seconds(), newP.Name, took.Seconds())
		// Target about 3 s (measured 2.3-2.9 s); the bound leaves room for
		// a loaded CI machine.
		if shown > 5*time.Second {
			t.Errorf("the hung primary was listed as unresponsive only after %s, want about 3 s (at most 5 s)", shown.Round(100*time.Millisecond))
		}
		if took > 15*time.Second {
			t.Errorf("writes on another node %s after the hang, want <= 15 s", took.Round(100*time.Millisecond))
		}
		// No two writers: the old postmaster was fenced (killed, which a
		// stopped process cannot ignore), not merely left stopped.
		testutil.WaitFor(t, 5*time.Second, "the old postmaster gone", func() error {
			if syscall.Kill(pm, 0) == nil {
				if stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pm)); !strings.Contains(string(stat), ") Z") {
					return fmt.Errorf("postmaster %d still exists", pm)
				}
			}
			return nil
		})
		resume()
		c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	}) {
		return
	}

	if !t.Run("pause: no failover when the primary's postgres dies; manual failover works", func(t *testing.T) {
		p := c.primaryNode(t)
		apiAddr := fmt.Sprintf("127.0.0.1:%d", p.API)
		if _, stderr, code := cli(t, "pause", "--api", apiAddr); code != 0 {
			t.Fatalf("pgha pause: %d %s", code, stderr)
		}
		out, _, _ := cli(t, "list", "--api", apiAddr)
		if !strings.Contains(out, "Maintenance mode") {
			t.Errorf("pgha list does not say the cluster is paused:\n%s", out)
		}
		pm := postmasterPID(p)
		if err := syscall.Kill(pm, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// Give the cluster time it would need for a failover, then check
		// nothing happened.
		time.Sleep(6 * time.Second)
		ci, err := c.Info()
		if err != nil {
			t.Fatal(err)
		}
		if ci.Primary != p.Name {
			t.Fatalf("failover happened in maintenance mode: primary is %s", ci.Primary)
		}
		for _, m := range ci.Members {
			if m.Name == p.Name && m.State == "running" {
				t.Fatalf("postgres was restarted in maintenance mode")
			}
		}
		// The operator fails over by hand while paused.
		var cand *Node
		for _, nd := range c.Nodes {
			if nd != p {
				cand = nd
				break
			}
		}
		out, stderr, code := cli(t, "failover", "--api", apiAddr, "--candidate", cand.Name)
		if code != 0 {
			t.Fatalf("pgha failover while paused: %d %s %s", code, out, stderr)
		}
		t.Logf("pgha failover: %s", strings.TrimSpace(out))
		if newP := c.waitNewPrimary(t, p.Name, time.Minute); newP != cand {
			t.Fatalf("manual failover promoted %s, want %s", newP.Name, cand.Name)
		}
		if _, stderr, code := cli(t, "resume", "--api", apiAddr); code != 0 {
			t.Fatalf("pgha resume: %d %s", code, stderr)
		}
		ci = c.WaitHealthy(time.Minute, "n1", "n2", "n3")
		if ci.Primary != cand.Name {
			t.Errorf("after resume the primary is %s, want %s", ci.Primary, cand.Name)
		}
	}) {
		return
	}

	if !t.Run("scheduled switchover", func(t *testing.T) {
		old := c.primaryNode(t)
		apiAddr := fmt.Sprintf("127.0.0.1:%d", old.API)
		out, stderr, code := cli(t, "switchover", "--api", apiAddr, "--scheduled", "3s")
		if code != 0 {
			t.Fatalf("scheduled switchover: %d %s %s", code, out, stderr)
		}
		out, _, _ = cli(t, "list", "--api", apiAddr)
		if !strings.Contains(out, "Switchover scheduled") {
			t.Errorf("pgha list does not show the scheduled switchover:\n%s", out)
		}
		newP := c.waitNewPrimary(t, old.Name, time.Minute)
		t.Logf("scheduled switchover moved the primary from %s to %s", old.Name, newP.Name)
		c.WaitHealthy(time.Minute, "n1", "n2", "n3")
		ci, _ := c.Info()
		if ci.ScheduledSwitchover != nil {
			t.Errorf("the schedule is still recorded after the switchover: %+v", ci.ScheduledSwitchover)
		}
	}) {
		return
	}

	t.Run("leave on the primary hands the role off first", func(t *testing.T) {
		old := c.primaryNode(t)
		out, stderr, code := cli(t, "leave", "--api", fmt.Sprintf("127.0.0.1:%d", old.API))
		if code != 0 {
			t.Fatalf("pgha leave on the primary: exit %d: %s %s", code, out, stderr)
		}
		c.WaitExit(old, time.Minute)
		var rest []string
		for _, nd := range c.Nodes {
			if nd != old {
				rest = append(rest, nd.Name)
			}
		}
		ci := c.WaitHealthy(time.Minute, rest...)
		if ci.Primary == old.Name {
			t.Fatalf("%s left but is still the recorded primary", old.Name)
		}
		for _, m := range ci.Members {
			if m.Name == old.Name {
				t.Errorf("%s still listed after leaving: %+v", old.Name, m)
			}
		}
		_ = api.ClusterInfo{}
	})
}
