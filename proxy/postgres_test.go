package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"

	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/proxy"
)

const pgPassword = "proxy-test-secret"

// startPostgres bootstraps a small PostgreSQL 15 through pgnode's
// exported API, or skips when the binaries are missing.
func startPostgres(t *testing.T) proxy.Backend {
	t.Helper()
	bin := ""
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		bin = strings.TrimSpace(string(out))
	}
	if _, err := os.Stat(filepath.Join(bin, "initdb")); bin == "" || err != nil {
		bin = "/usr/lib/postgresql/15/bin"
		if _, err := os.Stat(filepath.Join(bin, "initdb")); err != nil {
			t.Skip("PostgreSQL binaries not found (apt-get install -y postgresql-15)")
		}
	}
	// t.TempDir's chain is 0700 root: the postgres OS user must traverse it.
	base := t.TempDir()
	tmp := filepath.Clean(os.TempDir())
	for d := base; d != tmp && d != "/" && d != "."; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Below the ephemeral range, so no outgoing connection takes it
	// before PostgreSQL binds it.
	port := 0
	for p := 19000 + os.Getpid()%900; p < 20000; p++ {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			ln.Close()
			port = p
			break
		}
	}
	if port == 0 {
		t.Fatal("no free port in 19000-20000")
	}

	n, err := pgnode.New(pgnode.Config{
		Name:              "pg1",
		BinDir:            bin,
		DataDir:           filepath.Join(base, "pg1", "pgdata"),
		RunDir:            filepath.Join(base, "pg1"),
		Listen:            "127.0.0.1",
		Port:              port,
		SuperuserPassword: pgPassword,
		ReplPassword:      pgPassword + "-repl",
		Parameters:        map[string]string{"shared_buffers": "16MB", "max_connections": "20"},
		AllowedNetworks:   []string{"127.0.0.1/32"},
		StartTimeout:      30 * time.Second,
		StopTimeout:       10 * time.Second,
		Logger:            slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := n.Bootstrap(ctx, pgnode.Desired{Role: pgnode.RolePrimary}); err != nil {
		t.Fatalf("bootstrap PostgreSQL: %v", err)
	}
	t.Logf("PostgreSQL bootstrapped in %s", time.Since(start).Round(time.Millisecond))
	return proxy.Backend{Name: "pg1", Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
}

func pgConfig(t *testing.T, addr, sslmode string) *pgx.ConnConfig {
	t.Helper()
	cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://postgres:%s@%s/postgres?sslmode=%s&connect_timeout=10", pgPassword, addr, sslmode))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestRealPostgres: a session through the write port, and a long query
// through the read port cancelled by pgx's CancelRequest, which the
// proxy must carry to the server running it.
func TestRealPostgres(t *testing.T) {
	checkLeaks(t)
	pg := startPostgres(t)
	p, _ := startProxy(t, proxy.Config{})
	w, r := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: &pg, Replicas: []proxy.Backend{pg}})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	// sslmode=prefer: the SSLRequest goes through the proxy to the
	// server, which declines it, and the session proceeds in clear.
	wc, err := pgx.ConnectConfig(ctx, pgConfig(t, w, "prefer"))
	if err != nil {
		t.Fatalf("connect through the write port: %v", err)
	}
	defer wc.Close(context.Background())
	var inRecovery bool
	var sum int
	if err := wc.QueryRow(ctx, "SELECT pg_is_in_recovery(), 40 + 2").Scan(&inRecovery, &sum); err != nil || sum != 42 || inRecovery {
		t.Fatalf("query through the write port = %v, %d, %v", inRecovery, sum, err)
	}

	rcfg := pgConfig(t, r, "disable")
	// Make a cancelled context send a CancelRequest (pgx's default
	// only sets a deadline on the socket, which would kill the session).
	rcfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: 10 * time.Second}
	}
	rc, err := pgx.ConnectConfig(ctx, rcfg)
	if err != nil {
		t.Fatalf("connect through the read port: %v", err)
	}
	defer rc.Close(context.Background())
	qctx, qcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	start := time.Now()
	_, err = rc.Exec(qctx, "SELECT pg_sleep(30)")
	qcancel()
	took := time.Since(start)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("pg_sleep(30) through the read port ended after %s with %v, want SQLSTATE 57014 (cancelled)", took, err)
	}
	if took > 5*time.Second {
		t.Errorf("cancel took %s, want a few seconds at most", took)
	}
	t.Logf("pg_sleep cancelled after %s", took.Round(time.Millisecond))
	// The session survived: it was the query that was cancelled.
	if err := rc.QueryRow(ctx, "SELECT 1").Scan(&sum); err != nil || sum != 1 {
		t.Fatalf("session after the cancel: %d, %v", sum, err)
	}
	// The cancel's fan-out connection is not a session: not counted.
	if st := p.Stats().Read.Backends["pg1"]; st.Current != 1 || st.Total != 1 {
		t.Errorf("read stats for pg1 = %+v, want 1 current, 1 in total", st)
	}
}
