//go:build chaos && linux

package integration

// TestChaos (`make chaos`): a 3-node cluster (one node per network
// namespace when root and `ip netns` work, else on loopback) under a
// client workload that inserts unique ids through the proxies' write
// ports, and a bounded, seeded run of random faults, each healed before
// the next: SIGKILL of an agent, of a postmaster, of a whole node,
// SIGSTOP/SIGCONT of a whole node, a partition of the primary or of a
// replica (namespaces only), a restart of every node. After each fault
// and at the end it checks:
//
//   - split brain: a probe writes directly on every node's PostgreSQL
//     every 100 ms; two nodes accepting writes in overlapping time
//     windows fails the test (zero tolerance);
//   - lost acknowledged commits: every acknowledged id must be on the
//     primary (synchronous mode, the default: any loss fails the test;
//     CHAOS_SYNC=0: losses are reported only);
//   - recovery time: fault -> writes acknowledged through a proxy again
//     (the first write issued after the fault, or the end of the longest
//     write gap when the fault caused one), min/median/max per fault kind
//     and target (primary, replica, all);
//   - convergence: one primary (the Raft leader), the others streaming,
//     all on its timeline, within CHAOS_HEAL_TIMEOUT (3m), else the test
//     fails with the node logs.
//
// Settings (environment): CHAOS_SEED (default: time-based; printed first
// so a failure replays the same fault sequence), CHAOS_DURATION (length
// of the fault phase, default 10m), CHAOS_SYNC (default 1),
// CHAOS_NETNS=0 (force loopback), CHAOS_HEAL_TIMEOUT, CHAOS_REPORT (1:
// write bench/results/<date>-<host>-chaos.json; a path: write there),
// CHAOS_LOG_DIR (where the full node logs go on failure; default a
// pgha-chaos-<seed> directory under $TMPDIR).

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/pgha/pgha/api"
)

type chaosKind string

const (
	kindKillAgent        chaosKind = "kill-agent"
	kindKillPostmaster   chaosKind = "kill-postmaster"
	kindKillNode         chaosKind = "kill-node"
	kindFreezeNode       chaosKind = "freeze-node"
	kindPartitionPrimary chaosKind = "partition-primary"
	kindPartitionReplica chaosKind = "partition-replica"
	kindRestartAll       chaosKind = "restart-all"
	// kindHangPostgres stops every PostgreSQL process of the node (not
	// its agent): a hung server. Held past primary_unresponsive_timeout
	// (10 s) on the primary it is fenced and failed over; shorter, the
	// writes just wait.
	kindHangPostgres chaosKind = "hang-postgres"
)

var chaosKinds = []chaosKind{kindKillAgent, kindKillPostmaster, kindKillNode, kindFreezeNode,
	kindPartitionPrimary, kindPartitionReplica, kindRestartAll, kindHangPostgres}

// holdRange bounds how long a fault lasts before it is healed: the agent
// or node restarted, the node resumed, the link restored. A postmaster
// kill has no heal step (the agent restarts PostgreSQL itself).
func holdRange(k chaosKind) (lo, hi time.Duration) {
	switch k {
	case kindKillAgent, kindKillNode:
		return time.Second, 8 * time.Second
	case kindFreezeNode:
		return 2 * time.Second, 8 * time.Second
	case kindPartitionPrimary, kindPartitionReplica:
		return 3 * time.Second, 10 * time.Second
	case kindRestartAll:
		return 500 * time.Millisecond, 3 * time.Second
	case kindHangPostgres:
		return 4 * time.Second, 16 * time.Second
	}
	return 0, 0
}

// plannedFault is one step of the seeded plan. Which node is "the
// primary" is only known when the step runs; everything else is fixed by
// the seed.
type plannedFault struct {
	Kind      chaosKind
	OnPrimary bool // target the primary, else replica number Replica (by name)
	Replica   int
	Hold      time.Duration
	Quiet     time.Duration // pause after convergence, writes flowing
}

func (f plannedFault) class() string {
	switch {
	case f.Kind == kindRestartAll:
		return "all"
	case f.OnPrimary:
		return "primary"
	}
	return "replica"
}

// chaosPlan is an endless, seeded sequence of faults: rounds that are each
// a random permutation of every kind, so a short run still covers most
// kinds. Every step draws the same number of values, whatever its kind.
type chaosPlan struct {
	rng *rand.Rand
	bag []chaosKind
}

func newChaosPlan(seed uint64) *chaosPlan {
	return &chaosPlan{rng: rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))}
}

