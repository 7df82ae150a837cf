//go:build bench

package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/testutil"
)

// TestBenchIdle measures what the pgha agents of an idle, healthy 3-node
// cluster cost: RSS (VmRSS, sampled every second) and CPU (utime+stime
// from /proc/<pid>/stat over the window) per agent process, PostgreSQL
// not included. IDLE_SECONDS sets the window (default 60).
func TestBenchIdle(t *testing.T) {
	window := 60 * time.Second
	if n, err := strconv.Atoi(os.Getenv("IDLE_SECONDS")); err == nil && n > 0 {
		window = time.Duration(n) * time.Second
	}
	load0 := loadAvg()
	c := newCluster(t, 3)
	quietLogs(t, c)
	c.StartAll()
	c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	time.Sleep(10 * time.Second) // let start-up work (checkpoints, slots) settle
	type agent struct {
		name      string
		pid       int
		cpu0      float64
		rssSum    float64
		rssMax    float64
		rssN      int
		cpuPct    float64
		rssMeanMB float64
	}
	var agents []*agent
	for _, nd := range c.Nodes {
		a := &agent{name: nd.Name, pid: nd.proc.PID()}
		cpu, err := procCPUSeconds(a.pid)
		if err != nil {
			t.Fatal(err)
		}
		a.cpu0 = cpu
		agents = append(agents, a)
	}
	start := time.Now()
	for time.Since(start) < window {
		for _, a := range agents {
			if rss, err := procRSSMB(a.pid); err == nil {
				a.rssSum += rss
				a.rssN++
				a.rssMax = max(a.rssMax, rss)
			}
		}
		time.Sleep(time.Second)
	}
	elapsed := time.Since(start).Seconds()
	c.failIfExited()
	var rss, cpu series
	rss = series{Name: "agent RSS, MB (mean over the window, per agent)", Kind: "rss"}
	cpu = series{Name: "agent CPU, % of one core (per agent)", Kind: "idle-cpu"}
	perAgent := []map[string]any{}
	for _, a := range agents {
		cpu1, err := procCPUSeconds(a.pid)
		if err != nil {
			t.Fatal(err)
		}
		a.cpuPct = (cpu1 - a.cpu0) / elapsed * 100
		a.rssMeanMB = a.rssSum / float64(a.rssN)
		rss.Seconds = append(rss.Seconds, a.rssMeanMB)
		cpu.Seconds = append(cpu.Seconds, a.cpuPct)
		perAgent = append(perAgent, map[string]any{"name": a.name, "pid": a.pid, "rss_mean_mb": a.rssMeanMB, "rss_max_mb": a.rssMax, "cpu_percent": a.cpuPct})
		t.Logf("%s (pid %d): RSS mean %.1f MB, max %.1f MB; CPU %.2f%% of a core", a.name, a.pid, a.rssMeanMB, a.rssMax, a.cpuPct)
	}
	rss.finish()
	cpu.finish()
	writeBench(t, "idle", load0, map[string]any{
		"window_s": elapsed,
		"agents":   perAgent,
		"series":   []series{rss, cpu},
		"method":   "idle healthy 3-node cluster (log_level info), 10 s after it is ready; VmRSS from /proc/<pid>/status every second (MB = 2^20 bytes); CPU = delta of utime+stime in /proc/<pid>/stat over the window; agent process only, PostgreSQL excluded",
	})
}

// procCPUSeconds returns utime+stime of pid in seconds.
func procCPUSeconds(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces: fields after ") ".
	s := string(data)
	i := strings.LastIndex(s, ") ")
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat: %q", pid, s)
	}
	f := strings.Fields(s[i+2:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad /proc/%d/stat: %q", pid, s)
	}
	return (ut + st) / clockTicks(), nil
}

func clockTicks() float64 {
	if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			return v
		}
	}
	return 100
}

