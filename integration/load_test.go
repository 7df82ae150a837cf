package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/internal/supervise"
)

const loadPGBin = "/usr/lib/postgresql/15/bin"

// TestNoFalseFailoverUnderLoad checks that a busy machine does not cause a
// spurious failover: a healthy 3-node cluster on loopback, both cores kept
// busy for 60 s by CPU burners plus a pgbench load against the primary,
// and afterwards the same primary, the same epoch, only the bootstrap
// entry in `pgha history`, and every member healthy.
//
// It takes ~90 s and loads the whole machine, so `make test` skips it.
// Run it alone with:
//
//	cd /work/main && go build -o bin/pgha ./cmd/pgha && \
//	  PGHA_LOAD_TEST=1 PGHA_BIN=$PWD/bin/pgha go test -count=1 -v -timeout 10m \
//	  -run TestNoFalseFailoverUnderLoad ./integration/
func TestNoFalseFailoverUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load test: skipped in -short mode")
	}
	if os.Getenv("PGHA_LOAD_TEST") != "1" {
		t.Skip("load test (~90 s, saturates every core): set PGHA_LOAD_TEST=1 to run it")
	}
	pgbench := loadPGBin + "/pgbench"
	if _, err := os.Stat(pgbench); err != nil {
		t.Skipf("pgbench not found at %s", pgbench)
	}
	c := newCluster(t, 3)
	c.StartAll()
	ci := c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	primary := c.Node(ci.Primary)
	epoch0 := ci.Epoch
	apiAddr := fmt.Sprintf("127.0.0.1:%d", primary.API)
	hist0 := loadHistory(t, apiAddr)
	if len(hist0) != 1 {
		t.Fatalf("history of a fresh cluster has %d entries, want 1 (bootstrap): %+v", len(hist0), hist0)
	}
	t.Logf("cluster healthy: primary %s, epoch %d, bootstrap entry %q", primary.Name, epoch0, hist0[0].Reason)

	// pgbench -i -s 5 on the primary (before the burners: it only
	// prepares the data).
	initStart := time.Now()
	if out, err := loadPgbench(t, primary, 3*time.Minute, "-i", "-s", "5", "-q"); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	t.Logf("pgbench -i -s 5 took %.1fs", time.Since(initStart).Seconds())

	// CPU burners: one more than the cores, so the agents compete for CPU.
	const nBurners = 3
	burners := loadStartBurners(t, nBurners)
	loadStart := time.Now()

	// Watch the cluster every second during the load: record any change
	// of primary or epoch and any member that is not healthy.
	var mu sync.Mutex
	var changes, unhealthy []string
	polls, failedPolls := 0, 0
	stopWatch := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		deadline := time.Now().Add(3 * time.Minute)
		for time.Now().Before(deadline) {
			select {
			case <-stopWatch:
				return
			case <-time.After(time.Second):
			}
			ci, err := c.Info()
			mu.Lock()
			polls++
			if err != nil {
				failedPolls++
				mu.Unlock()
				continue
			}
			at := time.Since(loadStart).Seconds()
			if ci.Primary != primary.Name || ci.Epoch != epoch0 {
				changes = append(changes, fmt.Sprintf("+%.1fs: primary %s epoch %d (raft leader %s)", at, ci.Primary, ci.Epoch, ci.Leader))
			}
			for _, m := range ci.Members {
				ok := (m.Name == primary.Name && m.Role == "leader" && m.State == "running") ||
					(m.Name != primary.Name && m.Role == "replica" && m.State == "streaming")
				if !ok {
					unhealthy = append(unhealthy, fmt.Sprintf("+%.1fs: %s %s/%s raft %s %s%s", at, m.Name, m.Role, m.State, m.Raft, m.Waiting, m.Error))
				}
			}
			mu.Unlock()
		}
	}()

	out, err := loadPgbench(t, primary, 2*time.Minute, "-c", "4", "-j", "2", "-T", "60", "-P", "10")
	loadDur := time.Since(loadStart)
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		t.Logf("load average at the end of the load: %s", strings.TrimSpace(string(la)))
	}
	burners.Close()
	close(stopWatch)
	<-watchDone
	t.Logf("pgbench -c 4 -j 2 -T 60 with %d CPU burners (%.1fs):\n%s", nBurners, loadDur.Seconds(), loadSummary(out))
	if err != nil {
		t.Errorf("pgbench run failed (the primary stopped serving under load?): %v\n%s", err, out)
	}

	mu.Lock()
	t.Logf("%d cluster polls during the load, %d failed", polls, failedPolls)
	for _, s := range unhealthy {
		t.Logf("not healthy during the load: %s", s)
	}
	for _, s := range changes {
		t.Errorf("primary changed during the load: %s", s)
	}
	mu.Unlock()

	ci = c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	if ci.Primary != primary.Name || ci.Epoch != epoch0 {
		t.Errorf("after the load the primary is %s epoch %d, want %s epoch %d (a failover happened)", ci.Primary, ci.Epoch, primary.Name, epoch0)
	}
	hist := loadHistory(t, apiAddr)
	if len(hist) != 1 {
		t.Errorf("history has %d entries after the load, want only the bootstrap entry: %+v", len(hist), hist)
	}
}

// loadPgbench runs pgbench against nd with a bounded time and returns its
// combined output.
func loadPgbench(t *testing.T, nd *Node, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append([]string{"-h", "127.0.0.1", "-p", fmt.Sprint(nd.PG), "-U", "postgres"}, args...)
	full = append(full, "postgres")
	cmd := exec.CommandContext(ctx, loadPGBin+"/pgbench", full...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+superPass, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=5")
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}

// loadSummary keeps pgbench's progress and result lines.
func loadSummary(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "progress:") || strings.HasPrefix(l, "tps") ||
			strings.HasPrefix(l, "latency average") || strings.HasPrefix(l, "number of transactions actually processed") ||
			strings.HasPrefix(l, "number of failed") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// loadStartBurners starts n busy-looping shells, each in its own process
// group. Closing the supervisor it returns kills them by PID; t.Cleanup
// does that too if the test stops early.
func loadStartBurners(t *testing.T, n int) *supervise.Supervisor {
	t.Helper()
	sup := supervise.New(supervise.Options{})
	t.Cleanup(sup.Close)
	for i := 0; i < n; i++ {
		spec := supervise.Spec{Name: fmt.Sprintf("burner%d", i+1), Argv: []string{"sh", "-c", "while :; do :; done"}, OwnGroup: true}
		if _, err := sup.Start(spec); err != nil {
			t.Fatalf("start CPU burner: %v", err)
		}
	}
	return sup
}

func loadHistory(t *testing.T, apiAddr string) []api.HistoryEntry {
	t.Helper()
	out, stderr, code := cli(t, "history", "-o", "json", "--api", apiAddr)
	if code != 0 {
		t.Fatalf("pgha history: exit %d: %s", code, stderr)
	}
	var h []api.HistoryEntry
	if err := json.Unmarshal([]byte(out), &h); err != nil {
		t.Fatalf("decode history %q: %v", out, err)
	}
	return h
}
