package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/internal/supervise"
	"github.com/pgha/pgha/internal/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

const apiAuth = "admin:it-api-secret"

// authCluster is a 3-node cluster whose API requires credentials.
func authCluster(t *testing.T) (*Cluster, api.ClusterInfo) {
	c := newCluster(t, 3)
	for _, nd := range c.Nodes {
		nd.Env = append(nd.Env, "PGHA_API_AUTH="+apiAuth)
	}
	c.StartAll()
	return c, c.WaitHealthy(90*time.Second, "n1", "n2", "n3")
}

// status sends method path to nd's API without credentials.
func status(t *testing.T, nd *Node, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, fmt.Sprintf("http://127.0.0.1:%d%s", nd.API, path), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s on %s: %v", method, path, nd.Name, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = fmt.Fprint(&b, resp.Header.Get("X-Pgha-Reason"))
	return resp.StatusCode, b.String()
}

func primaryAndReplicas(c *Cluster, ci api.ClusterInfo) (*Node, []*Node) {
	var p *Node
	var rs []*Node
	for _, nd := range c.Nodes {
		if nd.Name == ci.Primary {
			p = nd
		} else {
			rs = append(rs, nd)
		}
	}
	return p, rs
}

// TestHealthEndpoints checks Patroni's health endpoints, auth, /metrics
// and pgha check on a real cluster: primary, replica, a replica whose
// PostgreSQL is down, a paused cluster.
func TestHealthEndpoints(t *testing.T) {
	c, ci := authCluster(t)
	p, rs := primaryAndReplicas(c, ci)

	expect := func(nd *Node, path string, want int) {
		t.Helper()
		for _, m := range []string{"GET", "HEAD", "OPTIONS"} {
			if code, why := status(t, nd, m, path, ""); code != want {
				t.Errorf("%s %s on %s = %d (%s), want %d", m, path, nd.Name, code, why, want)
			}
		}
	}
	// The replicas' view of the primary's position arrives by gossip;
	// wait until the lag is known before asking with ?lag.
	testutil.WaitFor(t, 20*time.Second, "replica lag known", func() error {
		for _, r := range rs {
			if code, why := status(t, r, "GET", "/replica?lag=16MB", ""); code != 200 {
				return fmt.Errorf("%s: %d %s", r.Name, code, why)
			}
		}
		return nil
	})
	for path, onPrimary := range map[string]int{
		"/primary": 200, "/master": 200, "/leader": 200, "/read-write": 200, "/": 200,
		"/replica": 503, "/read-only": 200, "/standby-leader": 503, "/sync": 503, "/async": 503,
		"/health": 200, "/liveness": 200, "/readiness": 200, "/replica?lag=16MB": 503,
	} {
		expect(p, path, onPrimary)
	}
	for _, r := range rs {
		for path, onReplica := range map[string]int{
			"/primary": 503, "/leader": 503, "/replica": 200, "/read-only": 200, "/async": 200, "/sync": 503,
			"/health": 200, "/liveness": 200, "/readiness": 200, "/replica?lag=16MB": 200,
			"/replica?tag_noloadbalance=false": 200, "/replica?tag_nofailover=true": 503,
			"/replica?tag_datacenter=east": 503, "/replica?replication_state=streaming": 200,
		} {
			expect(r, path, onReplica)
		}
	}
	if code, _ := status(t, rs[0], "GET", "/replica?lag=lots", ""); code != http.StatusBadRequest {
		t.Errorf("bad lag = %d, want 400", code)
	}

	// Mutating endpoints need credentials; malformed bodies get a 400.
	if code, _ := status(t, rs[0], "POST", "/switchover", `{}`); code != http.StatusUnauthorized {
		t.Errorf("POST /switchover without credentials = %d, want 401", code)
	}
	if code, _ := status(t, p, "PATCH", "/config", `{"synchronous_mode":true}`); code != http.StatusUnauthorized {
		t.Errorf("PATCH /config without credentials = %d, want 401", code)
	}
	authed := api.NewClientWith(fmt.Sprintf("127.0.0.1:%d", rs[0].API), api.ClientOptions{Auth: apiAuth})
	req, _ := http.NewRequest("PATCH", fmt.Sprintf("http://127.0.0.1:%d/config", p.API), strings.NewReader(`{"synchronous_mode":`))
	req.SetBasicAuth("admin", "it-api-secret")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("malformed PATCH = %v, %v; want 400", resp, err)
	} else {
		resp.Body.Close()
	}
	apiFlag := fmt.Sprintf("--api=127.0.0.1:%d", rs[0].API)
	if _, errOut, code := cli(t, "pause", apiFlag); code == 0 || !strings.Contains(errOut, "credentials") {
		t.Errorf("pause without credentials: exit %d, %q", code, errOut)
	}

	// /metrics parses and says who is primary.
	text, err := api.NewClient(fmt.Sprintf("127.0.0.1:%d", p.API)).Metrics(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("metrics do not parse: %v", err)
	}
	for name, want := range map[string]float64{"pgha_primary": 1, "pgha_postgres_up": 1, "pgha_writable_members": 1, "pgha_raft_leader": 1, "pgha_raft_voters": 3} {
		mf, ok := fams[name]
		if !ok || len(mf.GetMetric()) == 0 {
			t.Errorf("metric %s missing", name)
			continue
		}
		if got := mf.GetMetric()[0].GetGauge().GetValue(); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	for _, name := range []string{"pgha_wal_current_lsn_bytes", "pgha_raft_term", "pgha_ha_loop_duration_seconds", "pgha_proxy_connections_total"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("metric %s missing", name)
		}
	}

	// pgha check: OK everywhere on a healthy cluster (exit 0).
	testutil.WaitFor(t, 20*time.Second, "pgha check OK on every node", func() error {
		for _, nd := range c.Nodes {
			out, _, code := cli(t, "check", fmt.Sprintf("--api=127.0.0.1:%d", nd.API))
			if code != 0 {
				return fmt.Errorf("%s: exit %d\n%s", nd.Name, code, out)
			}
		}
		return nil
	})
	out, _, _ := cli(t, "check", fmt.Sprintf("--api=127.0.0.1:%d", p.API), "-o", "json")
	var res api.CheckResult
	decodeJSON(t, out, &res)
	comps := map[string]string{}
	for _, ch := range res.Checks {
		comps[ch.Component] = ch.Status
	}
	for _, want := range []string{"agent", "raft", "writable", "postgresql", "connections", "slots", "wal_senders"} {
		if comps[want] != api.CheckOK {
			t.Errorf("check on the primary: %s = %q, want OK (%+v)", want, comps[want], res.Checks)
		}
	}

	// Paused cluster, replica's PostgreSQL down: the agent leaves it down
	// (maintenance mode), its checks fail, the primary's still pass.
	if err := authed.SetPaused(ctxT(t), true); err != nil {
		t.Fatalf("pause with credentials: %v", err)
	}
	down := rs[0]
	pid := postmasterPID(down)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill postmaster %d: %v", pid, err)
	}
	testutil.WaitFor(t, 15*time.Second, "replica health 503", func() error {
		if code, _ := status(t, down, "GET", "/health", ""); code != 503 {
			return fmt.Errorf("/health = %d", code)
		}
		return nil
	})
	expect(down, "/replica", 503)
	expect(down, "/read-only", 503)
	expect(down, "/liveness", 200)
	expect(p, "/primary", 200)
	// /check reuses an inspection for a second: ask until it is fresh.
	testutil.WaitFor(t, 10*time.Second, "check CRITICAL with PostgreSQL down", func() error {
		out, _, code := cli(t, "check", fmt.Sprintf("--api=127.0.0.1:%d", down.API))
		if code != 2 || !strings.Contains(out, "CRITICAL") {
			return fmt.Errorf("exit %d\n%s", code, out)
		}
		return nil
	})
	// The primary sees the replica gone: slot inactive, sender missing.
	testutil.WaitFor(t, 15*time.Second, "primary's check warns", func() error {
		out, _, code := cli(t, "check", fmt.Sprintf("--api=127.0.0.1:%d", p.API))
		if code != 1 || !strings.Contains(out, down.Name) {
			return fmt.Errorf("exit %d\n%s", code, out)
		}
		return nil
	})
	if _, errOut, code := cli(t, "resume", apiFlag, "--api-auth", apiAuth); code != 0 {
		t.Fatalf("resume: %s", errOut)
	}
	testutil.WaitFor(t, 60*time.Second, "replica back", func() error {
		if code, why := status(t, down, "GET", "/replica", ""); code != 200 {
			return fmt.Errorf("/replica = %d %s", code, why)
		}
		return nil
	})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// serverPort is the PostgreSQL port a connection landed on.
