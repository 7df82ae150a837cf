//go:build chaos && linux

package integration

// The chaos test's view of a cluster, the same on loopback and in network
// namespaces: how to reach each node's API, PostgreSQL and proxy, how to
// start it, and a one-shot convergence check.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgha/pgha/api"
	"golang.org/x/sys/unix"
)

// chaosEnv is a 3-node cluster on loopback (lab == nil) or one node per
// network namespace.
type chaosEnv struct {
	t    *testing.T
	c    *Cluster   // node bookkeeping (cmd, exited, logs) in both modes
	nc   *nsCluster // nil on loopback
	lab  *netLab    // nil on loopback
	sync bool       // run with synchronous_mode on
	// syncOn: synchronous mode has been turned on, so a whole cluster has
	// a synchronous standby.
	syncOn bool
}

// chaosNetnsUnavailable says why network namespaces cannot be used here,
// or "" when they can (the same checks as nsRequireNetns, without skipping).
func chaosNetnsUnavailable() string {
	if v := os.Getenv("CHAOS_NETNS"); v == "0" || v == "false" {
		return "CHAOS_NETNS=0"
	}
	if os.Geteuid() != 0 {
		return "not root"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "no `ip` command (apt-get install -y iproute2)"
	}
	name := fmt.Sprintf("pgha-%d-cprobe", os.Getpid())
	if out, err := nsIP("netns", "add", name); err != nil {
		return fmt.Sprintf("`ip netns add` fails: %v: %s", err, out)
	}
	if out, err := nsIP("netns", "del", name); err != nil {
		return fmt.Sprintf("`ip netns del` fails: %v: %s", err, out)
	}
	return ""
}

