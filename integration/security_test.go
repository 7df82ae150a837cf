package integration

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/internal/testutil"
	"github.com/pgha/pgha/tlsconf"
)

// secAPIAuth guards the API of the security test's cluster.
const secAPIAuth = "ops:it-sec-api-secret"

// secureNode points nd at its TLS files in dir, the gossip key in
// keyFile (file:PATH, so the key itself is in no configuration) and the
// API credentials; Client then speaks https with them.
func secureNode(nd *Node, dir, keyFile string, o *api.ClientOptions) {
	nd.Env = append(nd.Env,
		"PGHA_TLS_CA_FILE="+filepath.Join(dir, tlsconf.CACertFile),
		"PGHA_TLS_CERT_FILE="+filepath.Join(dir, tlsconf.NodeCertFile(nd.Name)),
		"PGHA_TLS_KEY_FILE="+filepath.Join(dir, tlsconf.NodeKeyFile(nd.Name)),
		"PGHA_GOSSIP_KEY=file:"+keyFile,
		"PGHA_API_AUTH="+secAPIAuth,
	)
	nd.APIOptions = o
}

// keygen runs `pgha keygen` and stores the key in a 0600 file.
func keygen(t *testing.T, path string) string {
	t.Helper()
	out, stderr, code := cli(t, "keygen")
	if code != 0 {
		t.Fatalf("pgha keygen: exit %d: %s", code, stderr)
	}
	key := strings.TrimSpace(out)
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return key
}