func (p *chaosPlan) next() plannedFault {
	if len(p.bag) == 0 {
		p.bag = slices.Clone(chaosKinds)
		p.rng.Shuffle(len(p.bag), func(i, j int) { p.bag[i], p.bag[j] = p.bag[j], p.bag[i] })
	}
	f := plannedFault{Kind: p.bag[0]}
	p.bag = p.bag[1:]
	f.OnPrimary = p.rng.IntN(2) == 0
	f.Replica = p.rng.IntN(2)
	lo, hi := holdRange(f.Kind)
	f.Hold = (lo + time.Duration(p.rng.Int64N(int64(hi-lo)+1))).Round(time.Millisecond)
	f.Quiet = (2*time.Second + time.Duration(p.rng.Int64N(int64(3*time.Second)))).Round(time.Millisecond)
	switch f.Kind {
	case kindPartitionPrimary, kindRestartAll:
		f.OnPrimary = true
	case kindPartitionReplica:
		f.OnPrimary = false
	}
	return f
}

type chaosSettings struct {
	Seed        uint64
	Duration    time.Duration
	Sync        bool
	HealTimeout time.Duration
	Report      string // "" = no JSON report
	LogDir      string
}

func chaosSettingsFromEnv(t *testing.T) chaosSettings {
	t.Helper()
	st := chaosSettings{Seed: uint64(time.Now().UnixNano()), Duration: 10 * time.Minute, Sync: true, HealTimeout: 3 * time.Minute}
	if v := os.Getenv("CHAOS_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CHAOS_SEED=%q: %v", v, err)
		}
		st.Seed = s
	}
	for name, dst := range map[string]*time.Duration{"CHAOS_DURATION": &st.Duration, "CHAOS_HEAL_TIMEOUT": &st.HealTimeout} {
		if v := os.Getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				t.Fatalf("%s=%q: want a positive Go duration like 3m", name, v)
			}
			*dst = d
		}
	}
	if v := os.Getenv("CHAOS_SYNC"); v == "0" || v == "false" {
		st.Sync = false
	}
	switch v := os.Getenv("CHAOS_REPORT"); v {
	case "", "0", "false":
	case "1", "true":
		host, _ := os.Hostname()
		st.Report = filepath.Join("..", "bench", "results", fmt.Sprintf("%s-%s-chaos.json", time.Now().UTC().Format("20060102"), host))
	default:
		st.Report = v
	}
	st.LogDir = os.Getenv("CHAOS_LOG_DIR")
	if st.LogDir == "" {
		st.LogDir = filepath.Join(os.TempDir(), fmt.Sprintf("pgha-chaos-%d", st.Seed))
	}
	return st
}

// faultRecord is one fault as the report shows it.
type faultRecord struct {
	N              int       `json:"n"`
	Kind           chaosKind `json:"kind"`
	Class          string    `json:"class"`       // primary, replica, all
	Target         string    `json:"target"`      // node name, or "all"
	TargetRole     string    `json:"target_role"` // its role when hit
	Skipped        string    `json:"skipped,omitempty"`
	Start          time.Time `json:"start"`
	StartOffset    float64   `json:"start_offset_sec"`
	HoldSec        float64   `json:"hold_sec"`
	FirstWriteSec  *float64  `json:"first_write_sec,omitempty"` // fault -> first acknowledged write (through a proxy) issued after it
	WriteGapSec    *float64  `json:"write_gap_sec,omitempty"`   // longest time without an acknowledged write, fault -> whole again
	RecoverySec    *float64  `json:"recovery_sec,omitempty"`    // fault -> writes flowing again (see recoveryOf)
	ConvergedSec   *float64  `json:"converged_sec,omitempty"`   // fault -> cluster whole again
	ClientVia      string    `json:"client_via"`                // node whose proxy the workload used when the fault hit
	PrimaryBefore  string    `json:"primary_before,omitempty"`
	PrimaryAfter   string    `json:"primary_after,omitempty"`
	EpochBefore    uint64    `json:"epoch_before,omitempty"`
	EpochAfter     uint64    `json:"epoch_after,omitempty"`
	TimelineAfter  uint32    `json:"timeline_after,omitempty"`
	SplitBrain     int       `json:"split_brain_windows"`
	LostAcked      int       `json:"lost_acked"`
	AckedSoFar     int       `json:"acked_so_far"`
	Error          string    `json:"error,omitempty"`
	recovery, conv time.Duration
}

type recoveryStat struct {
	Kind      string    `json:"kind"` // kind/class
	N         int       `json:"n"`
	Seconds   []float64 `json:"seconds"`
	Min       float64   `json:"min"`
	Median    float64   `json:"median"`
	Max       float64   `json:"max"`
	GapMedian float64   `json:"write_gap_median_sec"`
	ConvergeP float64   `json:"converge_median_sec"`
}