// procRSSMB returns VmRSS of pid in MB (2^20 bytes).
func procRSSMB(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// TestBenchClone measures how long a new replica takes to clone a
// primary holding about 1 GB (pgbench -i -s $CLONE_SCALE, default 70) and
// stream: from `pgha join` of a fresh node to the node streaming. Writes
// the seconds per GB of the primary's data directory.
func TestBenchClone(t *testing.T) {
	scale := 70
	if n, err := strconv.Atoi(os.Getenv("CLONE_SCALE")); err == nil && n > 0 {
		scale = n
	}
	load0 := loadAvg()
	c := newCluster(t, 1)
	quietLogs(t, c)
	c.StartAll()
	c.WaitHealthy(2*time.Minute, "n1")
	n1 := c.Node("n1")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// The data goes in paced batches, each flushed to disk (syncfs): one
	// bulk load leaves gigabytes of dirty pages whose writeback stalls the
	// Raft log's fsync for seconds, and the primary fences itself (see
	// the report). pgbench creates the tables and the primary keys; the
	// rows are pgbench's own (aid, bid, abalance 0, filler).
	initStart := time.Now()
	pgbench := func(steps string) {
		cmd := exec.CommandContext(ctx, "/usr/lib/postgresql/15/bin/pgbench", "-i", "-q", "-I", steps, "-s", strconv.Itoa(scale),
			"-h", "127.0.0.1", "-p", strconv.Itoa(n1.PG), "-U", "postgres", "postgres")
		cmd.Env = append(os.Environ(), "PGPASSWORD="+superPass)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("pgbench -i -I %s -s %d: %v\n%s", steps, scale, err, out)
		}
	}
	pgbench("dt")
	pc := connect(t, n1)
	if _, err := pc.Exec(ctx, fmt.Sprintf(`INSERT INTO pgbench_branches (bid, bbalance) SELECT b, 0 FROM generate_series(1, %d) b;
		INSERT INTO pgbench_tellers (tid, bid, tbalance) SELECT t, (t - 1) / 10 + 1, 0 FROM generate_series(1, %d) t`, scale, 10*scale)); err != nil {
		t.Fatal(err)
	}
	const batch = 200000
	for lo := 1; lo <= 100000*scale; lo += batch {
		hi := min(lo+batch-1, 100000*scale)
		if _, err := pc.Exec(ctx, fmt.Sprintf("INSERT INTO pgbench_accounts (aid, bid, abalance, filler) SELECT a, (a - 1) / 100000 + 1, 0, '' FROM generate_series(%d, %d) a", lo, hi)); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.CommandContext(ctx, "sync", "-f", n1.Dir).CombinedOutput(); err != nil {
			t.Fatalf("sync -f: %v %s", err, out)
		}
	}
	pgbench("p")
	if out, err := exec.CommandContext(ctx, "sync", "-f", n1.Dir).CombinedOutput(); err != nil {
		t.Fatalf("sync -f: %v %s", err, out)
	}
	initDur := time.Since(initStart)
	t.Logf("pgbench data for scale %d loaded in %.1fs", scale, initDur.Seconds())
	c.WaitHealthy(time.Minute, "n1")
	if _, err := pc.Exec(ctx, "CHECKPOINT"); err != nil {
		t.Fatal(err)
	}
	var dbBytes int64
	if err := pc.QueryRow(ctx, "SELECT sum(pg_database_size(datname))::bigint FROM pg_database").Scan(&dbBytes); err != nil {
		t.Fatal(err)
	}
	dirBytes, err := dirSize(filepath.Join(n1.Dir, "pgdata"))
	if err != nil {
		t.Fatal(err)
	}
	// pg_basebackup copies the databases (and the WAL written while it
	// runs), not the old segments kept in pg_wal: per GiB of databases.
	gb := float64(dbBytes) / (1 << 30)
	t.Logf("primary: databases %.2f GiB, data directory %.2f GiB", gb, float64(dirBytes)/(1<<30))

	n2 := c.addNode("n2")
	quietLogs(t, c)
	c.Start(n2)
	testutil.WaitFor(t, 30*time.Second, "n2 API up", func() error {
		_, _, err := n2.Client().Health(context.Background())
		return err
	})
	start := time.Now()
	if out, stderr, code := cli(t, "join", "--api", fmt.Sprintf("127.0.0.1:%d", n2.API), fmt.Sprintf("127.0.0.1:%d", n1.Gossip)); code != 0 {
		t.Fatalf("pgha join: exit %d: %s %s", code, out, stderr)
	}
	c.WaitHealthy(15*time.Minute, "n1", "n2")
	took := time.Since(start)
	t.Logf("clone of %.2f GiB: %.1fs from join to streaming, %.1f s/GiB", gb, took.Seconds(), took.Seconds()/gb)
	writeBench(t, "clone", load0, map[string]any{
		"pgbench_scale":        scale,
		"database_bytes":       dbBytes,
		"data_dir_bytes":       dirBytes,
		"seconds":              took.Seconds(),
		"seconds_per_gib":      took.Seconds() / gb,
		"pgbench_init_seconds": initDur.Seconds(),
		"method":               "1-node cluster, pgbench -i, CHECKPOINT; a fresh node runs `pgha join`; time from the join command to the new node streaming (pg_basebackup over loopback, then start and catch-up); GiB = the primary's databases (sum of pg_database_size)",
	})
}

func dirSize(dir string) (int64, error) {
	var total int64
	err := filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if info.Mode().IsRegular() {
			total += info.Size()
		}
		return nil
	})
	return total, err
}