// replicationSSL returns, per replica connected to nd's PostgreSQL,
// whether its connection uses TLS and the client certificate's DN.
func replicationSSL(t *testing.T, nd *Node) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn := connect(t, nd)
	rows, err := conn.Query(ctx, `SELECT r.application_name, s.ssl, coalesce(s.client_dn, '')
	                                FROM pg_stat_replication r JOIN pg_stat_ssl s ON s.pid = r.pid`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, dn string
		var ssl bool
		if err := rows.Scan(&name, &ssl, &dn); err != nil {
			t.Fatal(err)
		}
		out[name] = fmt.Sprintf("ssl=%v dn=%s", ssl, dn)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitReplicationTLS waits until every replica streams from nd over TLS
// with its own certificate.
func waitReplicationTLS(t *testing.T, nd *Node, replicas ...string) {
	t.Helper()
	testutil.WaitFor(t, 30*time.Second, "replicas streaming over TLS from "+nd.Name, func() error {
		got := replicationSSL(t, nd)
		for _, r := range replicas {
			if !strings.HasPrefix(got[r], "ssl=true dn=") || !strings.Contains(got[r], "CN="+r) {
				return fmt.Errorf("pg_stat_replication/pg_stat_ssl on %s: %v", nd.Name, got)
			}
		}
		return nil
	})
}

// TestSecurity runs a cluster with everything on: TLS (certificates from
// `pgha tls init`), a gossip key (from `pgha keygen`, read from a file)
// and API credentials. It forms, streams over TLS, switches over with the
// CLI, fails over; a node with a certificate of another CA cannot join
// Raft, a node with another gossip key cannot join gossip, and no secret
// shows in the logs or the API.
func TestSecurity(t *testing.T) {
	c := newCluster(t, 3)
	tlsDir := filepath.Join(c.Dir, "tls")
	otherDir := filepath.Join(c.Dir, "tls-other")
	if out, stderr, code := cli(t, "tls", "init", "--dir", tlsDir, "--nodes", "n1,n2,n3,n5,n6", "--hosts", "n1=127.0.0.1,localhost"); code != 0 {
		t.Fatalf("pgha tls init: exit %d: %s %s", code, out, stderr)
	}
	if _, stderr, code := cli(t, "tls", "init", "--dir", otherDir, "--nodes", "n4"); code != 0 {
		t.Fatalf("pgha tls init (other CA): exit %d: %s", code, stderr)
	}
	keyFile, wrongKeyFile := filepath.Join(c.Dir, "gossip.key"), filepath.Join(c.Dir, "gossip-wrong.key")
	key, wrongKey := keygen(t, keyFile), keygen(t, wrongKeyFile)

	clientFor := func(caDir string) *api.ClientOptions {
		pool, err := tlsconf.CAPool(filepath.Join(caDir, tlsconf.CACertFile))
		if err != nil {
			t.Fatal(err)
		}
		tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		return &api.ClientOptions{TLS: tc, Auth: secAPIAuth, Transport: api.NewTransport(tc)}
	}
	opts := clientFor(tlsDir)
	for _, nd := range c.Nodes {
		secureNode(nd, tlsDir, keyFile, opts)
	}
	_, apiPass, _ := strings.Cut(secAPIAuth, ":")
	secrets := map[string]string{"superuser password": superPass, "replication password": replPass,
		"gossip key": key, "other gossip key": wrongKey, "api password": apiPass}

	c.StartAll()
	ci := c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	primary, replicas := primaryAndReplicas(c, ci)

	t.Run("forms over TLS", func(t *testing.T) {
		var names []string
		for _, r := range replicas {
			names = append(names, r.Name)
		}
		waitReplicationTLS(t, primary, names...)
		// Raft refuses a client without a certificate; the API speaks
		// only https.
		for _, port := range []int{primary.Raft, primary.API} {
			d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // only checking that TLS is spoken
			conn, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Errorf("port %d: no TLS: %v", port, err)
				continue
			}
			conn.Close()
		}
		if !refusedWithoutCert(t, primary.Raft) {
			t.Errorf("raft port of %s accepted a client without a certificate", primary.Name)
		}
		code, _ := status(t, primary, "GET", "/health", "")
		if code != http.StatusBadRequest {
			t.Errorf("plain http to the API: status %d, want 400 (client sent http to an https server)", code)
		}
	})

	apiArgs := func(nd *Node, caDir string) []string {
		return []string{"--api", fmt.Sprintf("127.0.0.1:%d", nd.API), "--ca-file", filepath.Join(caDir, tlsconf.CACertFile), "--api-auth", secAPIAuth}
	}

	if !t.Run("switchover with the CLI", func(t *testing.T) {
		cand := replicas[0]
		noAuth := []string{"switchover", "--api", fmt.Sprintf("127.0.0.1:%d", primary.API), "--ca-file", filepath.Join(tlsDir, tlsconf.CACertFile), "--candidate", cand.Name}
		if _, stderr, code := cli(t, noAuth...); code == 0 || !strings.Contains(stderr, "credentials required") {
			t.Errorf("switchover without credentials: exit %d, %s; want \"credentials required\"", code, stderr)
		}
		args := append([]string{"switchover"}, apiArgs(replicas[1], tlsDir)...)
		args = append(args, "--candidate", cand.Name)
		if out, stderr, code := cli(t, args...); code != 0 {
			t.Fatalf("pgha switchover: exit %d: %s %s", code, out, stderr)
		}
		ci := c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
		if ci.Primary != cand.Name {
			t.Fatalf("primary is %s after switchover to %s", ci.Primary, cand.Name)
		}
		waitReplicationTLS(t, cand, primary.Name, replicas[1].Name)
	}) {
		return
	}

	if !t.Run("failover", func(t *testing.T) {
		old := c.primaryNode(t)
		pm := postmasterPID(old)
		c.Kill(old)
		if pm > 0 {
			_ = syscall.Kill(pm, syscall.SIGKILL) // normally dead already (parent-death signal)
		}
		newP := c.waitNewPrimary(t, old.Name, 60*time.Second)
		c.Start(old)
		c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
		var others []string
		for _, nd := range c.Nodes {
			if nd != newP {
				others = append(others, nd.Name)
			}
		}
		// The old primary came back through pg_rewind and streams, over
		// TLS like the rest.
		waitReplicationTLS(t, newP, others...)
	}) {
		return
	}

	t.Run("proxy keeps TLS and allowed_networks", func(t *testing.T) {
		p := c.primaryNode(t)
		proxyDSN := func(port int, sslmode string) string {
			return fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/postgres?connect_timeout=5&sslmode=%s", superPass, port, sslmode)
		}
		// Without TLS through the primary's own proxy: the proxy connects
		// from this machine's address, and that line is hostssl too.
		for _, port := range []int{p.Write, p.PG} {
			_, err := pgConnect(proxyDSN(port, "disable"), "")
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
				t.Errorf("superuser without TLS on port %d: %v, want refused (28000)", port, err)
			}
		}
		conn, err := pgConnect(proxyDSN(p.Write, "require"), "")
		if err != nil {
			t.Fatalf("superuser with TLS through the write port: %v", err)
		}
		var ssl bool
		err = conn.QueryRow(context.Background(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl)
		conn.Close(context.Background())
		if err != nil || !ssl {
			t.Errorf("session through the write port: ssl=%v, %v", ssl, err)
		}
		// From an address outside allowed_networks (the default, loopback
		// 127.0.0.1 only): the proxy refuses before PostgreSQL is reached,
		// as PostgreSQL itself does. (sslmode=prefer: the proxy declines
		// TLS, which it cannot terminate, then answers the plain startup
		// with its refusal; with require the client gives up on that "no".)
		for _, port := range []int{p.Write, p.Read, p.PG} {
			_, err := pgConnect(proxyDSN(port, "prefer"), "127.0.0.2")
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
				t.Errorf("client from 127.0.0.2 on port %d: %v, want refused (28000)", port, err)
			}
		}
		h := metricsText(t, p, opts)
		// (pgx's prefer tries TLS, then plain: one or two connections.)
		if !strings.Contains(h, `pgha_proxy_denied_total{port="write"} 1`) && !strings.Contains(h, `pgha_proxy_denied_total{port="write"} 2`) {
			t.Errorf("the refusal is not counted in /metrics:\n%s", grepLines(h, "pgha_proxy_denied"))
		}
		waitLog(t, p, "proxy refused a client outside postgresql.allowed_networks")
	})

	t.Run("the postgres OS user cannot reach root's files", func(t *testing.T) {
		// A replica, set up as an installation made before data_dir
		// belonged to root (data_dir the OS user's, 0700), with the
		// attacks of the report planted by that user: a link where root
		// wrote peers.json.tmp, and links at the log and password files.
		nd := replicaNode(t, c)
		victim := filepath.Join(c.Dir, "victim")
		if err := os.WriteFile(victim, []byte("precious"), 0o600); err != nil {
			t.Fatal(err)
		}
		c.Stop(nd)
		pgUID, pgGID := osUser(t, "postgres")
		if err := os.Chown(nd.Dir, pgUID, pgGID); err != nil {
			t.Fatal(err)
		}
		os.Chmod(nd.Dir, 0o700)
		run := filepath.Join(nd.Dir, "run")
		asPostgres(t, true, fmt.Sprintf("ln -s %s %s/peers.json.tmp && rm -f %s/postgresql.log %s/pgpass && ln -s %s %s/postgresql.log && ln -s %s %s/pgpass",
			victim, nd.Dir, run, run, victim, run, victim, run))
		c.Start(nd)
		c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")

		if b, err := os.ReadFile(victim); err != nil || string(b) != "precious" {
			t.Fatalf("the root-owned file was overwritten: %q, %v", b, err)
		}
		if st, _ := os.Stat(victim); st.Mode().Perm() != 0o600 || st.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Fatalf("the root-owned file changed hands: %v", st)
		}
		checkOwner := func(p string, mode os.FileMode) {
			st, err := os.Lstat(p)
			if err != nil {
				t.Errorf("%s: %v", p, err)
				return
			}
			if st.Sys().(*syscall.Stat_t).Uid != 0 || st.Mode().Perm() != mode {
				t.Errorf("%s: uid %d mode %v, want root and %v", p, st.Sys().(*syscall.Stat_t).Uid, st.Mode().Perm(), mode)
			}
		}
		checkOwner(nd.Dir, 0o711)
		checkOwner(filepath.Join(nd.Dir, "raft"), 0o700)
		checkOwner(filepath.Join(nd.Dir, "raft", "snapshots"), 0o700)
		for _, f := range []string{"postgresql.log", "pgpass"} {
			if st, err := os.Lstat(filepath.Join(run, f)); err != nil || !st.Mode().IsRegular() {
				t.Errorf("run/%s is not a plain file after the restart: %v %v", f, st, err)
			}
		}
		if _, err := os.Lstat(filepath.Join(nd.Dir, "peers.json.tmp")); err == nil {
			t.Error("the planted peers.json.tmp is still there")
		}
		// Now the OS user can neither plant nor swap anything in data_dir.
		for _, cmd := range []string{
			"ln -s " + victim + " " + nd.Dir + "/peers.json.tmp",
			"mv " + nd.Dir + "/raft " + nd.Dir + "/raft.moved",
			"mkdir " + nd.Dir + "/raft2",
			"rm -rf " + nd.Dir + "/raft",
		} {
			asPostgres(t, false, cmd)
		}

		// Raft state root does not own is refused, with the reason.
		c.Stop(nd)
		db := filepath.Join(nd.Dir, "raft", "raft.db")
		os.Chown(db, pgUID, pgGID)
		c.Start(nd)
		c.WaitExit(nd, 30*time.Second)
		waitLog(t, nd, "raft state not trusted")
		os.Chown(db, 0, 0)
		c.Start(nd)
		c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	})

	t.Run("a node with wrong API credentials is told why", func(t *testing.T) {
		leader := c.primaryNode(t)
		n6 := c.addNode("n6")
		secureNode(n6, tlsDir, keyFile, opts)
		n6.Env = append(n6.Env, "PGHA_API_AUTH=ops:not-the-cluster-secret")
		c.Start(n6)
		defer c.Stop(n6)
		testutil.WaitFor(t, 30*time.Second, "n6 API up", func() error {
			_, _, err := n6.Client().Health(context.Background())
			return err
		})
		args := []string{"join", "--api", fmt.Sprintf("127.0.0.1:%d", n6.API), "--ca-file", filepath.Join(tlsDir, tlsconf.CACertFile),
			"--api-auth", "ops:not-the-cluster-secret", "--timeout", "10s", fmt.Sprintf("127.0.0.1:%d", leader.Gossip)}
		if out, stderr, code := cli(t, args...); code == 0 {
			t.Errorf("join with other API credentials succeeded: %s %s", out, stderr)
		}
		waitLog(t, n6, "the cluster's leader refuses this node")
		waitLog(t, n6, "api.auth / api.token must be the same")
		data, _ := os.ReadFile(leader.LogPath)
		if n := strings.Count(string(data), "refusing to add a member"); n != 1 {
			t.Errorf("the leader logged the refusal %d times, want once", n)
		}
	})

	leader := c.primaryNode(t)

	t.Run("certificate of another CA cannot join Raft", func(t *testing.T) {
		n4 := c.addNode("n4")
		secureNode(n4, otherDir, keyFile, clientFor(otherDir))
		c.Start(n4)
		defer c.Stop(n4)
		testutil.WaitFor(t, 30*time.Second, "n4 API up", func() error {
			_, _, err := n4.Client().Health(context.Background())
			return err
		})
		args := append([]string{"join"}, apiArgs(n4, otherDir)...)
		args = append(args, "--timeout", "15s", fmt.Sprintf("127.0.0.1:%d", leader.Gossip))
		if out, stderr, code := cli(t, args...); code == 0 {
			t.Errorf("join of a node with another CA succeeded: %s %s", out, stderr)
		}
		ci, err := c.Info()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ci.Members {
			if m.Name == "n4" && (m.Raft == "voter" || m.Raft == "nonvoter" || m.Raft == "leader") {
				t.Errorf("n4 is in the Raft configuration as %s", m.Raft)
			}
		}
		// The leader says why it did not add n4, and n4 why it refused
		// the leader's connection.
		waitLog(t, leader, "certificate signed by unknown authority")
		waitLog(t, n4, "raft tls: refused connection")
	})

	t.Run("another gossip key cannot join", func(t *testing.T) {
		n5 := c.addNode("n5")
		secureNode(n5, tlsDir, wrongKeyFile, opts)
		c.Start(n5)
		defer c.Stop(n5)
		testutil.WaitFor(t, 30*time.Second, "n5 API up", func() error {
			_, _, err := n5.Client().Health(context.Background())
			return err
		})
		args := append([]string{"join"}, apiArgs(n5, tlsDir)...)
		args = append(args, "--timeout", "15s", fmt.Sprintf("127.0.0.1:%d", leader.Gossip))
		_, stderr, code := cli(t, args...)
		if code == 0 || !strings.Contains(stderr, "is gossip.key the same on every node?") {
			t.Errorf("join with another gossip key: exit %d, %q; want a failure that names gossip.key", code, stderr)
		}
		waitLog(t, leader, "another gossip key or none")
		ci, err := c.Info()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ci.Members {
			if m.Name == "n5" {
				t.Errorf("n5 listed as a member: %+v", m)
			}
		}
	})

	t.Run("no secret in logs or API", func(t *testing.T) {
		hc := &http.Client{Transport: opts.Transport, Timeout: 10 * time.Second}
		for _, nd := range c.Nodes {
			if nd.proc == nil {
				continue
			}
			for _, path := range []string{"/cluster", "/config", "/history"} {
				req, err := http.NewRequest("GET", fmt.Sprintf("https://127.0.0.1:%d%s", nd.API, path), nil)
				if err != nil {
					t.Fatal(err)
				}
				user, pass, _ := strings.Cut(secAPIAuth, ":")
				req.SetBasicAuth(user, pass)
				resp, err := hc.Do(req)
				if err != nil {
					t.Fatalf("GET %s on %s: %v", path, nd.Name, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("GET %s on %s: %d %s", path, nd.Name, resp.StatusCode, body)
				}
				checkNoSecret(t, fmt.Sprintf("GET %s on %s", path, nd.Name), string(body), secrets)
			}
		}
		for _, nd := range c.Nodes {
			for _, f := range []string{nd.LogPath, filepath.Join(nd.Dir, "run", "postgresql.log")} {
				data, err := os.ReadFile(f)
				if err != nil {
					continue // n4/n5 may have no PostgreSQL log
				}
				checkNoSecret(t, f, string(data), secrets)
			}
		}
	})
}