func serverPort(dsn string) (port int, inRecovery bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, false, err
	}
	defer conn.Close(ctx)
	err = conn.QueryRow(ctx, "SELECT inet_server_port(), pg_is_in_recovery()").Scan(&port, &inRecovery)
	return port, inRecovery, err
}

// TestLibpqMultiHost is the proxy-less option of the README: a libpq
// connection string listing every node with
// target_session_attrs=read-write reaches the primary, before and after
// a switchover.
func TestLibpqMultiHost(t *testing.T) {
	c, ci := authCluster(t)
	psql := "/usr/lib/postgresql/15/bin/psql"
	if _, err := os.Stat(psql); err != nil {
		t.Skipf("psql not found at %s", psql)
	}
	var hosts, ports []string
	for _, nd := range c.Nodes {
		hosts = append(hosts, "127.0.0.1")
		ports = append(ports, strconv.Itoa(nd.PG))
	}
	conninfo := fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2 sslmode=disable",
		strings.Join(hosts, ","), strings.Join(ports, ","))
	landed := func() string {
		cmd := exec.Command(psql, "-XAtc", "SELECT inet_server_port() || ' ' || pg_is_in_recovery()", conninfo)
		cmd.Env = append(os.Environ(), "PGPASSWORD="+superPass)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Sprintf("psql: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	p, _ := primaryAndReplicas(c, ci)
	if got, want := landed(), fmt.Sprintf("%d false", p.PG); got != want {
		t.Fatalf("multi-host read-write landed on %q, want %q (the primary %s)", got, want, p.Name)
	}
	if _, errOut, code := cli(t, "switchover", fmt.Sprintf("--api=127.0.0.1:%d", p.API), "--api-auth", apiAuth, "--force"); code != 0 {
		t.Fatalf("switchover: %s", errOut)
	}
	ci = c.WaitHealthy(90*time.Second, "n1", "n2", "n3")
	np, _ := primaryAndReplicas(c, ci)
	if np == p {
		t.Fatal("switchover kept the same primary")
	}
	testutil.WaitFor(t, 20*time.Second, "multi-host reaches the new primary", func() error {
		if got, want := landed(), fmt.Sprintf("%d false", np.PG); got != want {
			return fmt.Errorf("landed on %q, want %q", got, want)
		}
		return nil
	})
}

// TestHAProxyHealthChecks drives a real HAProxy configured the classic
// Patroni way: a write listener checking GET /primary on every node's
// API, a round-robin read listener checking GET /replica.
func TestHAProxyHealthChecks(t *testing.T) {
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy not installed and `make deps` could not install it (apt-get install -y haproxy)")
	}
	c, ci := authCluster(t)
	write, read, stats := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	var b strings.Builder
	fmt.Fprintf(&b, "global\n  maxconn 200\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30m\n  timeout server 30m\n  timeout check 2s\n\n")
	fmt.Fprintf(&b, "listen stats\n  mode http\n  bind 127.0.0.1:%d\n  stats enable\n  stats uri /\n\n", stats)
	for _, l := range []struct {
		name, check string
		port        int
	}{{"write", "/primary", write}, {"read", "/replica", read}} {
		fmt.Fprintf(&b, "listen %s\n  bind 127.0.0.1:%d\n  balance roundrobin\n  option httpchk\n  http-check send meth GET uri %s\n  http-check expect status 200\n", l.name, l.port, l.check)
		fmt.Fprintf(&b, "  default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions\n")
		for _, nd := range c.Nodes {
			fmt.Fprintf(&b, "  server %s 127.0.0.1:%d maxconn 50 check port %d\n", nd.Name, nd.PG, nd.API)
		}
		b.WriteString("\n")
	}
	cfgPath := filepath.Join(c.Dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(haproxy, "-c", "-f", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("haproxy config check: %v\n%s\n%s", err, out, b.String())
	}
	hp, err := c.sup.Start(supervise.Spec{Name: "haproxy", Argv: []string{haproxy, "-db", "-f", cfgPath},
		LogPath: filepath.Join(c.Dir, "haproxy.log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hp.Kill) // by PID: the one we started

	dsn := func(port int) string {
		return fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/postgres?connect_timeout=3&sslmode=disable", superPass, port)
	}
	p, rs := primaryAndReplicas(c, ci)
	testutil.WaitFor(t, 20*time.Second, "HAProxy's write listener reaches the primary", func() error {
		if port, rec, err := serverPort(dsn(write)); err != nil || port != p.PG || rec {
			return fmt.Errorf("write landed on port %d (in recovery %v, %v), want %d", port, rec, err, p.PG)
		}
		return nil
	})
	seen := map[int]int{}
	testutil.WaitFor(t, 20*time.Second, "HAProxy's read listener spreads over both replicas", func() error {
		for range 10 {
			port, rec, err := serverPort(dsn(read))
			if err != nil {
				return err
			}
			if !rec {
				return fmt.Errorf("read landed on the primary (port %d)", port)
			}
			seen[port]++
		}
		for _, r := range rs {
			if seen[r.PG] == 0 {
				return fmt.Errorf("no read reached %s (seen %v)", r.Name, seen)
			}
		}
		return nil
	})
	if _, errOut, code := cli(t, "switchover", fmt.Sprintf("--api=127.0.0.1:%d", rs[0].API), "--api-auth", apiAuth, "--force"); code != 0 {
		t.Fatalf("switchover: %s", errOut)
	}
	ci = c.WaitHealthy(90*time.Second, "n1", "n2", "n3")
	np, _ := primaryAndReplicas(c, ci)
	if np == p {
		t.Fatal("switchover kept the same primary")
	}
	// inter 1s, rise 1: the new primary is in within about a second or two.
	testutil.WaitFor(t, 15*time.Second, "HAProxy's write listener reaches the new primary", func() error {
		if port, rec, err := serverPort(dsn(write)); err != nil || port != np.PG || rec {
			return fmt.Errorf("write landed on port %d (in recovery %v, %v), want %d", port, rec, err, np.PG)
		}
		return nil
	})
}

// TestJoinNeedsCredentials: with API credentials configured, a node that
// does not hold them cannot get itself added to Raft; with them it can.
func TestJoinNeedsCredentials(t *testing.T) {
	c, ci := authCluster(t)
	p, _ := primaryAndReplicas(c, ci)
	n4 := c.addNode("n4")
	c.Start(n4)
	n4api := fmt.Sprintf("--api=127.0.0.1:%d", n4.API)
	testutil.WaitFor(t, 30*time.Second, "n4 API up", func() error {
		_, _, err := n4.Client().Health(context.Background())
		return err
	})
	gossip := fmt.Sprintf("127.0.0.1:%d", p.Gossip)
	if _, errOut, code := cli(t, "join", n4api, "--timeout", "10s", gossip); code == 0 || !strings.Contains(errOut, "did not add") {
		t.Fatalf("join without credentials: exit %d, %q; want a refusal", code, errOut)
	}
	leaderLog, _ := os.ReadFile(p.LogPath)
	if !strings.Contains(string(leaderLog), "refusing to add a member") {
		t.Error("the leader did not log why it refused n4")
	}
	if ci, err := c.Info(); err == nil {
		for _, m := range ci.Members {
			if m.Name == "n4" && m.Raft != "none" {
				t.Fatalf("n4 got into Raft without credentials: %+v", m)
			}
		}
	}
	c.Stop(n4)
	n4.Env = append(n4.Env, "PGHA_API_AUTH="+apiAuth)
	c.Start(n4)
	testutil.WaitFor(t, 30*time.Second, "n4 API up", func() error {
		_, _, err := n4.Client().Health(context.Background())
		return err
	})
	if out, errOut, code := cli(t, "join", n4api, "--api-auth", apiAuth, gossip); code != 0 {
		t.Fatalf("join with credentials: exit %d: %s %s", code, out, errOut)
	}
	c.WaitHealthy(90*time.Second, "n1", "n2", "n3", "n4")
}
