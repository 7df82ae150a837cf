package pgnode_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgha/pgha/internal/testutil"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/tlsconf"
)

func tlsFiles(g *tlsconf.Generated, node string) pgnode.TLSFiles {
	p := g.NodeFiles[node]
	return pgnode.TLSFiles{CAFile: g.CACert, CertFile: p[0], KeyFile: p[1]}
}

// tlsNodes makes node n1 with its files from pg and n2 with its files
// from rg (the same or another CA), closed at the end of the test.
func tlsNodes(t *testing.T, base string, pg, rg *tlsconf.Generated) (p, r *pgnode.Node, pcfg, rcfg pgnode.Config) {
	t.Helper()
	pcfg = nodeConfig(t, base, "n1", testutil.FreePort(t))
	pcfg.TLS = tlsFiles(pg, "n1")
	p = mustNew(t, pcfg)
	t.Cleanup(func() { p.Close() })
	rcfg = nodeConfig(t, base, "n2", testutil.FreePort(t))
	rcfg.TLS = tlsFiles(rg, "n2")
	r = mustNew(t, rcfg)
	t.Cleanup(func() { r.Close() })
	return p, r, pcfg, rcfg
}

func TestValidateTLS(t *testing.T) {
	cfg := pgnode.Config{Name: "n1", DataDir: "/x/pgdata", RunDir: "/x/run", SuperuserPassword: "a", ReplPassword: "b",
		TLS: pgnode.TLSFiles{CAFile: "/ca.crt"}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "go together") {
		t.Errorf("CA alone: %v", err)
	}
	cfg.TLS = pgnode.TLSFiles{CAFile: "/ca.crt", CertFile: "/n1.crt", KeyFile: "/n1.key"}
	cfg.Parameters = map[string]string{"ssl": "off"}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), `"ssl" is managed by pgha when tls is configured`) {
		t.Errorf("ssl parameter with tls: %v", err)
	}
	cfg.TLS = pgnode.TLSFiles{}
	if err := cfg.Validate(); err != nil {
		t.Errorf("ssl parameter without tls: %v", err)
	}
}

// TestTLS bootstraps a primary and clones a replica with TLS on: the
// management connection, pg_basebackup, streaming and pg_rewind use
// verified TLS, the network lines of pg_hba.conf require it, and the key
// PostgreSQL reads is the OS user's, 0600.
func TestTLS(t *testing.T) {
	binDir(t)
	base := tempDir(t)
	g, err := tlsconf.Generate(tlsconf.GenerateOptions{Dir: filepath.Join(base, "tls"), Nodes: []tlsconf.Node{{Name: "n1"}, {Name: "n2"}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	p, r, pcfg, rcfg := tlsNodes(t, base, g, g)

	if _, err := p.Bootstrap(ctx, pgnode.Desired{Role: pgnode.RolePrimary}); err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	for _, f := range []string{"tls-node.key", "tls-node.crt", "tls-ca.crt"} {
		checkFileMode(t, filepath.Join(pcfg.RunDir, f))
	}
	hba := readFile(t, filepath.Join(pcfg.DataDir, "pg_hba.conf"))
	if !strings.Contains(hba, "hostssl replication") || !strings.Contains(hba, "hostssl all") || strings.Contains(hba, "trust") {
		t.Errorf("pg_hba.conf:\n%s", hba)
	}

	pc, err := p.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(context.Background())
	var ssl bool
	if err := pc.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
		t.Errorf("management connection ssl = %v, %v; want true", ssl, err)
	}

	// An ordinary client on the allowed network needs TLS.
	execSQL(t, ctx, p, "CREATE ROLE app LOGIN PASSWORD 'app-pw'")
	appConn := func(mode string) error {
		c, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=app password=app-pw dbname=postgres sslmode=%s connect_timeout=5", pcfg.Port, mode))
		if err == nil {
			c.Close(ctx)
		}
		return err
	}
	if err := appConn("disable"); err == nil || !strings.Contains(err.Error(), "no encryption") {
		t.Errorf("client without TLS: %v; want refused by pg_hba.conf (no encryption)", err)
	}
	if err := appConn("require"); err != nil {
		t.Errorf("client with TLS: %v", err)
	}

	slot := pgnode.SlotName("n2")
	if _, _, err := p.EnsureSlots(ctx, []string{slot}); err != nil {
		t.Fatal(err)
	}
	up := pgnode.Upstream{Host: "127.0.0.1", Port: pcfg.Port, Slot: slot}
	if err := r.Clone(ctx, up, nil); err != nil {
		t.Fatalf("Clone over TLS: %v", err)
	}
	// pg_basebackup copied n1's data directory; none of n1's TLS files
	// may be in it.
	for _, f := range []string{"tls-node.key", "server.key"} {
		if _, err := os.Stat(filepath.Join(rcfg.DataDir, f)); err == nil {
			t.Errorf("%s found in the replica's data directory", f)
		}
	}
	conf := readFile(t, filepath.Join(rcfg.DataDir, "postgresql.conf"))
	for _, want := range []string{"sslmode=verify-ca", "sslcert=" + filepath.Join(rcfg.RunDir, "tls-node.crt"), "ssl = 'on'"} {
		if !strings.Contains(conf, want) {
			t.Errorf("replica postgresql.conf lacks %q:\n%s", want, conf)
		}
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitStreaming(t, ctx, r)
	var replSSL bool
	var dn string
	err = pc.QueryRow(ctx, `SELECT s.ssl, coalesce(s.client_dn, '') FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)
	                         WHERE r.application_name = 'n2'`).Scan(&replSSL, &dn)
	if err != nil || !replSSL || !strings.Contains(dn, "CN=n2") {
		t.Errorf("replication connection ssl=%v client_dn=%q, %v; want TLS with n2's certificate", replSSL, dn, err)
	}

	// pg_rewind of the old primary from the promoted replica, over TLS.
	if _, err := r.Promote(ctx); err != nil {
		t.Fatalf("Promote: %v", err)
	}
	pc.Close(ctx)
	if err := p.Stop(ctx, pgnode.StopFast); err != nil {
		t.Fatal(err)
	}
	if err := p.Rewind(ctx, pgnode.Upstream{Host: "127.0.0.1", Port: rcfg.Port}); err != nil {
		t.Fatalf("Rewind over TLS: %v", err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitStreaming(t, ctx, p)
}

// TestTLSOtherCARefused: a replica whose CA is not the primary's cannot
// clone (verify-ca fails on the replica's side).
func TestTLSOtherCARefused(t *testing.T) {
	binDir(t)
	base := tempDir(t)
	g, err := tlsconf.Generate(tlsconf.GenerateOptions{Dir: filepath.Join(base, "tls"), Nodes: []tlsconf.Node{{Name: "n1"}}})
	if err != nil {
		t.Fatal(err)
	}
	other, err := tlsconf.Generate(tlsconf.GenerateOptions{Dir: filepath.Join(base, "other"), Nodes: []tlsconf.Node{{Name: "n2"}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, r, pcfg, _ := tlsNodes(t, base, g, other)
	if _, err := p.Bootstrap(ctx, pgnode.Desired{Role: pgnode.RolePrimary}); err != nil {
		t.Fatal(err)
	}
	err = r.Clone(ctx, pgnode.Upstream{Host: "127.0.0.1", Port: pcfg.Port}, nil)
	if err == nil || !strings.Contains(err.Error(), "certificate verify failed") {
		t.Fatalf("Clone from a primary of another CA: %v; want certificate verify failed", err)
	}
}