// pgConnect connects to dsn, from localAddr when set.
func pgConnect(dsn, localAddr string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	if localAddr != "" {
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(localAddr)}}
		cfg.DialFunc = d.DialContext
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// osUser returns the uid and gid of an OS user.
func osUser(t *testing.T, name string) (int, int) {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Skipf("no OS user %s: %v", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return uid, gid
}

// asPostgres runs a shell command as the postgres OS user (what a
// database superuser reaches with COPY ... TO PROGRAM) and checks that
// it succeeds, or fails when allowed is false.
func asPostgres(t *testing.T, allowed bool, script string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to act as the postgres OS user")
	}
	uid, gid := osUser(t, "postgres")
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	out, err := cmd.CombinedOutput()
	switch {
	case allowed && err != nil:
		t.Fatalf("as postgres: %s: %v: %s", script, err, out)
	case !allowed && err == nil:
		t.Errorf("as postgres: %s: succeeded, want it refused", script)
	}
}

// replicaNode returns a running replica.
func replicaNode(t *testing.T, c *Cluster) *Node {
	t.Helper()
	ci, err := c.Info()
	if err != nil {
		t.Fatal(err)
	}
	_, rs := primaryAndReplicas(c, ci)
	if len(rs) == 0 {
		t.Fatal("no replica")
	}
	return rs[0]
}

