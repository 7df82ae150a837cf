package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/internal/supervise"
	"github.com/urfave/cli/v2"
)

// demoState is DIR/demo.json: what the directory was laid out for, so a
// second run can reuse it (same shape) or clean it (different shape).
type demoState struct {
	Nodes    int    `json:"nodes"`
	PortBase int    `json:"port_base"`
	Password string `json:"password"`
	ReplPass string `json:"replication_password"`
	// APIAuth is the REST API's basic-auth USER:PASSWORD: mutating
	// commands need it even on loopback, as in production.
	APIAuth   string `json:"api_auth"`
	CreatedBy string `json:"created_by"`
}

// demoNode holds one node's ports: a block of ten per node.
type demoNode struct {
	Name                        string
	PG, API, Raft, Gossip, W, R int
	Dir, ConfigPath, LogPath    string
}

// clusterFile is DIR/cluster.json, for scripts.
type clusterFile struct {
	Dir string `json:"dir"`
	// APIAuth is what --api-auth / PGHA_API_AUTH need for commands that
	// change the cluster (switchover, failover, pause...).
	APIAuth string            `json:"api_auth"`
	Nodes   []clusterFileNode `json:"nodes"`
}

type clusterFileNode struct {
	Name     string `json:"name"`
	API      string `json:"api"`
	Postgres string `json:"postgres"`
	DSN      string `json:"dsn"`
	Raft     string `json:"raft"`
	Gossip   string `json:"gossip"`
	Write    string `json:"write"` // proxy write port: always the primary
	Read     string `json:"read"`  // proxy read port: the replicas
	Log      string `json:"log"`
	// AgentPID is the node's pgha agent (the demo's child); killing it
	// takes the node's PostgreSQL down too.
	AgentPID int `json:"agent_pid,omitempty"`
}

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:      "demo",
		Usage:     "run an N-node cluster on 127.0.0.1 in the foreground (Ctrl-C stops it)",
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "nodes", Value: 3, Usage: "number of nodes"},
			&cli.StringFlag{Name: "dir", Value: filepath.Join(os.TempDir(), "pgha-demo"), Usage: "working `DIR` (reused when its shape matches, cleaned otherwise)"},
			&cli.BoolFlag{Name: "fresh", Usage: "start a new cluster: clean DIR first (only a demo's directory is ever cleaned)"},
			&cli.IntFlag{Name: "port-base", Value: 15000, Usage: "first port; node i uses port-base+10*(i-1) .. +5"},
			&cli.DurationFlag{Name: "timeout", Value: 2 * time.Minute, Usage: "give up if the cluster is not ready after this long"},
			&cli.BoolFlag{Name: "exit-when-ready", Usage: "stop the cluster as soon as it is ready (for scripts and benchmarks)"},
			&cli.DurationFlag{Name: "restart-after", Value: 15 * time.Second, Usage: "once the cluster is ready, restart an agent that died (e.g. killed to watch a failover) after this `DELAY`; 0: leave it down"},
			&cli.StringFlag{Name: "pg-bin", Usage: "PostgreSQL bin `DIR` (default: pg_config --bindir, then /usr/lib/postgresql/15/bin)"},
		},
		Action: runDemo,
	}
}

