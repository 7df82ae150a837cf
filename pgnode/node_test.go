package pgnode_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgha/pgha/internal/testutil"
	"github.com/pgha/pgha/pgnode"
)

const (
	suPassword   = "su-secret'\\:x"
	replPassword = "repl-secret:'y"
)

func smallParams() map[string]string {
	return map[string]string{"shared_buffers": "32MB", "max_connections": "20"}
}

func nodeConfig(t testing.TB, base, name string, port int) pgnode.Config {
	return pgnode.Config{
		Name:              name,
		BinDir:            binDir(t),
		DataDir:           filepath.Join(base, name, "pgdata"),
		RunDir:            filepath.Join(base, name),
		Listen:            "127.0.0.1",
		Port:              port,
		SuperuserPassword: suPassword,
		ReplPassword:      replPassword,
		Parameters:        smallParams(),
		AllowedNetworks:   []string{"127.0.0.1/32"},
		StartTimeout:      30 * time.Second,
		StopTimeout:       20 * time.Second,
		Logger:            testLogger(t),
	}
}

func mustNew(t testing.TB, cfg pgnode.Config) *pgnode.Node {
	t.Helper()
	n, err := pgnode.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestNewErrors(t *testing.T) {
	bin := binDir(t)
	base := tempDir(t)
	cfg := nodeConfig(t, base, "n1", 5432)

	c := cfg
	c.BinDir = "/nonexistent/pg/bin"
	_, err := pgnode.New(c)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/pg/bin") || !strings.Contains(err.Error(), "apt-get install") {
		t.Errorf("New with a missing bin dir = %v, want an error naming it and how to install", err)
	}

	c = cfg
	c.Parameters = map[string]string{"hot_standby": "off", "work_mem": "4MB"}
	_, err = pgnode.New(c)
	if err == nil || !strings.Contains(err.Error(), `"hot_standby"`) {
		t.Errorf("New with a protected parameter = %v, want an error naming hot_standby", err)
	}

	c = cfg
	c.BinDir = ""
	n, err := pgnode.New(c)
	if err != nil {
		t.Fatalf("New with bin dir discovery: %v", err)
	}
	if n.BinDir() != bin || n.Version() < 13 {
		t.Errorf("BinDir() = %q (version %d), want %q", n.BinDir(), n.Version(), bin)
	}
	if st, err := n.DataState(); err != nil || st != pgnode.DataEmpty {
		t.Errorf("DataState of a missing dir = %v, %v; want empty", st, err)
	}
	n.Close()

	if os.Geteuid() == 0 {
		locked := filepath.Join(base, "locked")
		if err := os.Mkdir(locked, 0o700); err != nil {
			t.Fatal(err)
		}
		c = cfg
		c.DataDir = filepath.Join(locked, "node", "pgdata")
		c.RunDir = filepath.Join(locked, "node")
		_, err = pgnode.New(c)
		if err == nil || !strings.Contains(err.Error(), locked) || !strings.Contains(err.Error(), "chmod o+x") {
			t.Errorf("New under a 0700 root dir = %v, want an error naming %s and chmod o+x", err, locked)
		}
	}
}