// metricsText fetches nd's /metrics over https with the cluster's
// credentials.
func metricsText(t *testing.T, nd *Node, o *api.ClientOptions) string {
	t.Helper()
	hc := &http.Client{Transport: o.Transport, Timeout: 10 * time.Second}
	req, _ := http.NewRequest("GET", fmt.Sprintf("https://127.0.0.1:%d/metrics", nd.API), nil)
	user, pass, _ := strings.Cut(secAPIAuth, ":")
	req.SetBasicAuth(user, pass)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// refusedWithoutCert reports whether a TLS server on port refuses a
// client that has no certificate (TLS 1.3 says so on the first read).
func refusedWithoutCert(t *testing.T, port int) bool {
	t.Helper()
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // probing only
	conn, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return true
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func checkNoSecret(t *testing.T, where, text string, secrets map[string]string) {
	t.Helper()
	for what, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Errorf("%s contains the %s", where, what)
		}
	}
}

// waitLog waits until nd's agent log contains s.
func waitLog(t *testing.T, nd *Node, s string) {
	t.Helper()
	testutil.WaitFor(t, 30*time.Second, fmt.Sprintf("%q in %s's log", s, nd.Name), func() error {
		data, err := os.ReadFile(nd.LogPath)
		if err != nil {
			return err
		}
		if !strings.Contains(string(data), s) {
			return fmt.Errorf("not yet")
		}
		return nil
	})
}
