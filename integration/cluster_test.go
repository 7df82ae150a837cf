// Package integration runs real pgha agents (the built binary) managing
// real PostgreSQL 15 processes on 127.0.0.1, and checks what a user would
// check. Faults are real signals to real processes, by PID.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/internal/supervise"
	"github.com/pgha/pgha/internal/testutil"
)

// pghaBin is the binary under test: $PGHA_BIN, or built by TestMain.
var pghaBin string

func TestMain(m *testing.M) {
	pghaBin = os.Getenv("PGHA_BIN")
	var tmp string
	if pghaBin == "" {
		var err error
		tmp, err = os.MkdirTemp("", "pgha-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		pghaBin = filepath.Join(tmp, "pgha")
		out, err := exec.Command("go", "build", "-o", pghaBin, "../cmd/pgha").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build pgha: %v\n%s", err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	if tmp != "" {
		os.RemoveAll(tmp)
	}
	os.Exit(code)
}

const (
	superPass = "it-super-secret"
	replPass  = "it-repl-secret"
)

// Node is one agent of a test cluster.
type Node struct {
	Name                  string
	Dir                   string
	ConfigPath            string
	LogPath               string
	PG, API, Raft, Gossip int
	Write, Read           int // proxy ports
	// Env is added to the agent's environment (PGHA_* settings).
	Env []string
	// APIOptions, when set, is how Client reaches the API (https,
	// credentials).
	APIOptions *api.ClientOptions
	// proc is the running agent; nil before Start and once the test has
	// seen it exit (Kill, Stop, WaitExit, failIfExited).
	proc *supervise.Process
}

// Cluster is a set of agents on loopback with their own directories.
type Cluster struct {
	t     *testing.T
	Dir   string
	Nodes []*Node
	sup   *supervise.Supervisor // the agents and other processes the test starts
}

// newCluster lays out n nodes (names n1..nN) that form a cluster with
// bootstrap_expect n. Nothing runs until Start.
func newCluster(t *testing.T, n int) *Cluster {
	t.Helper()
	if _, err := os.Stat("/usr/lib/postgresql/15/bin/postgres"); err != nil {
		if _, lerr := exec.LookPath("pg_config"); lerr != nil {
			t.Skip("PostgreSQL 15 binaries not found (apt-get install -y postgresql-15)")
		}
	}
	dir := traversableTempDir(t)
	c := &Cluster{t: t, Dir: dir, sup: supervise.New(supervise.Options{})}
	for i := 1; i <= n; i++ {
		c.Nodes = append(c.Nodes, c.layout(fmt.Sprintf("n%d", i)))
	}
	for _, nd := range c.Nodes {
		c.writeConfig(nd, n, c.gossipAddrs(nd))
	}
	t.Cleanup(c.stopAll)
	return c
}

// traversableTempDir returns a temp dir that the unprivileged postgres
// user can traverse (t.TempDir's chain is 0700 when we run as root).
func traversableTempDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func (c *Cluster) layout(name string) *Node {
	nd := &Node{Name: name, Dir: filepath.Join(c.Dir, name)}
	nd.ConfigPath = filepath.Join(c.Dir, name+".yml")
	nd.LogPath = filepath.Join(c.Dir, name+".log")
	nd.PG, nd.API, nd.Raft = testutil.FreePort(c.t), testutil.FreePort(c.t), testutil.FreePort(c.t)
	nd.Gossip = testutil.FreePort(c.t) // free for UDP too: memberlist binds both
	nd.Write, nd.Read = testutil.FreePort(c.t), testutil.FreePort(c.t)
	return nd
}

func (c *Cluster) gossipAddrs(except *Node) []string {
	var out []string
	for _, o := range c.Nodes {
		if o != except {
			out = append(out, fmt.Sprintf("127.0.0.1:%d", o.Gossip))
		}
	}
	return out
}

func (c *Cluster) writeConfig(nd *Node, expect int, join []string) {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\ncluster: it\ndata_dir: %s\nbootstrap_expect: %d\nlog_level: debug\n", nd.Name, nd.Dir, expect)
	fmt.Fprintf(&b, "raft:\n  addr: 127.0.0.1:%d\n", nd.Raft)
	fmt.Fprintf(&b, "gossip:\n  addr: 127.0.0.1:%d\n", nd.Gossip)
	if len(join) > 0 {
		fmt.Fprintf(&b, "  join: [%s]\n", strings.Join(join, ", "))
	}
	fmt.Fprintf(&b, "api:\n  addr: 127.0.0.1:%d\n", nd.API)
	fmt.Fprintf(&b, "proxy:\n  write_addr: 127.0.0.1:%d\n  read_addr: 127.0.0.1:%d\n", nd.Write, nd.Read)
	fmt.Fprintf(&b, "postgresql:\n  listen: 127.0.0.1\n  port: %d\n", nd.PG)
	fmt.Fprintf(&b, "  superuser:\n    password: %s\n  replication:\n    password: %s\n", superPass, replPass)
	b.WriteString("  max_slot_wal_keep_size: 256MB\n  parameters:\n    shared_buffers: 32MB\n    max_connections: \"20\"\n")
	if err := os.WriteFile(nd.ConfigPath, []byte(b.String()), 0o600); err != nil {
		c.t.Fatal(err)
	}
}

// addNode lays out a node that joins later (bootstrap_expect 0, no join
// list: `pgha join` brings it in).
func (c *Cluster) addNode(name string) *Node {
	nd := c.layout(name)
	c.writeConfig(nd, 0, nil)
	c.Nodes = append(c.Nodes, nd)
	return nd
}

// Start starts the agent of nd.
func (c *Cluster) Start(nd *Node) {
	c.t.Helper()
	c.start(nd, nil)
}

// start starts nd's agent, through wrapper if set (`ip netns exec NS`,
// which execs the agent in place, so the PID we hold is the agent's).
func (c *Cluster) start(nd *Node, wrapper []string) {
	c.t.Helper()
	p, err := c.sup.Start(supervise.Spec{
		Name: nd.Name, Wrapper: wrapper, Argv: []string{pghaBin, "run", "-c", nd.ConfigPath},
		Env: nd.Env, LogPath: nd.LogPath, OwnGroup: true,
	})
	if err != nil {
		c.t.Fatal(err)
	}
	nd.proc = p
}

func (c *Cluster) StartAll() {
	for _, nd := range c.Nodes {
		c.Start(nd)
	}
}

// Kill sends SIGKILL to nd's agent and waits for it to exit.
func (c *Cluster) Kill(nd *Node) {
	c.t.Helper()
	if nd.proc == nil {
		return
	}
	nd.proc.Kill()
	nd.proc = nil
}

// Stop sends SIGTERM to nd's agent and waits (generously) for a clean exit.
func (c *Cluster) Stop(nd *Node) {
	c.t.Helper()
	if nd.proc == nil {
		return
	}
	if !nd.proc.Stop(90 * time.Second) {
		c.t.Errorf("%s did not stop within 90s after SIGTERM; killed it", nd.Name)
	}
	nd.proc = nil
}

// WaitExit waits for an agent that stops by itself (after leave).
func (c *Cluster) WaitExit(nd *Node, timeout time.Duration) {
	c.t.Helper()
	if nd.proc == nil {
		return
	}
	if !nd.proc.Wait(timeout) {
		c.t.Fatalf("%s still running %s after it should have stopped", nd.Name, timeout)
	}
	nd.proc = nil
}

// stopAll stops the agents one by one, then finishes.
func (c *Cluster) stopAll() {
	for _, nd := range c.Nodes {
		c.Stop(nd)
	}
	c.finish()
}

// finish runs once the agents are stopped: anything else the test started
// with c.sup ends (with the supervisor's goroutines), a postmaster that
// outlived its agent is reported, and the logs are dumped on failure.
func (c *Cluster) finish() {
	c.sup.Close()
	c.checkPostmasters()
	if c.t.Failed() {
		for _, nd := range c.Nodes {
			c.dumpLog(nd)
		}
	}
}

// checkPostmasters reports and ends a postmaster that outlived its agent:
// the agents' postmasters die with them (parent-death signal), so one
// that survived is a bug. postmaster.pid can outlive an immediate
// shutdown; only a live postgres process counts.
func (c *Cluster) checkPostmasters() {
	for _, nd := range c.Nodes {
		pid := postmasterPID(nd)
		if pid <= 0 || syscall.Kill(pid, 0) != nil {
			continue
		}
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.HasPrefix(string(comm), "postgres") {
			c.t.Errorf("%s: postmaster %d still running after its agent stopped", nd.Name, pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func (c *Cluster) dumpLog(nd *Node) {
	data, err := os.ReadFile(nd.LogPath)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 80 {
		lines = lines[len(lines)-80:]
	}
	c.t.Logf("---- last lines of %s ----\n%s", nd.LogPath, strings.Join(lines, "\n"))
	pglog := filepath.Join(nd.Dir, "run", "postgresql.log")
	if data, err := os.ReadFile(pglog); err == nil {
		l := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(l) > 30 {
			l = l[len(l)-30:]
		}
		c.t.Logf("---- last lines of %s ----\n%s", pglog, strings.Join(l, "\n"))
	}
}

func postmasterPID(nd *Node) int {
	data, err := os.ReadFile(filepath.Join(nd.Dir, "pgdata", "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.SplitN(string(data), "\n", 2)[0])
	return pid
}

// Client returns an API client for nd.
func (nd *Node) Client() *api.Client {
	if nd.APIOptions != nil {
		return api.NewClientWith(fmt.Sprintf("127.0.0.1:%d", nd.API), *nd.APIOptions)
	}
	return api.NewClient(fmt.Sprintf("127.0.0.1:%d", nd.API))
}

// DSN is a libpq URL for nd's PostgreSQL as the superuser.
func (nd *Node) DSN() string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword("postgres", superPass), Host: fmt.Sprintf("127.0.0.1:%d", nd.PG), Path: "/postgres", RawQuery: "connect_timeout=3&sslmode=prefer"}
	return u.String()
}

// Cluster asks any running agent for the cluster view.
func (c *Cluster) Info() (api.ClusterInfo, error) {
	return firstClusterView(c.Nodes, (*Node).Client, nil)
}

// firstClusterView asks the running agents of nodes, except those named
// in skip (cut off from the test process), for the cluster view through
// client, and returns the first answer.
func firstClusterView(nodes []*Node, client func(*Node) *api.Client, skip []string) (api.ClusterInfo, error) {
	var lastErr error
	for _, nd := range nodes {
		if nd.proc == nil || slices.Contains(skip, nd.Name) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		ci, err := client(nd).Cluster(ctx)
		cancel()
		if err == nil {
			return ci, nil
		}
		lastErr = fmt.Errorf("%s: %w", nd.Name, err)
	}
	if lastErr == nil {
		lastErr = errors.New("no agent reachable")
	}
	return api.ClusterInfo{}, lastErr
}

// WaitHealthy waits until the named members are there: exactly one
// primary running and every other listed member streaming.
func (c *Cluster) WaitHealthy(timeout time.Duration, names ...string) api.ClusterInfo {
	c.t.Helper()
	return waitHealthy(c.t, c, timeout, names, (*Node).Client, func() (api.ClusterInfo, error) { return c.Info() })
}

// waitHealthy is WaitHealthy for any way of reaching the agents (loopback
// or network namespaces).
func waitHealthy(t *testing.T, c *Cluster, timeout time.Duration, names []string, client func(*Node) *api.Client, info func() (api.ClusterInfo, error)) api.ClusterInfo {
	t.Helper()
	var ci api.ClusterInfo
	testutil.WaitFor(t, timeout, fmt.Sprintf("members %v healthy", names), func() error {
		c.failIfExited()
		var err error
		ci, err = info()
		if err != nil {
			return err
		}
		byName := map[string]api.MemberInfo{}
		for _, m := range ci.Members {
			byName[m.Name] = m
		}
		primaries := 0
		for _, n := range names {
			m, ok := byName[n]
			if !ok {
				return fmt.Errorf("%s not listed yet", n)
			}
			switch {
			case m.Role == "leader" && m.State == "running":
				primaries++
			case (m.Role == "replica" || m.Role == "sync_standby") && m.State == "streaming":
			default:
				return fmt.Errorf("%s is %s/%s (%s%s)", n, m.Role, m.State, m.Waiting, m.Error)
			}
		}
		if primaries != 1 {
			return fmt.Errorf("%d primaries among %v", primaries, names)
		}
		// Gossip may still carry a restarted node's previous status: ask
		// each running agent itself too.
		for _, n := range names {
			nd := c.Node(n)
			if nd.proc == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			h, ok, err := client(nd).Health(ctx)
			cancel()
			if err != nil || !ok || (h.State != "running" && h.State != "streaming") {
				return fmt.Errorf("%s says %s (%v, %v)", n, h.State, ok, err)
			}
		}
		return nil
	})
	return ci
}

// failIfExited stops the test at once when an agent that should run has
// exited, instead of waiting for a timeout.
func (c *Cluster) failIfExited() {
	c.t.Helper()
	for _, nd := range c.Nodes {
		if nd.proc != nil && nd.proc.Exited() {
			status := nd.proc.Status()
			nd.proc = nil
			c.t.Fatalf("agent %s exited unexpectedly (%s); see its log below", nd.Name, status)
		}
	}
}

func (c *Cluster) Node(name string) *Node {
	for _, nd := range c.Nodes {
		if nd.Name == name {
			return nd
		}
	}
	c.t.Fatalf("no node %s", name)
	return nil
}

// connect opens a pgx connection to nd.
func connect(t *testing.T, nd *Node) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, nd.DSN())
	if err != nil {
		t.Fatalf("connect to %s: %v", nd.Name, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// cli runs the pgha binary with args and returns stdout, stderr and the
// exit code.
func cli(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, pghaBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run pgha %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func decodeJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
}