type chaosReport struct {
	Date             string         `json:"date"`
	Seed             uint64         `json:"seed"`
	Replay           string         `json:"replay"`
	Mode             string         `json:"mode"` // netns or loopback
	NetnsUnavailable string         `json:"netns_unavailable,omitempty"`
	Synchronous      bool           `json:"synchronous_mode"`
	Duration         string         `json:"fault_phase"`
	ElapsedSec       float64        `json:"elapsed_sec"`
	Machine          map[string]any `json:"machine"`
	Faults           []faultRecord  `json:"faults"`
	Recovery         []recoveryStat `json:"recovery_by_kind"`
	SplitBrain       []sbWindow     `json:"split_brain_windows"`
	Probes           map[string]int `json:"probes"` // node -> accepted/refused counts
	Writes           map[string]any `json:"writes"`
	Converged        bool           `json:"converged"`
	Final            map[string]any `json:"final,omitempty"`
	Failures         []string       `json:"failures"`
	Passed           bool           `json:"passed"`
}

// chaosRun is one run of the chaos test.
type chaosRun struct {
	t       *testing.T
	e       *chaosEnv
	st      chaosSettings
	plan    *chaosPlan
	rep     *chaosReport
	t0      time.Time
	probes  *prober
	w       *workload
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stopObs sync.Once
	mu      sync.Mutex
	frozen  []int        // processes (-group) we stopped and not resumed yet
	cut     map[int]bool // lab links we cut and not restored yet
	lost    map[int64]bool
	started bool // the workload ran
	final   bool
}