func TestRefuseNonEmpty(t *testing.T) {
	base := tempDir(t)
	cfg := nodeConfig(t, base, "n1", testutil.FreePort(t))
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	precious := filepath.Join(cfg.DataDir, "precious.txt")
	if err := os.WriteFile(precious, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := mustNew(t, cfg)
	defer n.Close()
	if st, err := n.DataState(); err != nil || st != pgnode.DataInvalid {
		t.Fatalf("DataState = %v, %v; want invalid", st, err)
	}
	ctx := context.Background()
	if _, err := n.Bootstrap(ctx, pgnode.Desired{Role: pgnode.RolePrimary}); !errors.Is(err, pgnode.ErrNotEmpty) {
		t.Errorf("Bootstrap on a non-empty dir = %v, want ErrNotEmpty", err)
	}
	if err := n.Clone(ctx, pgnode.Upstream{Host: "127.0.0.1", Port: 1}, nil); !errors.Is(err, pgnode.ErrNotEmpty) {
		t.Errorf("Clone on a non-empty dir = %v, want ErrNotEmpty", err)
	}
	if _, err := n.WriteConfig(pgnode.Desired{Role: pgnode.RolePrimary}); !errors.Is(err, pgnode.ErrNoData) {
		t.Errorf("WriteConfig on a non-data dir = %v, want ErrNoData", err)
	}
	if err := n.Start(ctx); !errors.Is(err, pgnode.ErrNoData) {
		t.Errorf("Start on a non-data dir = %v, want ErrNoData", err)
	}
	entries, _ := os.ReadDir(cfg.DataDir)
	got, _ := os.ReadFile(precious)
	st, _ := os.Stat(cfg.DataDir)
	if len(entries) != 1 || string(got) != "keep me" || st.Mode().Perm() != 0o755 {
		t.Errorf("data dir changed: %d entries, content %q, mode %v", len(entries), got, st.Mode().Perm())
	}
}

// A bootstrap whose server cannot start reports the server's own words
// and leaves the data dir as it found it (absent), ready for a retry.
func TestBootstrapFailureCleansUp(t *testing.T) {
	base := tempDir(t)
	cfg := nodeConfig(t, base, "n1", testutil.FreePort(t))
	cfg.Parameters["shared_buffers"] = "plenty"
	n := mustNew(t, cfg)
	defer n.Close()
	_, err := n.Bootstrap(context.Background(), pgnode.Desired{Role: pgnode.RolePrimary})
	if err == nil || !strings.Contains(err.Error(), `invalid value for parameter "shared_buffers"`) {
		t.Fatalf("Bootstrap with a bad parameter = %v, want the log line about shared_buffers", err)
	}
	t.Logf("error: %v", err)
	if st, err := n.DataState(); err != nil || st != pgnode.DataEmpty {
		t.Errorf("DataState after a failed Bootstrap = %v, %v; want empty", st, err)
	}
	if n.Running() {
		t.Error("running after a failed Bootstrap")
	}
}

// A clone from nowhere fails with pg_basebackup's message and removes the
// data dir it created.
func TestCloneFailureCleansUp(t *testing.T) {
	base := tempDir(t)
	cfg := nodeConfig(t, base, "n1", testutil.FreePort(t))
	n := mustNew(t, cfg)
	defer n.Close()
	err := n.Clone(context.Background(), pgnode.Upstream{Host: "127.0.0.1", Port: testutil.FreePort(t)}, nil)
	if err == nil || !strings.Contains(err.Error(), "pg_basebackup") || !strings.Contains(err.Error(), "onnection refused") {
		t.Fatalf("Clone from a closed port = %v, want pg_basebackup's connection error", err)
	}
	t.Logf("error: %v", err)
	if _, err := os.Stat(cfg.DataDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data dir left behind after a failed Clone: %v", err)
	}
}

func TestCluster(t *testing.T) {
	binDir(t)
	base := tempDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	pcfg := nodeConfig(t, base, "n1", testutil.FreePort(t))
	p := mustNew(t, pcfg)
	defer p.Close()
	rcfg := nodeConfig(t, base, "n2", testutil.FreePort(t))
	r := mustNew(t, rcfg)
	defer r.Close()

	// --- bootstrap a primary ---
	// With a restart-only cluster-wide parameter: Bootstrap starts
	// PostgreSQL, so it must start with the whole desired configuration.
	start := time.Now()
	sysid, err := p.Bootstrap(ctx, pgnode.Desired{Role: pgnode.RolePrimary, Parameters: map[string]string{"track_activity_query_size": "2048"}})
	if err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	t.Logf("bootstrap took %s", time.Since(start).Round(time.Millisecond))
	if sysid == 0 {
		t.Fatal("Bootstrap returned system id 0")
	}
	if got, err := p.SystemID(ctx); err != nil || got != sysid {
		t.Fatalf("SystemID = %d, %v; want %d", got, err, sysid)
	}
	if !p.Running() {
		t.Fatal("primary not running after Bootstrap")
	}
	st, err := p.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if !st.Running || st.InRecovery || st.Timeline != 1 || st.WalLSN == 0 {
		t.Fatalf("primary Status = %+v, want running, not in recovery, timeline 1, WalLSN > 0", st)
	}
	if _, err := p.Bootstrap(ctx, pgnode.Desired{Role: pgnode.RolePrimary}); !errors.Is(err, pgnode.ErrNotEmpty) {
		t.Fatalf("second Bootstrap = %v, want ErrNotEmpty", err)
	}

	pc, err := p.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(context.Background())
	var checksums, syncCommit string
	if err := pc.QueryRow(ctx, "SHOW data_checksums").Scan(&checksums); err != nil || checksums != "on" {
		t.Errorf("data_checksums = %q, %v; want on", checksums, err)
	}
	if err := pc.QueryRow(ctx, "SHOW synchronous_commit").Scan(&syncCommit); err != nil || syncCommit != "local" {
		t.Errorf("management synchronous_commit = %q, %v; want local", syncCommit, err)
	}
	var querySize string
	if err := pc.QueryRow(ctx, "SHOW track_activity_query_size").Scan(&querySize); err != nil || querySize != "2kB" {
		t.Errorf("track_activity_query_size after Bootstrap = %q, %v; want 2kB from Desired.Parameters", querySize, err)
	}
	var canRepl, canLogin bool
	var verifier string
	err = pc.QueryRow(ctx, "SELECT rolreplication, rolcanlogin, rolpassword FROM pg_authid WHERE rolname = 'replicator'").Scan(&canRepl, &canLogin, &verifier)
	if err != nil || !canRepl || !canLogin || !strings.HasPrefix(verifier, "SCRAM-SHA-256$") {
		t.Errorf("replication role: replication=%v login=%v password=%.14s, %v", canRepl, canLogin, verifier, err)
	}
	checkFileMode(t, filepath.Join(pcfg.DataDir, "postgresql.conf"))
	checkFileMode(t, filepath.Join(pcfg.RunDir, "pgpass"))

	// --- slots: create the replica's, drop an unwanted pgha_ one, keep others ---
	for _, s := range []string{"pgha_gone", "not_ours"} {
		if _, err := pc.Exec(ctx, "SELECT pg_create_physical_replication_slot($1)", s); err != nil {
			t.Fatal(err)
		}
	}
	slot := pgnode.SlotName("n2")
	created, dropped, err := p.EnsureSlots(ctx, []string{slot})
	if err != nil || !slices.Equal(created, []string{slot}) || !slices.Equal(dropped, []string{"pgha_gone"}) {
		t.Fatalf("EnsureSlots = created %v, dropped %v, %v", created, dropped, err)
	}
	if got := slotNames(t, ctx, p); !slices.Equal(got, []string{"not_ours", slot}) {
		t.Fatalf("slots after EnsureSlots = %v", got)
	}

	// --- clone a replica ---
	var pcts []int
	up := pgnode.Upstream{Host: "127.0.0.1", Port: pcfg.Port, Slot: slot}
	start = time.Now()
	if err := r.Clone(ctx, up, func(pct int, detail string) { pcts = append(pcts, pct) }); err != nil {
		t.Fatalf("Clone: %v", err)
	}
	t.Logf("clone took %s, progress %v", time.Since(start).Round(time.Millisecond), pcts)
	if len(pcts) == 0 || pcts[len(pcts)-1] != 100 {
		t.Errorf("progress = %v, want it to end at 100", pcts)
	}
	if got, err := r.SystemID(ctx); err != nil || got != sysid {
		t.Fatalf("replica SystemID = %d, %v; want %d", got, err, sysid)
	}
	if err := r.Clone(ctx, up, nil); !errors.Is(err, pgnode.ErrNotEmpty) {
		t.Fatalf("second Clone = %v, want ErrNotEmpty", err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatalf("replica Start: %v", err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatalf("second Start (idempotent): %v", err)
	}
	waitStreaming(t, ctx, r)
	rs, _ := r.Status(ctx)
	if rs.Timeline != 1 || rs.UpstreamHost != "127.0.0.1" || rs.ReceiveLSN == 0 || rs.ReplayLSN == 0 {
		t.Errorf("replica Status = %+v", rs)
	}

	// A row written on the primary shows up on the replica.
	if _, err := pc.Exec(ctx, "CREATE TABLE t (v text); INSERT INTO t VALUES ('hello')"); err != nil {
		t.Fatal(err)
	}
	rc, err := r.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 30*time.Second, "row on replica", func() error {
		var v string
		err := rc.QueryRow(ctx, "SELECT v FROM t").Scan(&v)
		if err == nil && v != "hello" {
			err = fmt.Errorf("row is %q", v)
		}
		return err
	})
	rc.Close(ctx)

	testutil.WaitFor(t, 30*time.Second, "one streaming replica on the primary", func() error {
		st, err := p.Status(ctx)
		if err == nil && !(len(st.Replicas) == 1 && st.Replicas[0].State == "streaming" &&
			st.Replicas[0].ApplicationName == "n2" && st.Replicas[0].ReplayLSN > 0) {
			err = fmt.Errorf("replicas %+v", st.Replicas)
		}
		return err
	})
	// An active pgha_ slot that is no longer wanted is kept until it is idle.
	if created, dropped, err := p.EnsureSlots(ctx, nil); err != nil || len(created)+len(dropped) != 0 {
		t.Errorf("EnsureSlots(nil) with an active slot = %v, %v, %v; want nothing done", created, dropped, err)
	}
	if _, _, err := r.EnsureSlots(ctx, []string{"pgha_x"}); !errors.Is(err, pgnode.ErrNotPrimary) {
		t.Errorf("EnsureSlots on a replica = %v, want ErrNotPrimary", err)
	}
	if err := r.Reload(ctx); err != nil {
		t.Errorf("Reload: %v", err)
	}

	// --- an unexpected exit is reported on Exited ---
	exited := r.Exited()
	if err := syscall.Kill(r.PID(), syscall.SIGQUIT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatal("Exited not closed after the postmaster died")
	}
	if r.Running() {
		t.Fatal("Running after the postmaster died")
	}
	if err := r.Start(ctx); err != nil {
		t.Fatalf("Start after a crash: %v", err)
	}
	if err := r.Stop(ctx, pgnode.StopFast); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	select {
	case <-r.Exited():
		t.Error("Exited closed after a requested Stop")
	default:
	}
	if r.Running() {
		t.Fatal("Running after Stop")
	}
	if err := r.Stop(ctx, pgnode.StopFast); err != nil {
		t.Fatalf("Stop when stopped: %v", err)
	}

	// --- restart vs reload ---
	checkWriteConfig(t, rcfg, up)

	// --- the fence: the postmaster dies with its agent ---
	spec := helperSpec{Name: "n2", BinDir: rcfg.BinDir, DataDir: rcfg.DataDir, RunDir: rcfg.RunDir,
		Port: rcfg.Port, SuperuserPassword: suPassword, ReplPassword: replPassword,
		Parameters: smallParams(), AllowedNetworks: rcfg.AllowedNetworks}
	helper, pmPID := startHelper(t, spec)
	if ppid := parentPID(pmPID); ppid != helper.Process.Pid {
		t.Fatalf("postmaster %d has parent %d, want the helper %d", pmPID, ppid, helper.Process.Pid)
	}
	start = time.Now()
	helper.Process.Kill() // SIGKILL: no chance to clean up
	helper.Wait()
	testutil.WaitUntil(t, 30*time.Second, "postmaster to die with its agent", func() bool {
		return !alive(pmPID)
	})
	t.Logf("postmaster gone %s after its agent was killed", time.Since(start).Round(time.Millisecond))

	// --- a postmaster that is not ours is replaced by our child ---
	helper, pmPID = startHelper(t, spec)
	if err := r.Start(ctx); err != nil {
		t.Fatalf("Start over a foreign postmaster: %v", err)
	}
	if !r.Running() || r.PID() == pmPID || alive(pmPID) {
		t.Fatalf("after Start: running=%v pid=%d, foreign %d alive=%v", r.Running(), r.PID(), pmPID, alive(pmPID))
	}
	helper.Process.Kill()
	helper.Wait()
	waitStreaming(t, ctx, r)

	// --- Close stops everything and leaves no goroutine behind ---
	pc.Close(ctx)
	if err := r.Close(); err != nil {
		t.Errorf("replica Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("primary Close: %v", err)
	}
	if p.Running() || r.Running() {
		t.Error("running after Close")
	}
	if err := p.Start(ctx); !errors.Is(err, pgnode.ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
	goleak.VerifyNone(t)
}

func checkFileMode(t *testing.T, path string) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Error(err)
		return
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %v, want 0600", path, st.Mode().Perm())
	}
	if os.Geteuid() == 0 {
		if uid := st.Sys().(*syscall.Stat_t).Uid; uid == 0 {
			t.Errorf("%s owned by root, want the postgres OS user", path)
		}
	}
}

func slotNames(t *testing.T, ctx context.Context, n *pgnode.Node) []string {
	t.Helper()
	c, err := n.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	rows, err := c.Query(ctx, "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for rows.Next() {
		var s string
		rows.Scan(&s)
		names = append(names, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

func waitStreaming(t *testing.T, ctx context.Context, r *pgnode.Node) {
	t.Helper()
	testutil.WaitFor(t, 30*time.Second, "replica streaming", func() error {
		st, err := r.Status(ctx)
		if err == nil && !(st.Running && st.InRecovery && st.Streaming) {
			err = fmt.Errorf("running %v, in recovery %v, streaming %v", st.Running, st.InRecovery, st.Streaming)
		}
		return err
	})
}

// checkWriteConfig runs on a stopped replica's data dir: restart-only
// settings report restartNeeded, reloadable ones do not.
func checkWriteConfig(t *testing.T, cfg pgnode.Config, up pgnode.Upstream) {
	t.Helper()
	write := func(mutate func(*pgnode.Config), role pgnode.Role) bool {
		t.Helper()
		c := cfg
		c.Parameters = smallParams()
		if mutate != nil {
			mutate(&c)
		}
		n := mustNew(t, c)
		defer n.Close()
		var u *pgnode.Upstream
		if role == pgnode.RoleReplica {
			u = &up
		}
		ch, err := n.WriteConfig(pgnode.Desired{Role: role, Upstream: u})
		if err != nil {
			t.Fatalf("WriteConfig: %v", err)
		}
		return ch.RestartNeeded
	}
	replica := pgnode.RoleReplica
	steps := []struct {
		name   string
		mutate func(*pgnode.Config)
		role   pgnode.Role
		want   bool
	}{
		{"unchanged", nil, replica, false},
		{"work_mem", func(c *pgnode.Config) { c.Parameters["work_mem"] = "16MB" }, replica, false},
		{"back", nil, replica, false},
		{"port", func(c *pgnode.Config) { c.Port++ }, replica, true},
		{"port back", nil, replica, true},
		{"wal_level", func(c *pgnode.Config) { c.Parameters["wal_level"] = "logical" }, replica, true},
		{"back", nil, replica, true},
		{"new slot (reloadable)", nil, replica, false},
		{"as primary", nil, pgnode.RolePrimary, true},
		{"as replica", nil, replica, true},
	}
	for _, s := range steps {
		if s.name == "new slot (reloadable)" {
			up.Slot = "pgha_other"
		}
		if got := write(s.mutate, s.role); got != s.want {
			t.Errorf("WriteConfig step %q: restartNeeded = %v, want %v", s.name, got, s.want)
		}
	}
	up.Slot = pgnode.SlotName("n2")
	write(nil, replica)

	conf, err := os.ReadFile(filepath.Join(cfg.DataDir, "postgresql.conf"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(conf)
	for _, want := range []string{"# Managed by pgha", "include_if_exists = 'postgresql.base.conf'\n",
		"primary_slot_name = 'pgha_n2'\n", "hot_standby = 'on'\n", "unix_socket_directories = ''\n",
		"passfile=" + filepath.Join(cfg.RunDir, "pgpass"), "application_name=n2"} {
		if !strings.Contains(text, want) {
			t.Errorf("postgresql.conf lacks %q:\n%s", want, text)
		}
	}
	// Settings are sorted, the include comes before them.
	var keys []string
	sc := bufio.NewScanner(bytes.NewReader(conf))
	for sc.Scan() {
		if k, _, ok := strings.Cut(sc.Text(), " = "); ok && !strings.HasPrefix(k, "#") {
			keys = append(keys, k)
		}
	}
	if len(keys) < 2 || keys[0] != "include_if_exists" || !slices.IsSorted(keys[1:]) {
		t.Errorf("postgresql.conf keys not include-then-sorted: %v", keys)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "postgresql.base.conf")); err != nil {
		t.Errorf("initdb's config not kept: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "standby.signal")); err != nil {
		t.Errorf("standby.signal missing on a replica: %v", err)
	}
}

// startHelper runs the test binary as a stand-in agent that starts
// PostgreSQL, and returns it with the postmaster's pid.
func startHelper(t *testing.T, spec helperSpec) (*exec.Cmd, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), spec.env())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close() })
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "READY" {
				ready <- true
				return
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			cmd.Wait()
			t.Fatalf("helper failed: %s", stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("helper not ready after 60 s: %s", stderr.String())
	}
	data, err := os.ReadFile(filepath.Join(spec.DataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0]))
	if err != nil {
		t.Fatal(err)
	}
	if !alive(pid) {
		t.Fatalf("postmaster %d from the helper is not alive", pid)
	}
	return cmd, pid
}

// procStat returns the state letter and parent pid from /proc/pid/stat.
func procStat(pid int) (state byte, ppid int, ok bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	i := bytes.LastIndexByte(data, ')')
	f := strings.Fields(string(data[i+2:]))
	if len(f) < 2 {
		return 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	return f[0][0], ppid, true
}

// alive treats a zombie as dead: whether anyone reaps it is up to init.
func alive(pid int) bool {
	s, _, ok := procStat(pid)
	return ok && s != 'Z' && s != 'X'
}

func parentPID(pid int) int {
	_, ppid, _ := procStat(pid)
	return ppid
}

// TestRotateLog: postgresql.log past its limit is copied to .1 and
// emptied in place (the server keeps its descriptor); older files shift
// and at most keep are kept.
func TestRotateLog(t *testing.T) {
	base := tempDir(t)
	cfg := nodeConfig(t, base, "n1", 5432)
	n := mustNew(t, cfg)
	defer n.Close()
	if err := os.MkdirAll(cfg.RunDir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := n.LogFile()
	// The server's descriptor: opened once, appended to throughout.
	server, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	for round := 1; round <= 4; round++ {
		fmt.Fprintf(server, "round %d %s\n", round, strings.Repeat("x", 200))
		if rotated, err := n.RotateLog(100, 3); err != nil || !rotated {
			t.Fatalf("round %d: rotated %v, %v", round, rotated, err)
		}
		if st, _ := os.Stat(path); st.Size() != 0 {
			t.Fatalf("round %d: log not emptied (%d bytes)", round, st.Size())
		}
	}
	fmt.Fprintln(server, "after")
	if b, _ := os.ReadFile(path); string(b) != "after\n" {
		t.Fatalf("the server's next line = %q, want it at the start of the emptied log", b)
	}
	for i, want := range map[int]string{1: "round 4", 2: "round 3", 3: "round 2"} {
		if b, err := os.ReadFile(fmt.Sprintf("%s.%d", path, i)); err != nil || !strings.HasPrefix(string(b), want) {
			t.Errorf("%s.%d = %.10q, %v; want %q", path, i, b, err, want)
		}
	}
	if _, err := os.Stat(path + ".4"); err == nil {
		t.Error("more than 3 rotated files kept")
	}
	if rotated, _ := n.RotateLog(100, 3); rotated {
		t.Error("a small log was rotated")
	}
}
