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
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Shared pieces of the benchmarks (`-tags bench`): a write probe that
// records every attempt, per-100 ms timelines, series statistics, and the
// result file with the machine described.

// probe is one way of reaching the primary for writes.
type probe struct {
	name string // "proxy" or "direct"
	dsn  string
}

// proxyDSN reaches the primary through the pgha write ports of every
// node (a libpq multi-host URL: a dead node's port refuses at once and
// the next one is tried), as an application behind HAProxy would.
func (c *Cluster) proxyDSN() string {
	var hosts []string
	for _, nd := range c.Nodes {
		hosts = append(hosts, fmt.Sprintf("127.0.0.1:%d", nd.Write))
	}
	return fmt.Sprintf("postgres://postgres:%s@%s/postgres?connect_timeout=1&sslmode=disable", superPass, strings.Join(hosts, ","))
}

// multiHostDSN reaches the primary's PostgreSQL directly: libpq
// multi-host with target_session_attrs=read-write finds it by itself.
func (c *Cluster) multiHostDSN() string {
	var hosts []string
	for _, nd := range c.Nodes {
		hosts = append(hosts, fmt.Sprintf("127.0.0.1:%d", nd.PG))
	}
	return fmt.Sprintf("postgres://postgres:%s@%s/postgres?target_session_attrs=read-write&connect_timeout=1&sslmode=disable", superPass, strings.Join(hosts, ","))
}

// quietLogs switches the agents of c from the tests' debug logging to
// the default level (info) before they start: benchmarks measure what a
// deployment runs.
func quietLogs(t *testing.T, c *Cluster) {
	t.Helper()
	for _, nd := range c.Nodes {
		data, err := os.ReadFile(nd.ConfigPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(nd.ConfigPath, []byte(strings.Replace(string(data), "log_level: debug\n", "log_level: info\n", 1)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// write opens a new connection and inserts one row, all within 1 s.
func (p probe) write(id int64) error {
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

// attempt is one probe write: when it started and completed, and whether
// it succeeded.
type attempt struct {
	start, at time.Time
	ok        bool
}

// writer runs a probe in a loop (one attempt, then a pause) and records
// every attempt until stopped.
type writer struct {
	p        probe
	mu       sync.Mutex
	attempts []attempt
	stop     chan struct{}
	done     chan struct{}
}

var probeIDs atomic.Int64

func startWriter(p probe, pause time.Duration) *writer {
	w := &writer{p: p, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			begin := time.Now()
			err := p.write(probeIDs.Add(1))
			w.mu.Lock()
			w.attempts = append(w.attempts, attempt{start: begin, at: time.Now(), ok: err == nil})
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-time.After(pause):
			}
		}
	}()
	return w
}

// okAfter reports whether an attempt that started after t succeeded.
func (w *writer) okAfter(t time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, a := range w.attempts {
		if a.ok && a.start.After(t) {
			return true
		}
	}
	return false
}

func (w *writer) finish() []attempt {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]attempt(nil), w.attempts...)
}

// recovery returns the time from t0 (the fault begins) to the completion
// of the first successful attempt that started after done (the fault is
// complete: an attempt in flight may still have reached the old primary),
// and the failed attempts that completed after t0 before it.
func recovery(as []attempt, t0, done time.Time) (time.Duration, int, bool) {
	failed := 0
	for _, a := range as {
		if !a.at.After(t0) {
			continue
		}
		if a.ok && a.start.After(done) {
			return a.at.Sub(t0), failed, true
		}
		if !a.ok {
			failed++
		}
	}
	return 0, failed, false
}

// writeGap returns the longest time between two successive successful
// attempts that ends after t0, and the failed attempts after t0.
func writeGap(as []attempt, t0 time.Time) (time.Duration, int) {
	var gap time.Duration
	var lastOK time.Time
	failed := 0
	for _, a := range as {
		if a.at.After(t0) && !a.ok {
			failed++
		}
		if !a.ok {
			continue
		}
		if !lastOK.IsZero() && a.at.After(t0) {
			if g := a.at.Sub(lastOK); g > gap {
				gap = g
			}
		}
		lastOK = a.at
	}
	return gap, failed
}

// timeline counts successful and failed attempts per 100 ms bucket,
// relative to t0 (the fault), by completion time.
type timeline struct {
	Run      int   `json:"run"`
	BucketMS int   `json:"bucket_ms"`
	StartMS  int   `json:"start_ms"` // offset of the first bucket from the fault
	OK       []int `json:"ok"`
	Failed   []int `json:"failed"`
}

func makeTimeline(run int, as []attempt, t0 time.Time, from time.Duration) timeline {
	const bucket = 100 * time.Millisecond
	tl := timeline{Run: run, BucketMS: int(bucket / time.Millisecond), StartMS: int(from / time.Millisecond)}
	for _, a := range as {
		off := a.at.Sub(t0) - from
		if off < 0 {
			continue
		}
		i := int(off / bucket)
		for len(tl.OK) <= i {
			tl.OK = append(tl.OK, 0)
			tl.Failed = append(tl.Failed, 0)
		}
		if a.ok {
			tl.OK[i]++
		} else {
			tl.Failed[i]++
		}
	}
	return tl
}

// series is one measured figure over runs.
type series struct {
	Name    string    `json:"name"`
	Kind    string    `json:"kind"`            // kill, switchover, pg-crash, rejoin...
	Probe   string    `json:"probe,omitempty"` // proxy or direct
	Seconds []float64 `json:"seconds"`
	Failed  []int     `json:"failed_attempts,omitempty"`
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
	return 10
}

// loadAvg is /proc/loadavg's first three fields: the other work on the
// machine while a benchmark ran.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// machine describes the host for the result file.
func machine() map[string]any {
	m := map[string]any{"cpus": runtime.NumCPU(), "go": runtime.Version()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m["cpu_model"] = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
				if kb, err := strconv.ParseFloat(f[1], 64); err == nil {
					m["mem_gib"] = float64(int(kb/1024/1024*10+0.5)) / 10
				}
			}
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(data))
	}
	if pgver, err := exec.Command("/usr/lib/postgresql/15/bin/postgres", "--version").Output(); err == nil {
		m["postgres"] = strings.TrimSpace(string(pgver))
	}
	if v, err := exec.Command(pghaBin, "--version").Output(); err == nil {
		m["pgha"] = strings.TrimSpace(string(v))
	}
	host, _ := os.Hostname()
	m["host"] = host
	return m
}

// writeBench stores results under bench/results/<date>-<host>-<name>.json
// ($BENCH_RESULTS_DIR instead of bench/results when set) with the machine and its load at the start (loadStart) and the end.
func writeBench(t *testing.T, name, loadStart string, data map[string]any) {
	t.Helper()
	host, _ := os.Hostname()
	data["benchmark"] = name
	data["machine"] = machine()
	data["load"] = map[string]string{"start": loadStart, "end": loadAvg(), "note": "1/5/15-minute load averages (/proc/loadavg): other work shares the cores"}
	data["date"] = time.Now().UTC().Format(time.RFC3339)
	if _, ok := data["settings"]; !ok {
		data["settings"] = "pgha defaults: raft heartbeat_timeout 1s, election_timeout 1s, leader_lease_timeout 500ms; HA loop 1s"
	}
	dir := os.Getenv("BENCH_RESULTS_DIR")
	if dir == "" {
		dir = filepath.Join("..", "bench", "results")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, fmt.Sprintf("%s-%s-%s.json", time.Now().UTC().Format("20060102"), host, name))
	b, err := json.MarshalIndent(data, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("results written to %s", path)
}
