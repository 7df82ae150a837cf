//go:build bench

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// The failover benchmarks: run with `make bench-failover`. They measure,
// with default settings, on a 3-node cluster on loopback:
//   (a) whole-node loss of the primary (SIGKILL of its agent and
//       postmaster) -> first successful write on the new primary;
//   (b) planned switchover -> write gap seen by a client;
//   (c) PostgreSQL-only crash of the primary -> first successful write.
// A client probe opens a new connection every 50 ms with a libpq
// multi-host URL and target_session_attrs=read-write (so it finds the
// primary by itself) and inserts one row.

type probe struct {
	dsn string
}

func (c *Cluster) multiHostDSN() string {
	var hosts []string
	for _, nd := range c.Nodes {
		hosts = append(hosts, fmt.Sprintf("127.0.0.1:%d", nd.PG))
	}
	return fmt.Sprintf("postgres://postgres:%s@%s/postgres?target_session_attrs=read-write&connect_timeout=1&sslmode=disable", superPass, strings.Join(hosts, ","))
}

func (p probe) write(id int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "INSERT INTO probe (id) VALUES ($1)", id)
	return err
}

// untilWrite probes every 50 ms from start until a write succeeds and
// returns the elapsed time and the failed attempts.
func (p probe) untilWrite(t *testing.T, start time.Time, id *int, timeout time.Duration) (time.Duration, int) {
	t.Helper()
	failed := 0
	for time.Since(start) < timeout {
		*id++
		if p.write(*id) == nil {
			return time.Since(start), failed
		}
		failed++
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no successful write within %s", timeout)
	return 0, failed
}

type series struct {
	Name    string    `json:"name"`
	Seconds []float64 `json:"seconds"`
	Failed  []int     `json:"failed_attempts"`
	Min     float64   `json:"min"`
	Median  float64   `json:"median"`
	Max     float64   `json:"max"`
}

func (s *series) add(d time.Duration, failed int) {
	s.Seconds = append(s.Seconds, d.Seconds())
	s.Failed = append(s.Failed, failed)
}

func (s *series) finish() {
	v := append([]float64(nil), s.Seconds...)
	sort.Float64s(v)
	if len(v) == 0 {
		return
	}
	s.Min, s.Max = v[0], v[len(v)-1]
	if len(v)%2 == 1 {
		s.Median = v[len(v)/2]
	} else {
		s.Median = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
}

func benchRuns() int {
	if n, err := strconv.Atoi(os.Getenv("RUNS")); err == nil && n > 0 {
		return n
	}
	return 5
}

func TestBenchFailover(t *testing.T) {
	runs := benchRuns()
	c := newCluster(t, 3)
	c.StartAll()
	c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	pc := connect(t, c.primaryNode(t))
	if _, err := pc.Exec(context.Background(), "CREATE TABLE probe (id int PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
		t.Fatal(err)
	}
	p := probe{dsn: c.multiHostDSN()}
	id := 0
	kill := series{Name: "whole-node SIGKILL of the primary -> first write"}
	sw := series{Name: "switchover -> write gap"}
	crash := series{Name: "PostgreSQL-only crash of the primary -> first write"}

	for i := 0; i < runs; i++ {
		old := c.primaryNode(t)
		pm := postmasterPID(old)
		start := time.Now()
		c.Kill(old)
		_ = syscall.Kill(pm, syscall.SIGKILL)
		d, failed := p.untilWrite(t, start, &id, time.Minute)
		kill.add(d, failed)
		t.Logf("kill %d: %.2fs, %d failed attempts", i+1, d.Seconds(), failed)
		c.Start(old)
		c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	}
	for i := 0; i < runs; i++ {
		old := c.primaryNode(t)
		// The client writes continuously; the gap is the longest run of
		// failures around the switchover.
		stop := make(chan struct{})
		gapCh := make(chan [2]float64, 1)
		go func() {
			var lastOK time.Time = time.Now()
			var gap time.Duration
			fails := 0
			for {
				select {
				case <-stop:
					gapCh <- [2]float64{gap.Seconds(), float64(fails)}
					return
				default:
				}
				id++
				if p.write(id) == nil {
					if g := time.Since(lastOK); g > gap {
						gap = g
					}
					lastOK = time.Now()
				} else {
					fails++
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
		time.Sleep(500 * time.Millisecond)
		_, stderr, code := cli(t, "switchover", "--api", fmt.Sprintf("127.0.0.1:%d", old.API))
		time.Sleep(1500 * time.Millisecond)
		close(stop)
		g := <-gapCh
		if code != 0 {
			t.Fatalf("switchover: %s", stderr)
		}
		sw.add(time.Duration(g[0]*float64(time.Second)), int(g[1]))
		t.Logf("switchover %d: gap %.2fs, %d failed attempts", i+1, g[0], int(g[1]))
		c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	}
	for i := 0; i < runs; i++ {
		old := c.primaryNode(t)
		start := time.Now()
		_ = syscall.Kill(postmasterPID(old), syscall.SIGKILL)
		d, failed := p.untilWrite(t, start, &id, time.Minute)
		crash.add(d, failed)
		t.Logf("postgres crash %d: %.2fs, %d failed attempts", i+1, d.Seconds(), failed)
		c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	}
	for _, s := range []*series{&kill, &sw, &crash} {
		s.finish()
	}
	writeBench(t, "failover", map[string]any{"series": []series{kill, sw, crash}, "runs": runs})
}

// writeBench stores results under bench/results with the machine described.
func writeBench(t *testing.T, name string, data map[string]any) {
	t.Helper()
	host, _ := os.Hostname()
	pgver, _ := exec.Command("/usr/lib/postgresql/15/bin/postgres", "--version").Output()
	data["machine"] = map[string]any{"cpus": runtime.NumCPU(), "go": runtime.Version(), "postgres": strings.TrimSpace(string(pgver)), "host": host}
	data["date"] = time.Now().UTC().Format(time.RFC3339)
	data["settings"] = "defaults: raft heartbeat_timeout 1s, election_timeout 1s, leader_lease_timeout 500ms; HA loop 1s"
	dir := filepath.Join("..", "bench", "results")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, fmt.Sprintf("%s-%s-%s.json", time.Now().UTC().Format("20060102"), host, name))
	b, _ := json.MarshalIndent(data, "", "  ")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("results written to %s:\n%s", path, b)
}
