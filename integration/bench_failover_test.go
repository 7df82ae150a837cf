//go:build bench

package integration

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/testutil"
)

// The failover benchmarks: run with `make bench-failover` (RUNS=N runs
// per scenario, default 10). They measure, with default settings, on a
// 3-node cluster on loopback:
//   (a) whole-node loss of the primary (SIGKILL of its agent and
//       postmaster) -> first successful write on the new primary, and the
//       killed node's time back to streaming after its restart;
//   (b) planned switchover -> longest gap between successful writes;
//   (c) PostgreSQL-only crash of the primary -> first successful write.
// Two probes write at the same time, each opening a new connection per
// attempt and inserting one row (1 s limit), pausing 50 ms between
// attempts (20 ms around a switchover):
//   proxy:  through the pgha write ports of all nodes (libpq multi-host),
//           as applications behind HAProxy would (the Patroni comparison);
//   direct: to PostgreSQL with a libpq multi-host URL and
//           target_session_attrs=read-write.
// Every attempt is recorded; the result file keeps per-run timelines of
// successful and failed writes per 100 ms for the plots.

const (
	probePause      = 50 * time.Millisecond
	switchoverPause = 20 * time.Millisecond
	timelineBefore  = time.Second
)

func TestBenchFailover(t *testing.T) {
	runs := benchRuns()
	load0 := loadAvg()
	c := newCluster(t, 3)
	quietLogs(t, c)
	c.StartAll()
	c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	pc := connect(t, c.primaryNode(t))
	if _, err := pc.Exec(context.Background(), "CREATE TABLE probe (id bigint PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
		t.Fatal(err)
	}
	probes := []probe{{name: "proxy", dsn: c.proxyDSN()}, {name: "direct", dsn: c.multiHostDSN()}}
	newSeries := func(kind, what string) map[string]*series {
		m := map[string]*series{}
		for _, p := range probes {
			m[p.name] = &series{Name: what + " (" + p.name + " probe)", Kind: kind, Probe: p.name}
		}
		return m
	}
	kill := newSeries("kill", "whole-node SIGKILL of the primary -> first write, s")
	sw := newSeries("switchover", "switchover -> longest write gap, s")
	crash := newSeries("pg-crash", "PostgreSQL-only crash of the primary -> first write, s")
	rejoin := &series{Name: "killed node restarted -> streaming again, s", Kind: "rejoin"}
	timelines := map[string]map[string][]timeline{}
	addTimeline := func(kind, probe string, tl timeline) {
		if timelines[kind] == nil {
			timelines[kind] = map[string][]timeline{}
		}
		timelines[kind][probe] = append(timelines[kind][probe], tl)
	}

	// fault runs the probes, applies the fault at t0, waits for both
	// probes to write again (plus 1 s of steady state) and records.
	fault := func(kind string, run int, into map[string]*series, do func()) {
		ws := make([]*writer, len(probes))
		for i, p := range probes {
			ws[i] = startWriter(p, probePause)
		}
		time.Sleep(timelineBefore)
		t0 := time.Now()
		do()
		done := time.Now()
		testutil.WaitFor(t, 90*time.Second, kind+": writes on the new primary", func() error {
			for i, w := range ws {
				if !w.okAfter(done) {
					return fmt.Errorf("%s probe not writing yet", probes[i].name)
				}
			}
			return nil
		})
		time.Sleep(time.Second)
		for i, w := range ws {
			as := w.finish()
			d, failed, _ := recovery(as, t0, done)
			into[probes[i].name].add(d, failed)
			addTimeline(kind, probes[i].name, makeTimeline(run, as, t0, -timelineBefore))
			t.Logf("%s %d (%s probe): %.2fs, %d failed attempts", kind, run, probes[i].name, d.Seconds(), failed)
		}
	}

	for i := 1; i <= runs; i++ {
		old := c.primaryNode(t)
		pm := postmasterPID(old)
		fault("kill", i, kill, func() {
			c.Kill(old)
			_ = syscall.Kill(pm, syscall.SIGKILL)
		})
		start := time.Now()
		c.Start(old)
		c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
		rejoin.add(time.Since(start), 0)
		t.Logf("rejoin %d: %.2fs", i, time.Since(start).Seconds())
	}
	for i := 1; i <= runs; i++ {
		old := c.primaryNode(t)
		ws := make([]*writer, len(probes))
		for j, p := range probes {
			ws[j] = startWriter(p, switchoverPause)
		}
		time.Sleep(timelineBefore)
		t0 := time.Now()
		_, stderr, code := cli(t, "switchover", "--api", fmt.Sprintf("127.0.0.1:%d", old.API))
		time.Sleep(1500 * time.Millisecond)
		results := make([][]attempt, len(ws))
		for j, w := range ws {
			results[j] = w.finish()
		}
		if code != 0 {
			t.Fatalf("switchover: %s", stderr)
		}
		for j, as := range results {
			gap, failed := writeGap(as, t0)
			sw[probes[j].name].add(gap, failed)
			addTimeline("switchover", probes[j].name, makeTimeline(i, as, t0, -timelineBefore))
			t.Logf("switchover %d (%s probe): gap %.2fs, %d failed attempts", i, probes[j].name, gap.Seconds(), failed)
		}
		c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	}
	for i := 1; i <= runs; i++ {
		old := c.primaryNode(t)
		pm := postmasterPID(old)
		fault("pg-crash", i, crash, func() { _ = syscall.Kill(pm, syscall.SIGKILL) })
		c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	}
	var all []series
	for _, m := range []map[string]*series{kill, sw, crash} {
		for _, p := range probes {
			m[p.name].finish()
			all = append(all, *m[p.name])
		}
	}
	rejoin.finish()
	rejoin.Failed = nil
	all = append(all, *rejoin)
	writeBench(t, "failover", load0, map[string]any{
		"series":    all,
		"runs":      runs,
		"timelines": timelines,
		"probe":     "new connection + INSERT per attempt, 1 s limit, 50 ms pause (20 ms around switchovers); proxy = pgha write ports of all nodes as a libpq multi-host URL; direct = PostgreSQL ports with target_session_attrs=read-write",
	})
}