func TestChaos(t *testing.T) {
	st := chaosSettingsFromEnv(t)
	replay := fmt.Sprintf("CHAOS_SEED=%d CHAOS_DURATION=%s CHAOS_SYNC=%d make chaos", st.Seed, st.Duration, map[bool]int{true: 1}[st.Sync])
	t.Logf("CHAOS_SEED=%d (replay: %s)", st.Seed, replay)
	e, noNetns := newChaosEnv(t, st.Sync)
	if noNetns != "" {
		t.Logf("network namespaces unavailable (%s): running on loopback; partition faults will be skipped", noNetns)
	}
	host, _ := os.Hostname()
	pgver, _ := exec.Command("/usr/lib/postgresql/15/bin/postgres", "--version").Output()
	r := &chaosRun{t: t, e: e, st: st, plan: newChaosPlan(st.Seed), probes: &prober{}, w: &workload{},
		cut: map[int]bool{}, lost: map[int64]bool{},
		rep: &chaosReport{Date: time.Now().UTC().Format(time.RFC3339), Seed: st.Seed, Replay: replay, Mode: e.mode(),
			NetnsUnavailable: noNetns, Synchronous: st.Sync, Duration: st.Duration.String(),
			Machine:  map[string]any{"cpus": runtime.NumCPU(), "go": runtime.Version(), "postgres": strings.TrimSpace(string(pgver)), "host": host},
			Failures: []string{}, Faults: []faultRecord{}, SplitBrain: []sbWindow{}}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	// Cleanups run last-in first-out: this one, registered after the
	// cluster's, resumes frozen processes and restores cut links before
	// the agents are stopped.
	t.Cleanup(r.healAll)
	defer r.finish()
	r.t0 = time.Now()
	if !r.setup() {
		return
	}
	r.faults()
	r.finalChecks()
}

// fail records a failure for the report and marks the test failed.
func (r *chaosRun) fail(format string, args ...any) {
	r.t.Helper()
	msg := fmt.Sprintf(format, args...)
	r.rep.Failures = append(r.rep.Failures, msg)
	r.t.Error(msg)
}

func (r *chaosRun) off(at time.Time) float64 { return at.Sub(r.t0).Seconds() }

// sleep waits d, or less if the run is cancelled.
func (r *chaosRun) sleep(d time.Duration) {
	select {
	case <-time.After(d):
	case <-r.ctx.Done():
	}
}

// waitConverged polls the convergence check every 500 ms for up to
// timeout. With since set, it also waits for a write acknowledged through
// a proxy whose attempt started after since.
func (r *chaosRun) waitConverged(since time.Time, timeout time.Duration) (api.ClusterInfo, error) {
	deadline := time.Now().Add(timeout)
	lastLog := time.Now()
	for {
		ci, err := r.e.convergence()
		if err == nil && !since.IsZero() {
			if _, ok := r.w.firstAckSince(since); !ok {
				_, _, _, last := r.w.counts()
				err = fmt.Errorf("no write acknowledged through a proxy yet (last error: %s)", last)
			}
		}
		if err == nil {
			return ci, nil
		}
		if strings.Contains(err.Error(), "exited by itself") || time.Now().After(deadline) {
			return ci, err
		}
		if time.Since(lastLog) > 20*time.Second {
			r.t.Logf("  +%.1fs still waiting for convergence: %v", r.off(time.Now()), err)
			lastLog = time.Now()
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// setup starts the cluster, creates the tables, turns synchronous mode on
// and starts the probes and the workload.
func (r *chaosRun) setup() bool {
	t, e := r.t, r.e
	e.startAll()
	ci, err := r.waitConverged(time.Time{}, 3*time.Minute)
	if err != nil {
		r.fail("the cluster did not form within 3m: %v", err)
		return false
	}
	t.Logf("cluster formed in %.1fs (%s): primary %s, timeline %d", r.off(time.Now()), e.mode(), ci.Primary, ci.Timeline)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := e.connectPG(ctx, e.c.Node(ci.Primary))
	if err != nil {
		r.fail("connect to the primary %s: %v", ci.Primary, err)
		return false
	}
	_, err = conn.Exec(ctx, "CREATE TABLE chaos_w (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp()); "+
		"CREATE TABLE chaos_probe (node text NOT NULL, seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())")
	conn.Close(context.Background())
	if err != nil {
		r.fail("create tables: %v", err)
		return false
	}
	if e.sync {
		out, stderr, code := cli(t, "edit-config", "--api", e.apiAddr(e.c.Node(ci.Primary)), "--set", "synchronous_mode=true")
		if code != 0 {
			r.fail("pgha edit-config --set synchronous_mode=true: exit %d: %s %s", code, out, stderr)
			return false
		}
		e.syncOn = true
		if ci, err = r.waitConverged(time.Time{}, time.Minute); err != nil {
			r.fail("no synchronous standby within 1m after synchronous_mode=true: %v", err)
			return false
		}
		t.Logf("synchronous mode on: %s", ci.Sync)
	}
	for _, nd := range e.c.Nodes {
		r.wg.Add(1)
		go func(nd *Node) {
			defer r.wg.Done()
			e.runProbe(r.ctx, nd, r.probes)
		}(nd)
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		e.runWorkload(r.ctx, r.w)
	}()
	r.started = true
	if _, err := r.waitConverged(time.Now(), time.Minute); err != nil {
		r.fail("the workload got no write through the proxy within 1m: %v", err)
		return false
	}
	return true
}

// faults runs the plan until the fault phase is over or a check failed.
func (r *chaosRun) faults() {
	t, e := r.t, r.e
	phaseStart := time.Now()
	for n := 1; n <= 10000; n++ {
		if time.Since(phaseStart) >= r.st.Duration {
			break
		}
		if dl, ok := t.Deadline(); ok && time.Until(dl) < 2*r.st.HealTimeout+2*time.Minute {
			t.Logf("stopping the fault phase early: the test binary's -timeout is close")
			break
		}
		f := r.plan.next()
		rec := faultRecord{N: n, Kind: f.Kind, Class: f.class(), HoldSec: f.Hold.Seconds()}
		if (f.Kind == kindPartitionPrimary || f.Kind == kindPartitionReplica) && e.lab == nil {
			rec.Skipped = "network namespaces unavailable: " + r.rep.NetnsUnavailable
			rec.Start = time.Now()
			rec.StartOffset = r.off(rec.Start)
			t.Logf("fault %d: %s skipped (%s)", n, f.Kind, rec.Skipped)
			r.rep.Faults = append(r.rep.Faults, rec)
			continue
		}
		ci, err := r.waitConverged(time.Time{}, r.st.HealTimeout)
		if err != nil {
			r.fail("the cluster was not whole before fault %d within %s: %v", n, r.st.HealTimeout, err)
			return
		}
		if err := r.inject(f, ci, &rec); err != nil {
			rec.Error = err.Error()
			r.rep.Faults = append(r.rep.Faults, rec)
			r.fail("fault %d (%s): %v", n, f.Kind, err)
			return
		}
		ci, err = r.waitConverged(rec.Start, r.st.HealTimeout)
		if err != nil {
			rec.Error = fmt.Sprintf("did not heal: %v", err)
			r.rep.Faults = append(r.rep.Faults, rec)
			r.fail("fault %d (%s on %s, %s) did not heal within %s of the heal step: %v", n, f.Kind, rec.Target, rec.TargetRole, r.st.HealTimeout, err)
			return
		}
		rec.conv = time.Since(rec.Start)
		rec.ConvergedSec = ptr(rec.conv.Seconds())
		r.recoveryOf(&rec, time.Now())
		rec.PrimaryAfter, rec.EpochAfter, rec.TimelineAfter = ci.Primary, ci.Epoch, ci.Timeline
		r.checkLost(ci, &rec)
		r.checkSplitBrain(&rec)
		t.Logf("fault %d at +%.1fs: %s on %s (%s), hold %.1fs: writes recovered after %.2fs (longest gap %.2fs), whole again after %.1fs; primary %s -> %s, timeline %d; split-brain windows %d, lost acknowledged %d (of %d)",
			n, rec.StartOffset, f.Kind, rec.Target, rec.TargetRole, rec.HoldSec, rec.recovery.Seconds(), deref(rec.WriteGapSec), rec.conv.Seconds(),
			rec.PrimaryBefore, rec.PrimaryAfter, rec.TimelineAfter, rec.SplitBrain, rec.LostAcked, rec.AckedSoFar)
		r.rep.Faults = append(r.rep.Faults, rec)
		if t.Failed() {
			return
		}
		r.sleep(f.Quiet)
	}
}

func ptr[T any](v T) *T { return &v }

func deref(p *float64) float64 {
	if p == nil {
		return 0
	}
	return *p
}

// recoveryOf measures how long writes through the proxies suffered from
// the fault that started at rec.Start, up to whole (the cluster whole
// again). The first acknowledged write issued after the fault can come
// before the fault bites (a frozen synchronous standby stalls commits a
// moment later), so the recovery time is the end of the longest gap
// without an acknowledged write when that gap is 0.5 s or more, and the
// first write after the fault otherwise (no real outage).
func (r *chaosRun) recoveryOf(rec *faultRecord, whole time.Time) {
	first, ok := r.w.firstAckSince(rec.Start)
	if !ok {
		return
	}
	rec.FirstWriteSec = ptr(first.End.Sub(rec.Start).Seconds())
	gap, gapEnd := r.w.longestGap(rec.Start, whole)
	rec.WriteGapSec = ptr(gap.Seconds())
	rec.recovery = first.End.Sub(rec.Start)
	if gap >= 500*time.Millisecond && gapEnd.After(first.End) {
		rec.recovery = gapEnd.Sub(rec.Start)
	}
	rec.RecoverySec = ptr(rec.recovery.Seconds())
}

// inject applies f to the cluster described by ci and heals it after its
// hold; rec gets the target and the fault's start time.
func (r *chaosRun) inject(f plannedFault, ci api.ClusterInfo, rec *faultRecord) error {
	e := r.e
	target := e.c.Node(ci.Primary)
	if !f.OnPrimary {
		reps := replicasOf(ci, ci.Primary)
		target = e.c.Node(reps[f.Replica%len(reps)])
	}
	rec.Target, rec.TargetRole = target.Name, roleOf(ci, target.Name)
	if f.Kind == kindRestartAll {
		rec.Target, rec.TargetRole = "all", "all"
	}
	rec.PrimaryBefore, rec.EpochBefore = ci.Primary, ci.Epoch
	begin := func() {
		rec.ClientVia = r.w.lastVia()
		rec.Start = time.Now()
		rec.StartOffset = r.off(rec.Start)
	}
	switch f.Kind {
	case kindKillAgent:
		// The agent only; its PostgreSQL follows by the parent-death
		// signal (by design).
		begin()
		e.c.Kill(target)
		r.sleep(f.Hold)
		e.start(target)
	case kindKillPostmaster:
		pm, err := e.postmaster(target)
		if err != nil {
			return err
		}
		begin()
		if err := syscall.Kill(pm, syscall.SIGKILL); err != nil {
			return fmt.Errorf("SIGKILL postmaster %d of %s: %w", pm, target.Name, err)
		}
	case kindKillNode:
		pm, err := e.postmaster(target)
		if err != nil {
			return err
		}
		begin()
		_ = target.proc.Signal(syscall.SIGKILL) // not Kill: that would wait before the postmaster is hit
		_ = syscall.Kill(pm, syscall.SIGKILL)
		for _, pid := range postgresChildren(pm) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		e.c.Kill(target) // waits for the agent's exit
		r.sleep(f.Hold)
		e.start(target)
	case kindFreezeNode:
		pm, err := e.postmaster(target)
		if err != nil {
			return err
		}
		agent := target.proc.PID()
		if _, pgrp, _, err := procStat(agent); err != nil || pgrp != agent {
			return fmt.Errorf("%s: agent %d is not its own process group (%d, %v)", target.Name, agent, pgrp, err)
		}
		// The agent's process group, then the postmaster (which then
		// forks nothing more), then each of its children: every process
		// of the node stops, as in a paused VM.
		begin()
		r.freeze(-agent)
		r.freeze(pm)
		for _, pid := range postgresChildren(pm) {
			r.freeze(pid)
		}
		r.sleep(f.Hold)
		r.thaw()
	case kindHangPostgres:
		pm, err := e.postmaster(target)
		if err != nil {
			return err
		}
		begin()
		r.freeze(pm)
		for _, pid := range postgresChildren(pm) {
			r.freeze(pid)
		}
		r.sleep(f.Hold)
		r.thaw()
	case kindPartitionPrimary, kindPartitionReplica:
		idx := e.nc.index[target.Name]
		r.mu.Lock()
		r.cut[idx] = true
		r.mu.Unlock()
		begin()
		e.lab.Isolate(idx)
		r.sleep(f.Hold)
		e.lab.Heal(idx)
		r.mu.Lock()
		delete(r.cut, idx)
		r.mu.Unlock()
	case kindRestartAll:
		begin()
		for _, nd := range e.c.Nodes {
			if nd.proc != nil {
				_ = nd.proc.Signal(syscall.SIGTERM)
			}
		}
		for _, nd := range e.c.Nodes {
			e.c.Stop(nd) // waits up to 90 s for a clean exit
		}
		r.sleep(f.Hold)
		e.startAll()
	default:
		return fmt.Errorf("unknown fault kind %q", f.Kind)
	}
	return nil
}

// freeze sends SIGSTOP to pid (a process group when negative) and
// remembers it for thaw.
func (r *chaosRun) freeze(pid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if syscall.Kill(pid, syscall.SIGSTOP) == nil {
		r.frozen = append(r.frozen, pid)
	}
}

// thaw resumes every frozen process, in the order they were stopped.
func (r *chaosRun) thaw() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, pid := range r.frozen {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
	r.frozen = nil
}

// healAll resumes what a fault left frozen and restores cut links (on a
// failure half-way through a fault).
func (r *chaosRun) healAll() {
	r.thaw()
	r.mu.Lock()
	defer r.mu.Unlock()
	for idx := range r.cut {
		if out, err := nsIP("link", "set", r.e.lab.Veth[idx], "up"); err != nil {
			r.t.Logf("restore link %s: %v: %s", r.e.lab.Veth[idx], err, out)
		}
	}
}

// checkLost checks every commit acknowledged so far is on the primary.
func (r *chaosRun) checkLost(ci api.ClusterInfo, rec *faultRecord) {
	ids, _ := r.w.ackedIDs()
	rec.AckedSoFar = len(ids)
	var missing []int64
	var err error
	for i := 0; i < 3; i++ {
		if missing, err = r.e.missingOn(r.e.c.Node(ci.Primary), ids); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		r.fail("fault %d: cannot check acknowledged commits on the primary %s: %v", rec.N, ci.Primary, err)
		return
	}
	var fresh []int64
	for _, id := range missing {
		if !r.lost[id] {
			r.lost[id] = true
			fresh = append(fresh, id)
		}
	}
	rec.LostAcked = len(fresh)
	if len(fresh) == 0 {
		return
	}
	msg := fmt.Sprintf("fault %d (%s on %s, %s): %d acknowledged commits missing on the primary %s: %s",
		rec.N, rec.Kind, rec.Target, rec.TargetRole, len(fresh), ci.Primary, idList(fresh, 20))
	if r.e.sync {
		r.fail("%s", msg)
	} else {
		r.t.Logf("%s (asynchronous replication: reported, not a failure)", msg)
	}
}

func idList(ids []int64, max int) string {
	var b strings.Builder
	for i, id := range ids {
		if i == max {
			fmt.Fprintf(&b, " ... (%d more)", len(ids)-max)
			break
		}
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprint(&b, id)
	}
	return b.String()
}

// checkSplitBrain fails on any window overlapping the fault's time span.
func (r *chaosRun) checkSplitBrain(rec *faultRecord) {
	for _, w := range splitBrainWindows(r.probes.snapshot(), r.t0) {
		if w.End.Before(rec.Start) {
			continue
		}
		rec.SplitBrain++
		r.fail("fault %d (%s on %s): split brain: %s and %s both accepted writes from +%.3fs for %.3fs (%d and %d accepted probes): %s",
			rec.N, rec.Kind, rec.Target, w.Nodes[0], w.Nodes[1], w.StartOffset, w.LengthSec, w.Probes[0], w.Probes[1], w.Detail)
	}
}

// finalChecks waits for the cluster to be whole, stops the workload and
// checks every acknowledged commit is on the final primary.
func (r *chaosRun) finalChecks() {
	if r.t.Failed() {
		return
	}
	since := time.Now()
	ci, err := r.waitConverged(since, r.st.HealTimeout)
	if err != nil {
		r.fail("the cluster is not whole at the end within %s: %v", r.st.HealTimeout, err)
		return
	}
	r.rep.Converged = true
	r.stopObservers()
	r.verifyFinal(ci)
	r.final = true
}

func (r *chaosRun) stopObservers() {
	r.stopObs.Do(func() {
		r.cancel()
		r.wg.Wait()
	})
}

// verifyFinal checks the acknowledged commits against ci's primary.
func (r *chaosRun) verifyFinal(ci api.ClusterInfo) {
	ids, warned := r.w.ackedIDs()
	attempts, failures, _, lastErr := r.w.counts()
	writes := map[string]any{"attempts": attempts, "failed": failures, "acknowledged": len(ids),
		"acknowledged_with_sync_wait_cancelled": len(warned), "last_error": lastErr}
	r.rep.Writes = writes
	if ci.Primary == "" {
		writes["lost"] = "unknown: no primary"
		return
	}
	p := r.e.c.Node(ci.Primary)
	missing, err := r.e.missingOn(p, ids)
	if err != nil {
		r.fail("final check of acknowledged commits on %s: %v", p.Name, err)
		return
	}
	writes["lost"] = len(missing)
	writes["lost_ids"] = idList(missing, 100)
	if len(warned) > 0 {
		wm, err := r.e.missingOn(p, warned)
		if err == nil {
			writes["sync_wait_cancelled_missing"] = len(wm)
		}
	}
	members := map[string]string{}
	for _, m := range ci.Members {
		members[m.Name] = fmt.Sprintf("%s/%s timeline %d", m.Role, m.State, m.Timeline)
	}
	r.rep.Final = map[string]any{"primary": ci.Primary, "epoch": ci.Epoch, "timeline": ci.Timeline, "members": members, "synchronous": ci.Sync}
	if len(missing) > 0 {
		msg := fmt.Sprintf("%d of %d acknowledged commits missing on the final primary %s: %s", len(missing), len(ids), p.Name, idList(missing, 20))
		if r.e.sync {
			r.fail("%s", msg)
		} else {
			r.t.Logf("%s (asynchronous replication: reported, not a failure)", msg)
		}
	}
}

// finish runs last, also after a failure: stops the observers, analyses
// the probes, prints the summary, writes the report and keeps the logs of
// a failed run.
func (r *chaosRun) finish() {
	t := r.t
	r.healAll()
	r.stopObservers()
	if !r.final && r.rep.Writes == nil && r.started {
		// Best effort after a failure: whatever primary there is now.
		if ci, err := r.e.info(); err == nil {
			r.verifyFinal(ci)
		}
	}
	recs := r.probes.snapshot()
	r.rep.SplitBrain = splitBrainWindows(recs, r.t0)
	reported := 0
	for _, f := range r.rep.Faults {
		reported += f.SplitBrain
	}
	if len(r.rep.SplitBrain) > reported {
		var ws []string
		for _, w := range r.rep.SplitBrain {
			ws = append(ws, fmt.Sprintf("%s+%s from +%.3fs for %.3fs", w.Nodes[0], w.Nodes[1], w.StartOffset, w.LengthSec))
		}
		r.fail("split brain over the whole run: %s", strings.Join(ws, "; "))
	}
	r.rep.Probes = map[string]int{}
	for _, p := range recs {
		if p.OK {
			r.rep.Probes[p.Node+" accepted"]++
		} else {
			r.rep.Probes[p.Node+" refused"]++
		}
	}
	r.rep.Recovery = recoveryStats(r.rep.Faults)
	r.rep.ElapsedSec = time.Since(r.t0).Seconds()
	r.rep.Passed = !t.Failed()
	t.Log(r.summary())
	if r.st.Report != "" {
		if err := os.MkdirAll(filepath.Dir(r.st.Report), 0o755); err != nil {
			t.Errorf("report: %v", err)
		} else if b, err := json.MarshalIndent(r.rep, "", "  "); err != nil {
			t.Errorf("report: %v", err)
		} else if err := os.WriteFile(r.st.Report, append(b, '\n'), 0o644); err != nil {
			t.Errorf("report: %v", err)
		} else {
			t.Logf("report written to %s", r.st.Report)
		}
	}
	if t.Failed() {
		if err := r.e.saveLogs(r.st.LogDir); err != nil {
			t.Logf("saving logs to %s: %v", r.st.LogDir, err)
		} else {
			t.Logf("full node logs kept in %s (replay: %s)", r.st.LogDir, r.rep.Replay)
		}
	}
}

func recoveryStats(faults []faultRecord) []recoveryStat {
	by := map[string]*recoveryStat{}
	conv, gaps := map[string][]float64{}, map[string][]float64{}
	for _, f := range faults {
		if f.RecoverySec == nil {
			continue
		}
		k := string(f.Kind) + "/" + f.Class
		s := by[k]
		if s == nil {
			s = &recoveryStat{Kind: k}
			by[k] = s
		}
		s.Seconds = append(s.Seconds, *f.RecoverySec)
		if f.ConvergedSec != nil {
			conv[k] = append(conv[k], *f.ConvergedSec)
		}
		if f.WriteGapSec != nil {
			gaps[k] = append(gaps[k], *f.WriteGapSec)
		}
	}
	var out []recoveryStat
	for k, s := range by {
		sort.Float64s(s.Seconds)
		s.N = len(s.Seconds)
		s.Min, s.Max, s.Median = s.Seconds[0], s.Seconds[s.N-1], median(s.Seconds)
		c := conv[k]
		sort.Float64s(c)
		s.ConvergeP = median(c)
		g := gaps[k]
		sort.Float64s(g)
		s.GapMedian = median(g)
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Kind < out[j].Kind })
	return out
}

func median(sorted []float64) float64 {
	n := len(sorted)
	switch {
	case n == 0:
		return 0
	case n%2 == 1:
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

// summary is the human table printed at the end.
func (r *chaosRun) summary() string {
	rep := r.rep
	var b strings.Builder
	fmt.Fprintf(&b, "\n==== chaos summary: seed %d, %s, synchronous_mode %v, fault phase %s, %.0fs in all: %s ====\n",
		rep.Seed, rep.Mode, rep.Synchronous, rep.Duration, rep.ElapsedSec, map[bool]string{true: "PASS", false: "FAIL"}[rep.Passed])
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tat\tkind\ttarget\thold\tclient via\trecovery\tfirst write\tlongest gap\twhole again\tprimary\tsplit\tlost\tnote")
	for _, f := range rep.Faults {
		note := f.Skipped + f.Error
		if len(note) > 70 {
			note = note[:70] + "..."
		}
		rec, first, gap, conv := "-", "-", "-", "-"
		if f.RecoverySec != nil {
			rec = fmt.Sprintf("%.2fs", *f.RecoverySec)
			first = fmt.Sprintf("%.2fs", deref(f.FirstWriteSec))
			gap = fmt.Sprintf("%.2fs", deref(f.WriteGapSec))
		}
		if f.ConvergedSec != nil {
			conv = fmt.Sprintf("%.1fs", *f.ConvergedSec)
		}
		target := f.Target
		if f.TargetRole != "" && f.TargetRole != "all" {
			target += " (" + f.TargetRole + ")"
		}
		fmt.Fprintf(tw, "%d\t+%.0fs\t%s\t%s\t%.1fs\t%s\t%s\t%s\t%s\t%s\t%s->%s\t%d\t%d\t%s\n", f.N, f.StartOffset, f.Kind, target, f.HoldSec,
			f.ClientVia, rec, first, gap, conv, f.PrimaryBefore, f.PrimaryAfter, f.SplitBrain, f.LostAcked, note)
	}
	tw.Flush()
	b.WriteString("\nrecovery (fault -> writes acknowledged through a proxy again):\n")
	tw = tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "kind/target\tn\tmin\tmedian\tmax\tlongest gap (median)\twhole again (median)")
	for _, s := range rep.Recovery {
		fmt.Fprintf(tw, "%s\t%d\t%.2fs\t%.2fs\t%.2fs\t%.2fs\t%.1fs\n", s.Kind, s.N, s.Min, s.Median, s.Max, s.GapMedian, s.ConvergeP)
	}
	tw.Flush()
	fmt.Fprintf(&b, "\nsplit-brain windows: %d", len(rep.SplitBrain))
	for _, w := range rep.SplitBrain {
		fmt.Fprintf(&b, "\n  %s+%s from +%.3fs for %.3fs", w.Nodes[0], w.Nodes[1], w.StartOffset, w.LengthSec)
	}
	fmt.Fprintf(&b, "\nprobes: %v\nwrites: %v\nconverged at the end: %v; final: %v\n", rep.Probes, rep.Writes, rep.Converged, rep.Final)
	for _, f := range rep.Failures {
		fmt.Fprintf(&b, "FAILURE: %s\n", f)
	}
	return b.String()
}
