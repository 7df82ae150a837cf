package integration

// Network-namespace lab for partition tests: one namespace per node, each
// with a veth pair whose root-side end is a port of a Linux bridge in the
// root namespace. The addresses (10.213.X.0/24) exist only on the test's
// own veths and bridge; nothing is routed anywhere else. The test process
// reaches every node through the bridge (which has 10.213.X.254), and
// cutting a node off is `ip link set <its root-side veth> down`.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/internal/supervise"
	"github.com/pgha/pgha/internal/testutil"
)

// nsRequireNetns skips the test unless we are root, `ip` is installed and
// `ip netns add` actually works here (it does not in many containers).
func nsRequireNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the partition test creates network namespaces, veths and a bridge")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the `ip` command (apt-get install -y iproute2)")
	}
	name := fmt.Sprintf("pgha-%d-probe", os.Getpid())
	if out, err := nsIP("netns", "add", name); err != nil {
		t.Skipf("`ip netns add` does not work here (%v: %s); network namespaces unavailable", err, out)
	}
	if out, err := nsIP("netns", "del", name); err != nil {
		t.Fatalf("ip netns del %s: %v: %s", name, err, out)
	}
}

// nsIP runs `ip args...` with a bounded time.
func nsIP(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// netLab is the set of namespaces, veths and the bridge of one test run.
type netLab struct {
	t      *testing.T
	Prefix string // "10.213.X": the /24 of this run
	CIDR   string // "10.213.X.0/24"
	Bridge string
	NS     []string // namespace names, index i is node i+1
	Veth   []string // root-side veth of each namespace
	IP     []string // address of each namespace's eth0
}

// nsPickSubnet picks a 10.213.X.0/24 that no address or route of the root
// namespace overlaps (a stale lab or another concurrent run).
func nsPickSubnet(t *testing.T) int {
	t.Helper()
	var used []*net.IPNet
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			used = append(used, n)
		}
	}
	routes, _ := nsIP("-4", "route", "show")
	for _, line := range strings.Split(routes, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == "default" {
			continue
		}
		dst := f[0]
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if _, n, err := net.ParseCIDR(dst); err == nil {
			used = append(used, n)
		}
	}
	start := os.Getpid() % 250
	for i := 0; i < 250; i++ {
		x := 1 + (start+i)%250
		_, cand, _ := net.ParseCIDR(fmt.Sprintf("10.213.%d.0/24", x))
		clash := false
		for _, n := range used {
			if n.Contains(cand.IP) || cand.Contains(n.IP) {
				clash = true
				break
			}
		}
		if !clash {
			return x
		}
	}
	t.Skip("no free 10.213.X.0/24 on this machine for the test's private network")
	return 0
}