// newChaosEnv lays out (does not start) the cluster: in namespaces when
// possible, else on loopback; noNetns is the reason namespaces are not
// used ("" when they are).
func newChaosEnv(t *testing.T, sync bool) (e *chaosEnv, noNetns string) {
	t.Helper()
	e = &chaosEnv{t: t, sync: sync}
	if noNetns = chaosNetnsUnavailable(); noNetns != "" {
		e.c = newCluster(t, 3)
		return e, noNetns
	}
	e.lab = newNetLab(t, 3)
	e.nc = newNSCluster(t, e.lab)
	e.c = e.nc.c
	// newNSCluster leaves the proxy on its default 127.0.0.1 ports, which
	// only the namespace itself reaches: put it on the node's address.
	for _, nd := range e.c.Nodes {
		ip := e.nc.IP[nd.Name]
		nd.Write, nd.Read = 5000, 5001
		data, err := os.ReadFile(nd.ConfigPath)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(data), "\nproxy:") {
			t.Fatalf("%s already has a proxy section; the chaos test adds its own", nd.ConfigPath)
		}
		data = append(data, fmt.Sprintf("proxy:\n  write_addr: %s:%d\n  read_addr: %s:%d\n", ip, nd.Write, ip, nd.Read)...)
		if err := os.WriteFile(nd.ConfigPath, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return e, ""
}

func (e *chaosEnv) mode() string {
	if e.lab != nil {
		return "netns"
	}
	return "loopback"
}

func (e *chaosEnv) names() []string {
	var out []string
	for _, nd := range e.c.Nodes {
		out = append(out, nd.Name)
	}
	return out
}

// host is the address at which the test process reaches nd.
func (e *chaosEnv) host(nd *Node) string {
	if e.nc != nil {
		return e.nc.IP[nd.Name]
	}
	return "127.0.0.1"
}

func (e *chaosEnv) apiAddr(nd *Node) string { return fmt.Sprintf("%s:%d", e.host(nd), nd.API) }

func (e *chaosEnv) client(nd *Node) *api.Client { return api.NewClient(e.apiAddr(nd)) }

func (e *chaosEnv) start(nd *Node) {
	if e.nc != nil {
		e.nc.Start(nd)
	} else {
		e.c.Start(nd)
	}
}

func (e *chaosEnv) startAll() {
	for _, nd := range e.c.Nodes {
		e.start(nd)
	}
}

// exitedUnexpectedly names an agent that should run but exited by itself.
func (e *chaosEnv) exitedUnexpectedly() error {
	for _, nd := range e.c.Nodes {
		if nd.proc != nil && nd.proc.Exited() {
			status := nd.proc.Status()
			nd.proc = nil
			return fmt.Errorf("agent %s exited by itself (%s)", nd.Name, status)
		}
	}
	return nil
}

// info asks the running agents, except those in skip, for the cluster view.
func (e *chaosEnv) info(skip ...string) (api.ClusterInfo, error) {
	return firstClusterView(e.c.Nodes, e.client, skip)
}

// pgConfig is a pgx configuration for port on nd as the superuser. With
// inNS (namespaces only) the connection is opened from inside nd's own
// namespace, so it works while nd is cut off from the test process.
func (e *chaosEnv) pgConfig(nd *Node, port int, inNS bool, params map[string]string) (*pgx.ConnConfig, error) {
	u := url.URL{Scheme: "postgres", User: url.UserPassword("postgres", superPass),
		Host: net.JoinHostPort(e.host(nd), strconv.Itoa(port)), Path: "/postgres", RawQuery: "sslmode=disable"}
	cfg, err := pgx.ParseConfig(u.String())
	if err != nil {
		return nil, err
	}
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	if inNS && e.nc != nil {
		cfg.DialFunc = chaosDialInNetns(e.nc.NS[nd.Name])
	}
	return cfg, nil
}

// connectPG opens a superuser connection to nd's PostgreSQL (bounded).
func (e *chaosEnv) connectPG(ctx context.Context, nd *Node) (*pgx.Conn, error) {
	cfg, err := e.pgConfig(nd, nd.PG, false, map[string]string{"synchronous_commit": "local"})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}

// chaosDialInNetns dials from inside the named network namespace: a
// goroutine locked to its OS thread enters the namespace and creates the
// socket there (a socket stays in the namespace it was created in). The
// thread is never unlocked, so Go discards it when the goroutine returns
// and the namespace switch cannot leak to any other goroutine.
func chaosDialInNetns(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			f, err := os.Open(filepath.Join("/run/netns", ns))
			if err != nil {
				ch <- result{nil, err}
				return
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				ch <- result{nil, fmt.Errorf("setns %s: %w", ns, err)}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// procStat returns the parent PID and process group of pid.
func procStat(pid int) (ppid, pgrp int, comm string, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, "", err
	}
	s := string(data)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return 0, 0, "", fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	comm = s[open+1 : closing]
	f := strings.Fields(s[closing+1:])
	if len(f) < 3 {
		return 0, 0, "", fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	ppid, _ = strconv.Atoi(f[1])
	pgrp, _ = strconv.Atoi(f[2])
	return ppid, pgrp, comm, nil
}

// postmaster returns the PID of nd's running postmaster after checking it
// is ours: a postgres process, child of nd's agent, leader of its own
// process group (so signalling -pid reaches only that PostgreSQL).
func (e *chaosEnv) postmaster(nd *Node) (int, error) {
	if nd.proc == nil {
		return 0, fmt.Errorf("%s: agent not running", nd.Name)
	}
	pid := postmasterPID(nd)
	if pid <= 0 {
		return 0, fmt.Errorf("%s: no postmaster.pid", nd.Name)
	}
	ppid, pgrp, comm, err := procStat(pid)
	if err != nil {
		return 0, fmt.Errorf("%s: postmaster %d: %w", nd.Name, pid, err)
	}
	if ppid != nd.proc.PID() || pgrp != pid || !strings.HasPrefix(comm, "postgres") {
		return 0, fmt.Errorf("%s: pid %d (%s, parent %d, group %d) is not the agent's postmaster", nd.Name, pid, comm, ppid, pgrp)
	}
	return pid, nil
}

// postgresChildren lists the processes whose parent is the postmaster pm.
// PostgreSQL's children call setsid(): each is its own process group, so
// signalling -pm reaches the postmaster alone; a whole-node fault must
// signal them one by one.
func postgresChildren(pm int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, de := range entries {
		pid, err := strconv.Atoi(de.Name())
		if err != nil {
			continue
		}
		if ppid, _, comm, err := procStat(pid); err == nil && ppid == pm && strings.HasPrefix(comm, "postgres") {
			out = append(out, pid)
		}
	}
	return out
}

// convergence checks once that the cluster is whole: every member listed,
// exactly one running primary that is also the Raft leader, every other
// member streaming, all on the primary's timeline (as gossip and each
// agent itself say), replicas within 1 MB, and in synchronous mode a
// synchronous standby recorded.
func (e *chaosEnv) convergence() (api.ClusterInfo, error) {
	if err := e.exitedUnexpectedly(); err != nil {
		return api.ClusterInfo{}, err
	}
	ci, err := e.info()
	if err != nil {
		return ci, err
	}
	byName := map[string]api.MemberInfo{}
	for _, m := range ci.Members {
		byName[m.Name] = m
	}
	primary, syncs := "", 0
	for _, n := range e.names() {
		m, ok := byName[n]
		if !ok {
			return ci, fmt.Errorf("%s not listed", n)
		}
		switch {
		case m.Role == "leader" && m.State == "running":
			if primary != "" {
				return ci, fmt.Errorf("two running primaries: %s and %s", primary, n)
			}
			primary = n
		case (m.Role == "replica" || m.Role == "sync_standby") && m.State == "streaming":
			if m.Role == "sync_standby" {
				syncs++
			}
			if m.LagBytes != nil && *m.LagBytes > 1<<20 {
				return ci, fmt.Errorf("%s lags %d bytes", n, *m.LagBytes)
			}
		default:
			return ci, fmt.Errorf("%s is %s/%s (%s%s)", n, m.Role, m.State, m.Waiting, m.Error)
		}
	}
	if primary == "" {
		return ci, errors.New("no running primary")
	}
	if ci.Primary != primary || ci.Leader != primary {
		return ci, fmt.Errorf("primary record %q, raft leader %q, running primary %q", ci.Primary, ci.Leader, primary)
	}
	if e.syncOn && syncs == 0 {
		return ci, fmt.Errorf("no synchronous standby yet (%s)", ci.Sync)
	}
	tl := byName[primary].Timeline
	for _, n := range e.names() {
		if m := byName[n]; m.Timeline != tl {
			return ci, fmt.Errorf("%s on timeline %d, primary %s on %d", n, m.Timeline, primary, tl)
		}
		nd := e.c.Node(n)
		if nd.proc == nil {
			return ci, fmt.Errorf("%s: agent not running", n)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		h, ok, err := e.client(nd).Health(ctx)
		cancel()
		if err != nil || !ok || (h.State != "running" && h.State != "streaming") {
			return ci, fmt.Errorf("%s says %s (%v, %v)", n, h.State, ok, err)
		}
		if h.Timeline != tl {
			return ci, fmt.Errorf("%s says timeline %d, primary %s on %d", n, h.Timeline, primary, tl)
		}
	}
	return ci, nil
}

// replicasOf lists the members other than primary, sorted by name.
func replicasOf(ci api.ClusterInfo, primary string) []string {
	var out []string
	for _, m := range ci.Members {
		if m.Name != primary {
			out = append(out, m.Name)
		}
	}
	sort.Strings(out)
	return out
}

func roleOf(ci api.ClusterInfo, name string) string {
	for _, m := range ci.Members {
		if m.Name == name {
			if m.Role == "leader" {
				return "primary"
			}
			return m.Role
		}
	}
	return "?"
}

// saveLogs copies every node's agent and PostgreSQL log to dir (kept after
// the test's temporary directory is removed).
func (e *chaosEnv) saveLogs(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, nd := range e.c.Nodes {
		for src, dst := range map[string]string{
			nd.LogPath: nd.Name + ".log",
			filepath.Join(nd.Dir, "run", "postgresql.log"): nd.Name + "-postgresql.log",
			nd.ConfigPath: nd.Name + ".yml",
		} {
			if data, err := os.ReadFile(src); err == nil {
				if err := os.WriteFile(filepath.Join(dir, dst), data, 0o644); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