func runDemo(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	n, base := c.Int("nodes"), c.Int("port-base")
	if n < 1 || n > 9 {
		return usagef("--nodes %d: use 1 to 9", n)
	}
	if base < 1024 || base+10*n > 65535 {
		return usagef("--port-base %d: use 1024..%d", base, 65535-10*n)
	}
	dir, err := filepath.Abs(c.String("dir"))
	if err != nil {
		return err
	}
	if c.Bool("fresh") {
		if _, err := os.Stat(filepath.Join(dir, "demo.json")); err == nil {
			fmt.Printf("pgha demo: --fresh: cleaning %s\n", dir)
			if err := os.RemoveAll(dir); err != nil {
				return err
			}
		}
	}
	st, err := prepareDemoDir(dir, n, base)
	if err != nil {
		return err
	}
	nodes := layoutDemo(dir, n, base)
	for _, nd := range nodes {
		for _, p := range []int{nd.PG, nd.API, nd.Raft, nd.Gossip, nd.W, nd.R} {
			if err := portFree(p); err != nil {
				return fmt.Errorf("port %d is in use (another demo still running? try --port-base): %w", p, err)
			}
		}
	}
	for _, nd := range nodes {
		if err := writeDemoConfig(nd, nodes, st, c.String("pg-bin")); err != nil {
			return err
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}

	start := time.Now()
	fmt.Printf("pgha demo: starting %d nodes in %s\n", n, dir)
	// procs[i] is node i's current agent. The supervisor reports each
	// agent that exits on exited, and each delayed restart on restarted;
	// at most n agents run, so n slots never hold a sender up.
	procs := make([]*supervise.Process, n)
	index := map[string]int{}
	for i, nd := range nodes {
		index[nd.Name] = i
	}
	exited := make(chan *supervise.Process, n)
	restarted := make(chan supervise.Started, n)
	sup := supervise.New(supervise.Options{Exited: exited, Started: restarted})
	defer sup.Close()
	spec := func(i int) supervise.Spec {
		return supervise.Spec{
			Name: nodes[i].Name, Argv: []string{exe, "run", "-c", nodes[i].ConfigPath}, LogPath: nodes[i].LogPath,
			// The agents get SIGTERM if this process dies, and a Ctrl-C
			// on the terminal reaches only the demo, which stops them.
			DeathSignal: syscall.SIGTERM, OwnGroup: true,
		}
	}
	stopAll := func() { sup.StopAll(60 * time.Second) }
	for i := range nodes {
		p, err := sup.Start(spec(i))
		if err != nil {
			stopAll()
			return err
		}
		procs[i] = p
	}
	pids := func() map[string]int {
		out := map[string]int{}
		for i, p := range procs {
			out[nodes[i].Name] = p.PID()
		}
		return out
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	// While waiting for readiness, a signal or a dead agent ends the wait.
	// The watcher hands back what it saw and is gone before the demo waits
	// on the same channels again, so no later signal is swallowed.
	type outcome struct {
		signalled bool
		failed    string
	}
	watched := make(chan outcome, 1)
	go func() {
		var o outcome
		select {
		case <-sigs:
			o.signalled = true
		case p := <-exited:
			o.failed = p.Name()
		case <-ctx.Done():
		}
		cancel()
		watched <- o
	}()

	ci, err := waitDemoReady(ctx, nodes, start)
	cancel()
	o := <-watched
	switch {
	case o.failed != "":
		err = fmt.Errorf("agent %s exited: %s", o.failed, lastLines(filepath.Join(dir, o.failed, "agent.log"), 5))
	case o.signalled:
		err = errors.New("interrupted")
	}
	if err != nil {
		fmt.Println("pgha demo: stopping the nodes")
		stopAll()
		if o.signalled {
			fmt.Println("pgha demo: stopped")
			return nil
		}
		return fmt.Errorf("%w (agent logs: %s)", err, filepath.Join(dir, "n*", "agent.log"))
	}
	took := time.Since(start)
	cf := writeClusterFile(dir, nodes, st, pids())
	printDemo(ci, nodes, cf, took)
	if c.Bool("exit-when-ready") {
		stopAll()
		fmt.Println("pgha demo: stopped")
		return nil
	}
	restartAfter := c.Duration("restart-after")
	fmt.Println("\nPress Ctrl-C to stop the cluster.")
	if restartAfter > 0 {
		fmt.Printf("Kill an agent (its PID is in cluster.json) to watch a failover; the demo restarts it after %s.\n", restartAfter)
	}
	// Agents that die after the cluster is ready are what a demo of
	// failover is about: report, restart later, carry on.
	for {
		select {
		case <-sigs:
			fmt.Println("\npgha demo: stopping the nodes...")
			stopAll()
			fmt.Println("pgha demo: stopped; run it again to restart the same cluster")
			return nil
		case p := <-exited:
			i := index[p.Name()]
			fmt.Printf("\npgha demo: agent %s ended (%s); its log: %s\n", p.Name(), p.Status(), nodes[i].LogPath)
			fmt.Printf("pgha demo: the others carry on (watch: %s list --watch --api %s)\n", selfName(), cf.Nodes[(i+1)%n].API)
			if restartAfter > 0 {
				fmt.Printf("pgha demo: restarting %s in %s\n", p.Name(), restartAfter)
				if err := sup.StartAfter(restartAfter, spec(i)); err != nil {
					fmt.Printf("pgha demo: %v\n", err)
				}
			}
		case r := <-restarted:
			if r.Err != nil {
				fmt.Printf("pgha demo: %v\n", r.Err)
				continue
			}
			procs[index[r.Spec.Name]] = r.Proc
			cf = writeClusterFile(dir, nodes, st, pids())
			fmt.Printf("pgha demo: %s restarted (pid %d); it rejoins as a replica\n", r.Spec.Name, r.Proc.PID())
		}
	}
}

// prepareDemoDir reuses DIR when it holds a demo of the same shape, cleans
// it when it holds a demo of another shape, and refuses a directory that
// is not a demo's (nothing is destroyed that we did not create).
func prepareDemoDir(dir string, n, base int) (demoState, error) {
	statePath := filepath.Join(dir, "demo.json")
	var st demoState
	data, err := os.ReadFile(statePath)
	switch {
	case err == nil:
		if jerr := json.Unmarshal(data, &st); jerr != nil {
			return st, fmt.Errorf("%s is not a pgha demo state file: %v; remove %s", statePath, jerr, dir)
		}
		if st.Nodes == n && st.PortBase == base && st.Password != "" {
			fmt.Printf("pgha demo: reusing the cluster in %s\n", dir)
			if st.APIAuth == "" { // a demo made before API auth existed
				st.APIAuth = "admin:" + randomSecret()
				b, _ := json.MarshalIndent(st, "", "  ")
				if err := os.WriteFile(statePath, b, 0o600); err != nil {
					return st, err
				}
			}
			return st, nil
		}
		fmt.Printf("pgha demo: %s held a %d-node demo; cleaning it\n", dir, st.Nodes)
		if err := os.RemoveAll(dir); err != nil {
			return st, err
		}
	case errors.Is(err, os.ErrNotExist):
		if entries, rerr := os.ReadDir(dir); rerr == nil && len(entries) > 0 {
			return st, fmt.Errorf("%s exists, is not empty and is not a pgha demo directory: choose another --dir", dir)
		}
	default:
		return st, err
	}
	// PostgreSQL runs as an unprivileged user when we are root: it must be
	// able to traverse the directory.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return st, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return st, err
	}
	st = demoState{Nodes: n, PortBase: base, Password: randomSecret(), ReplPass: randomSecret(),
		APIAuth: "admin:" + randomSecret(), CreatedBy: "pgha demo"}
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(statePath, b, 0o600); err != nil {
		return st, err
	}
	return st, nil
}

func randomSecret() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func layoutDemo(dir string, n, base int) []demoNode {
	nodes := make([]demoNode, n)
	for i := range nodes {
		b := base + 10*i
		name := "n" + strconv.Itoa(i+1)
		nd := filepath.Join(dir, name)
		nodes[i] = demoNode{
			Name: name, PG: b, API: b + 1, Raft: b + 2, Gossip: b + 3, W: b + 4, R: b + 5,
			Dir: nd, ConfigPath: filepath.Join(dir, name+".yml"), LogPath: filepath.Join(nd, "agent.log"),
		}
	}
	return nodes
}

func portFree(port int) error {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return ln.Close()
}

func writeDemoConfig(nd demoNode, all []demoNode, st demoState, pgBin string) error {
	if err := os.MkdirAll(nd.Dir, 0o755); err != nil {
		return err
	}
	var join []string
	for _, o := range all {
		if o.Name != nd.Name {
			join = append(join, fmt.Sprintf("127.0.0.1:%d", o.Gossip))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# written by pgha demo\nname: %s\ncluster: pgha-demo\ndata_dir: %s\nbootstrap_expect: %d\n", nd.Name, nd.Dir, len(all))
	fmt.Fprintf(&b, "raft:\n  addr: 127.0.0.1:%d\n", nd.Raft)
	fmt.Fprintf(&b, "gossip:\n  addr: 127.0.0.1:%d\n", nd.Gossip)
	if len(join) > 0 {
		fmt.Fprintf(&b, "  join: [%s]\n", strings.Join(join, ", "))
	}
	fmt.Fprintf(&b, "api:\n  addr: 127.0.0.1:%d\n  auth: %s\n", nd.API, st.APIAuth)
	fmt.Fprintf(&b, "proxy:\n  write_addr: 127.0.0.1:%d\n  read_addr: 127.0.0.1:%d\n", nd.W, nd.R)
	fmt.Fprintf(&b, "postgresql:\n  listen: 127.0.0.1\n  port: %d\n", nd.PG)
	if pgBin != "" {
		fmt.Fprintf(&b, "  bin_dir: %s\n", pgBin)
	}
	fmt.Fprintf(&b, "  superuser:\n    username: postgres\n    password: %s\n", st.Password)
	fmt.Fprintf(&b, "  replication:\n    username: replicator\n    password: %s\n", st.ReplPass)
	b.WriteString("  max_slot_wal_keep_size: 1GB\n  parameters:\n    shared_buffers: 32MB\n    max_connections: \"30\"\n")
	return os.WriteFile(nd.ConfigPath, []byte(b.String()), 0o600)
}

// waitDemoReady polls the first node's API until there is a primary and
// every other node streams, printing progress when it changes.
func waitDemoReady(ctx context.Context, nodes []demoNode, start time.Time) (api.ClusterInfo, error) {
	last := ""
	var ci api.ClusterInfo
	for {
		var err error
		for _, nd := range nodes {
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			ci, err = api.NewClient(fmt.Sprintf("127.0.0.1:%d", nd.API)).Cluster(qctx)
			cancel()
			if err == nil {
				break
			}
		}
		progress := "agents starting"
		if err == nil {
			ready, p := demoProgress(ci, len(nodes))
			if ready {
				return ci, nil
			}
			progress = p
		}
		if progress != last {
			fmt.Printf("  %5.1fs  %s\n", time.Since(start).Seconds(), progress)
			last = progress
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return ci, fmt.Errorf("cluster not ready in time; last state: %s", last)
			}
			return ci, errors.New("interrupted")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func demoProgress(ci api.ClusterInfo, n int) (bool, string) {
	states := make([]string, 0, len(ci.Members))
	primaries, streaming := 0, 0
	for _, m := range ci.Members {
		role := m.Role
		if role == "leader" {
			role = "primary"
		}
		states = append(states, fmt.Sprintf("%s %s/%s", m.Name, role, m.State))
		if m.Role == "leader" && m.State == "running" {
			primaries++
		}
		if (m.Role == "replica" || m.Role == "sync_standby") && m.State == "streaming" {
			streaming++
		}
	}
	sort.Strings(states)
	if len(ci.Members) == 0 {
		return false, "forming the Raft group"
	}
	return primaries == 1 && streaming == n-1, strings.Join(states, ", ")
}

func dsn(st demoState, port int) string {
	u := url.URL{Scheme: "postgresql", User: url.UserPassword("postgres", st.Password), Host: fmt.Sprintf("127.0.0.1:%d", port), Path: "/postgres"}
	return u.String()
}

func writeClusterFile(dir string, nodes []demoNode, st demoState, pids map[string]int) clusterFile {
	cf := clusterFile{Dir: dir, APIAuth: st.APIAuth}
	for _, nd := range nodes {
		cf.Nodes = append(cf.Nodes, clusterFileNode{
			Name: nd.Name, API: fmt.Sprintf("127.0.0.1:%d", nd.API), Postgres: fmt.Sprintf("127.0.0.1:%d", nd.PG),
			DSN: dsn(st, nd.PG), Raft: fmt.Sprintf("127.0.0.1:%d", nd.Raft), Gossip: fmt.Sprintf("127.0.0.1:%d", nd.Gossip),
			Write: fmt.Sprintf("127.0.0.1:%d", nd.W), Read: fmt.Sprintf("127.0.0.1:%d", nd.R),
			Log: nd.LogPath, AgentPID: pids[nd.Name],
		})
	}
	b, _ := json.MarshalIndent(cf, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "cluster.json"), b, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "pgha demo: write cluster.json:", err)
	}
	return cf
}

func printDemo(ci api.ClusterInfo, nodes []demoNode, cf clusterFile, took time.Duration) {
	fmt.Printf("\npgha demo: %d-node cluster ready in %.1fs\n\n", len(nodes), took.Seconds())
	renderCluster(os.Stdout, ci)
	roles := map[string]string{}
	for _, m := range ci.Members {
		roles[m.Name] = roleNames[m.Role]
	}
	t := &table{header: []string{"Node", "Role", "PostgreSQL", "Proxy write", "Proxy read", "REST API", "Raft", "Gossip"}}
	for _, nd := range nodes {
		t.add(nd.Name, roles[nd.Name], fmt.Sprintf("127.0.0.1:%d", nd.PG), fmt.Sprintf("127.0.0.1:%d", nd.W),
			fmt.Sprintf("127.0.0.1:%d", nd.R), fmt.Sprintf("127.0.0.1:%d", nd.API),
			fmt.Sprintf("127.0.0.1:%d", nd.Raft), fmt.Sprintf("127.0.0.1:%d", nd.Gossip))
	}
	fmt.Println()
	t.render(os.Stdout)
	fmt.Println("\nConnect through any node's proxy (the write port always reaches the primary, the read port a replica):")
	for i, n := range cf.Nodes {
		fmt.Printf("  psql '%s'   # %s proxy write port\n", dsn(demoState{Password: passwordOf(n.DSN)}, nodes[i].W), n.Name)
		fmt.Printf("  psql '%s'   # %s proxy read port\n", dsn(demoState{Password: passwordOf(n.DSN)}, nodes[i].R), n.Name)
	}
	fmt.Println("\nOr directly to each PostgreSQL:")
	for i, n := range cf.Nodes {
		fmt.Printf("  psql '%s'   # %s (%s)\n", n.DSN, n.Name, strings.ToLower(roles[nodes[i].Name]))
	}
	fmt.Printf("\nCluster status:  %s list --api %s\n", selfName(), cf.Nodes[0].API)
	fmt.Printf("Switchover:      PGHA_API_AUTH=%s %s switchover --api %s\n", cf.APIAuth, selfName(), cf.Nodes[0].API)
	fmt.Printf("Health check:    %s check --api %s\n", selfName(), cf.Nodes[0].API)
	fmt.Printf("Scripts:         %s\n", filepath.Join(cf.Dir, "cluster.json"))
	fmt.Printf("Agent logs:      %s\n", filepath.Join(cf.Dir, "n*", "agent.log"))
}

// lastLines returns the last n lines of a file, for error messages.
func lastLines(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// passwordOf extracts the password of a libpq URL.
func passwordOf(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return ""
	}
	p, _ := u.User.Password()
	return p
}

// selfName is how the user can call this binary again: its path relative
// to the working directory when it lies below it (bin/pgha), else its
// absolute path.
func selfName() string {
	exe, err := os.Executable()
	if err != nil {
		return "pgha"
	}
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, exe); err == nil && !strings.HasPrefix(rel, "..") {
			return rel
		}
	}
	return exe
}