// newNetLab builds n namespaces wired to a fresh bridge. Everything is
// removed in t.Cleanup, also when the test fails half-way.
func newNetLab(t *testing.T, n int) *netLab {
	t.Helper()
	pid := os.Getpid()
	x := nsPickSubnet(t)
	lab := &netLab{
		t:      t,
		Prefix: fmt.Sprintf("10.213.%d", x),
		CIDR:   fmt.Sprintf("10.213.%d.0/24", x),
		Bridge: fmt.Sprintf("pghb%d", pid), // interface names: at most 15 bytes
	}
	t.Cleanup(lab.teardown)
	must := func(args ...string) {
		t.Helper()
		if out, err := nsIP(args...); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	must("link", "add", lab.Bridge, "type", "bridge")
	must("addr", "add", lab.Prefix+".254/24", "dev", lab.Bridge)
	must("link", "set", lab.Bridge, "up")
	for i := 1; i <= n; i++ {
		ns := fmt.Sprintf("pgha-%d-n%d", pid, i)
		veth := fmt.Sprintf("pghv%dn%d", pid, i)
		ip := fmt.Sprintf("%s.%d", lab.Prefix, i)
		must("netns", "add", ns)
		lab.NS = append(lab.NS, ns)
		must("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
		lab.Veth = append(lab.Veth, veth)
		lab.IP = append(lab.IP, ip)
		must("link", "set", veth, "master", lab.Bridge)
		must("link", "set", veth, "up")
		must("-n", ns, "link", "set", "lo", "up")
		must("-n", ns, "addr", "add", ip+"/24", "dev", "eth0")
		must("-n", ns, "link", "set", "eth0", "up")
	}
	// The bridge forwards once its ports are up; check each namespace is
	// reachable from the root namespace (TCP connect to a closed port
	// answers with a reset, so "connection refused" proves the path).
	for i, ip := range lab.IP {
		testutil.WaitFor(t, 10*time.Second, "root namespace reaches "+lab.NS[i], func() error {
			c, err := net.DialTimeout("tcp", ip+":9", 500*time.Millisecond)
			if err == nil {
				c.Close()
				return nil
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				return nil
			}
			return err
		})
	}
	t.Logf("network lab: bridge %s %s.254, namespaces %v at %v", lab.Bridge, lab.Prefix, lab.NS, lab.IP)
	return lab
}

// Isolate cuts namespace i (0-based) off the bridge: its root-side veth
// goes down, so it reaches neither the other nodes nor the test process.
// Inside the namespace its own address still works.
func (lab *netLab) Isolate(i int) {
	lab.t.Helper()
	if out, err := nsIP("link", "set", lab.Veth[i], "down"); err != nil {
		lab.t.Fatalf("isolate %s: %v: %s", lab.NS[i], err, out)
	}
}

// Heal reconnects namespace i.
func (lab *netLab) Heal(i int) {
	lab.t.Helper()
	if out, err := nsIP("link", "set", lab.Veth[i], "up"); err != nil {
		lab.t.Fatalf("heal %s: %v: %s", lab.NS[i], err, out)
	}
}

func (lab *netLab) teardown() {
	// Deleting a namespace destroys its eth0 and with it the veth peer;
	// delete the root-side veth explicitly too in case a namespace is gone.
	for _, ns := range lab.NS {
		if out, err := nsIP("netns", "del", ns); err != nil {
			lab.t.Errorf("cleanup: ip netns del %s: %v: %s", ns, err, out)
		}
	}
	for _, v := range lab.Veth {
		if _, err := nsIP("link", "show", v); err == nil {
			if out, err := nsIP("link", "del", v); err != nil {
				lab.t.Errorf("cleanup: ip link del %s: %v: %s", v, err, out)
			}
		}
	}
	if _, err := nsIP("link", "show", lab.Bridge); err == nil {
		if out, err := nsIP("link", "del", lab.Bridge); err != nil {
			lab.t.Errorf("cleanup: ip link del %s: %v: %s", lab.Bridge, err, out)
		}
	}
}

// nsCluster is a pgha cluster whose agents run one per namespace of a
// netLab. It reuses Cluster's Node bookkeeping (process, logs) but
// starts the agents with `ip netns exec` and talks to them over the
// bridge.
type nsCluster struct {
	t     *testing.T
	lab   *netLab
	c     *Cluster // for Node lookup, starting agents, failIfExited and finish
	IP    map[string]string
	NS    map[string]string
	index map[string]int
}

const (
	nsPGPort     = 5432
	nsAPIPort    = 8008
	nsRaftPort   = 8300
	nsGossipPort = 7946
)

// newNSCluster lays out one node per namespace of lab (names n1..nN) with
// the configuration layout of writeConfig, on the namespace's address.
func newNSCluster(t *testing.T, lab *netLab) *nsCluster {
	t.Helper()
	if _, err := os.Stat("/usr/lib/postgresql/15/bin/postgres"); err != nil {
		t.Skip("PostgreSQL 15 binaries not found at /usr/lib/postgresql/15/bin (apt-get install -y postgresql-15)")
	}
	dir := traversableTempDir(t)
	nc := &nsCluster{t: t, lab: lab, c: &Cluster{t: t, Dir: dir, sup: supervise.New(supervise.Options{})},
		IP: map[string]string{}, NS: map[string]string{}, index: map[string]int{}}
	n := len(lab.NS)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("n%d", i+1)
		nd := &Node{Name: name, Dir: filepath.Join(dir, name),
			ConfigPath: filepath.Join(dir, name+".yml"), LogPath: filepath.Join(dir, name+".log"),
			PG: nsPGPort, API: nsAPIPort, Raft: nsRaftPort, Gossip: nsGossipPort}
		nc.c.Nodes = append(nc.c.Nodes, nd)
		nc.IP[name], nc.NS[name], nc.index[name] = lab.IP[i], lab.NS[i], i
	}
	for _, nd := range nc.c.Nodes {
		ip := nc.IP[nd.Name]
		var join []string
		for _, o := range nc.c.Nodes {
			if o != nd {
				join = append(join, fmt.Sprintf("%s:%d", nc.IP[o.Name], nsGossipPort))
			}
		}
		var b strings.Builder
		fmt.Fprintf(&b, "name: %s\ncluster: it\ndata_dir: %s\nbootstrap_expect: %d\nlog_level: debug\n", nd.Name, nd.Dir, n)
		fmt.Fprintf(&b, "raft:\n  addr: %s:%d\n", ip, nsRaftPort)
		fmt.Fprintf(&b, "gossip:\n  addr: %s:%d\n  join: [%s]\n", ip, nsGossipPort, strings.Join(join, ", "))
		fmt.Fprintf(&b, "api:\n  addr: %s:%d\n", ip, nsAPIPort)
		fmt.Fprintf(&b, "postgresql:\n  listen: %s\n  port: %d\n  allowed_networks: [%s]\n", ip, nsPGPort, lab.CIDR)
		fmt.Fprintf(&b, "  superuser:\n    password: %s\n  replication:\n    password: %s\n", superPass, replPass)
		b.WriteString("  max_slot_wal_keep_size: 256MB\n  parameters:\n    shared_buffers: 32MB\n    max_connections: \"20\"\n")
		if err := os.WriteFile(nd.ConfigPath, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Registered after the lab's cleanup, so it runs first: the agents
	// stop before their namespaces are deleted.
	t.Cleanup(nc.stopAll)
	return nc
}

func (nc *nsCluster) Node(name string) *Node { return nc.c.Node(name) }

// Start runs nd's agent inside its namespace.
func (nc *nsCluster) Start(nd *Node) {
	nc.t.Helper()
	nc.c.start(nd, []string{"ip", "netns", "exec", nc.NS[nd.Name]})
}

func (nc *nsCluster) StartAll() {
	for _, nd := range nc.c.Nodes {
		nc.Start(nd)
	}
}

// stopAll ends every agent by PID at once (SIGTERM, then SIGKILL after
// 30 s), then finishes as Cluster does.
func (nc *nsCluster) stopAll() {
	for _, p := range nc.c.sup.StopAll(30 * time.Second) {
		nc.t.Errorf("%s did not stop within 30s after SIGTERM; killed it", p.Name())
	}
	for _, nd := range nc.c.Nodes {
		nd.proc = nil
	}
	nc.c.finish()
}

// Client is an API client for nd over the bridge.
func (nc *nsCluster) Client(nd *Node) *api.Client {
	return api.NewClient(fmt.Sprintf("%s:%d", nc.IP[nd.Name], nd.API))
}

// APIAddr is nd's REST API address (for the CLI's --api).
func (nc *nsCluster) APIAddr(nd *Node) string {
	return fmt.Sprintf("%s:%d", nc.IP[nd.Name], nd.API)
}

// DSN is a libpq URL for nd's PostgreSQL as the superuser, over the bridge.
func (nc *nsCluster) DSN(nd *Node) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword("postgres", superPass),
		Host: fmt.Sprintf("%s:%d", nc.IP[nd.Name], nd.PG), Path: "/postgres",
		RawQuery: "connect_timeout=3&sslmode=disable"}
	return u.String()
}

// Info asks the running agents, except those named in skip (cut off from
// the test process), for the cluster view.
func (nc *nsCluster) Info(skip ...string) (api.ClusterInfo, error) {
	return firstClusterView(nc.c.Nodes, nc.Client, skip)
}

// WaitHealthy is Cluster.WaitHealthy over the bridge: exactly one primary
// running among names, every other one streaming, and each agent agrees
// about itself.
func (nc *nsCluster) WaitHealthy(timeout time.Duration, names ...string) api.ClusterInfo {
	nc.t.Helper()
	return waitHealthy(nc.t, nc.c, timeout, names, nc.Client, func() (api.ClusterInfo, error) { return nc.Info() })
}

// PsqlInNS runs one SQL statement against nd's PostgreSQL with psql
// started inside nd's namespace (so it works while nd is cut off from the
// root namespace). It returns psql's combined output and error.
func (nc *nsCluster) PsqlInNS(nd *Node, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	conninfo := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres connect_timeout=2 sslmode=disable", nc.IP[nd.Name], nd.PG)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", nc.NS[nd.Name],
		"/usr/lib/postgresql/15/bin/psql", conninfo, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+superPass, "PGOPTIONS=-c statement_timeout=2000")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
