package tlsconf_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/tlsconf"
)

// generate makes a CA and the given nodes in a fresh directory.
func generate(t testing.TB, nodes ...tlsconf.Node) *tlsconf.Generated {
	t.Helper()
	g, err := tlsconf.Generate(tlsconf.GenerateOptions{Dir: filepath.Join(t.TempDir(), "tls"), Nodes: nodes})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func files(g *tlsconf.Generated, node string) tlsconf.Files {
	p := g.NodeFiles[node]
	return tlsconf.Files{CAFile: g.CACert, CertFile: p[0], KeyFile: p[1]}
}

func load(t testing.TB, f tlsconf.Files) *tlsconf.Bundle {
	t.Helper()
	b, err := tlsconf.Load(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGenerate(t *testing.T) {
	g := generate(t, tlsconf.Node{Name: "n1", Hosts: []string{"10.0.0.1", "db1.example.com"}}, tlsconf.Node{Name: "n2"})
	for path, want := range map[string]os.FileMode{
		g.Dir: 0o700, g.CAKey: 0o600, g.CACert: 0o644,
		g.NodeFiles["n1"][0]: 0o644, g.NodeFiles["n1"][1]: 0o600,
	} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode().Perm(); got != want {
			t.Errorf("%s: mode %o, want %o", path, got, want)
		}
	}
	b := load(t, files(g, "n1"))
	leaf := b.Cert.Leaf
	if leaf.Subject.CommonName != "n1" {
		t.Errorf("CN %q", leaf.Subject.CommonName)
	}
	if got, want := strings.Join(leaf.DNSNames, ","), "n1,localhost,db1.example.com"; got != want {
		t.Errorf("DNS SANs %q, want %q", got, want)
	}
	var ips []string
	for _, ip := range leaf.IPAddresses {
		ips = append(ips, ip.String())
	}
	if got, want := strings.Join(ips, ","), "127.0.0.1,::1,10.0.0.1"; got != want {
		t.Errorf("IP SANs %q, want %q", got, want)
	}
	if d := time.Until(leaf.NotAfter); d < 729*24*time.Hour || d > 731*24*time.Hour {
		t.Errorf("node certificate valid for %s, want 2 years", d)
	}
	for _, host := range []string{"n1", "localhost", "127.0.0.1", "::1", "10.0.0.1", "db1.example.com"} {
		if err := leaf.VerifyHostname(host); err != nil {
			t.Errorf("host %s: %v", host, err)
		}
	}
	ca, err := tlsconf.CAPool(g.CACert)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client use: %v", err)
	}
	if !strings.Contains(g.Snippet("n1", "/etc/pgha/tls"), "cert_file: /etc/pgha/tls/n1.crt") {
		t.Errorf("snippet:\n%s", g.Snippet("n1", "/etc/pgha/tls"))
	}
}

func TestGenerateRefusesOverwrite(t *testing.T) {
	g := generate(t, tlsconf.Node{Name: "n1"})
	caBefore, _ := os.ReadFile(g.CACert)
	certBefore, _ := os.ReadFile(g.NodeFiles["n1"][0])

	_, err := tlsconf.Generate(tlsconf.GenerateOptions{Dir: g.Dir, Nodes: []tlsconf.Node{{Name: "n2"}, {Name: "n1"}}})
	if err == nil || !strings.Contains(err.Error(), "refusing to overwrite") || !strings.Contains(err.Error(), "n1.crt") {
		t.Fatalf("got %v, want a refusal naming n1.crt", err)
	}
	if _, err := os.Stat(filepath.Join(g.Dir, "n2.crt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("n2.crt written although the run was refused: %v", err)
	}

	// --force replaces the node files but keeps the CA, so the other
	// nodes' certificates stay valid.
	g2, err := tlsconf.Generate(tlsconf.GenerateOptions{Dir: g.Dir, Nodes: []tlsconf.Node{{Name: "n1"}, {Name: "n2"}}, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if !g2.CAReused {
		t.Error("CA not reused")
	}
	caAfter, _ := os.ReadFile(g.CACert)
	certAfter, _ := os.ReadFile(g.NodeFiles["n1"][0])
	if string(caAfter) != string(caBefore) {
		t.Error("CA replaced")
	}
	if string(certAfter) == string(certBefore) {
		t.Error("n1.crt not replaced with --force")
	}
	load(t, files(g2, "n1"))
	load(t, files(g2, "n2"))
}

func TestGenerateAddsNodeWithExistingCA(t *testing.T) {
	g := generate(t, tlsconf.Node{Name: "n1"})
	g2, err := tlsconf.Generate(tlsconf.GenerateOptions{Dir: g.Dir, Nodes: []tlsconf.Node{{Name: "n4"}}})
	if err != nil {
		t.Fatal(err)
	}
	handshake(t, load(t, files(g, "n1")).Server(), load(t, files(g2, "n4")).PeerClient())
}

func TestGenerateHalfCA(t *testing.T) {
	g := generate(t, tlsconf.Node{Name: "n1"})
	os.Remove(g.CAKey)
	_, err := tlsconf.Generate(tlsconf.GenerateOptions{Dir: g.Dir, Nodes: []tlsconf.Node{{Name: "n2"}}})
	if err == nil || !strings.Contains(err.Error(), "ca.key") {
		t.Fatalf("got %v, want an error about the missing ca.key", err)
	}
}

func TestGenerateBadNames(t *testing.T) {
	for _, n := range []tlsconf.Node{{Name: "../x"}, {Name: "N1"}, {Name: ""}, {Name: "n1", Hosts: []string{"a b"}}} {
		if _, err := tlsconf.Generate(tlsconf.GenerateOptions{Dir: t.TempDir(), Nodes: []tlsconf.Node{n}}); err == nil {
			t.Errorf("%+v accepted", n)
		}
	}
}

func TestLoadErrorsNameTheFile(t *testing.T) {
	g := generate(t, tlsconf.Node{Name: "n1"}, tlsconf.Node{Name: "n2"})
	other := generate(t, tlsconf.Node{Name: "n1"})
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	os.WriteFile(garbage, []byte("not pem\n"), 0o600)
	missing := filepath.Join(t.TempDir(), "missing.pem")

	f := files(g, "n1")
	cases := []struct {
		name string
		f    tlsconf.Files
		want string
	}{
		{"missing cert", tlsconf.Files{CAFile: f.CAFile, CertFile: missing, KeyFile: f.KeyFile}, "tls.cert_file " + missing + ": "},
		{"missing ca", tlsconf.Files{CAFile: missing, CertFile: f.CertFile, KeyFile: f.KeyFile}, "tls.ca_file " + missing + ": "},
		{"garbage ca", tlsconf.Files{CAFile: garbage, CertFile: f.CertFile, KeyFile: f.KeyFile}, "tls.ca_file " + garbage + ": no PEM certificate"},
		{"garbage key", tlsconf.Files{CAFile: f.CAFile, CertFile: f.CertFile, KeyFile: garbage}, "tls.key_file " + garbage + ": no PEM private key"},
		{"key of another node", tlsconf.Files{CAFile: f.CAFile, CertFile: f.CertFile, KeyFile: g.NodeFiles["n2"][1]}, "does not match tls.cert_file"},
		{"other CA", tlsconf.Files{CAFile: f.CAFile, CertFile: other.NodeFiles["n1"][0], KeyFile: other.NodeFiles["n1"][1]}, "not signed by the CA in tls.ca_file"},
		{"unset", tlsconf.Files{CAFile: f.CAFile}, "tls.cert_file: not set"},
	}
	for _, c := range cases {
		_, err := tlsconf.Load(c.f)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
}

func TestLoadExpired(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	g, err := tlsconf.Generate(tlsconf.GenerateOptions{Dir: dir, Nodes: []tlsconf.Node{{Name: "n1"}}, Now: time.Now().Add(-3 * 365 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tlsconf.Load(files(g, "n1")); err == nil || !strings.Contains(err.Error(), "expired on") {
		t.Fatalf("got %v, want expired", err)
	}
}

// handshake runs one TLS handshake over loopback and returns the
// server's and the client's errors.
func tryHandshake(t testing.TB, server, client *tls.Config) (serr, cerr error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := c.(*tls.Conn).Handshake(); err != nil {
			done <- err
			return
		}
		// Echo one byte: TLS 1.3 reports a rejected client certificate
		// to the client only on its first read.
		_, err = io.CopyN(c, c, 1)
		done <- err
	}()
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: client}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err = c.Write([]byte{1}); err == nil {
			_, err = io.ReadFull(c, make([]byte, 1))
		}
		c.Close()
	}
	return <-done, err
}

func handshake(t testing.TB, server, client *tls.Config) {
	t.Helper()
	if serr, cerr := tryHandshake(t, server, client); serr != nil || cerr != nil {
		t.Fatalf("handshake: server %v, client %v", serr, cerr)
	}
}

func TestHandshakeBetweenNodes(t *testing.T) {
	g := generate(t, tlsconf.Node{Name: "n1"}, tlsconf.Node{Name: "n2"})
	n1, n2 := load(t, files(g, "n1")), load(t, files(g, "n2"))
	handshake(t, n1.Server(), n2.PeerClient())
	handshake(t, n2.Server(), n1.PeerClient())
	// The standard client verifies the name: 127.0.0.1 is in every
	// node's certificate.
	handshake(t, n1.Server(), n2.Client())
}

func TestHandshakeOtherCARefused(t *testing.T) {
	g := generate(t, tlsconf.Node{Name: "n1"})
	other := generate(t, tlsconf.Node{Name: "n4"})
	n1, n4 := load(t, files(g, "n1")), load(t, files(other, "n4"))

	// A client of another CA: the server refuses its certificate.
	serr, cerr := tryHandshake(t, n1.Server(), n4.PeerClient())
	if serr == nil || cerr == nil {
		t.Fatalf("client of another CA: server %v, client %v; want both to fail", serr, cerr)
	}
	if !strings.Contains(serr.Error(), "certificate") {
		t.Errorf("server error %q does not say why", serr)
	}
	// A server of another CA: the client refuses it.
	serr, cerr = tryHandshake(t, n4.Server(), n1.PeerClient())
	if cerr == nil || !strings.Contains(cerr.Error(), "unknown authority") {
		t.Errorf("server of another CA: client error %v, want unknown authority", cerr)
	}
	_ = serr
}

func TestHandshakeWithoutClientCertRefused(t *testing.T) {
	g := generate(t, tlsconf.Node{Name: "n1"})
	n1 := load(t, files(g, "n1"))
	client := n1.PeerClient()
	client.Certificates = nil
	serr, cerr := tryHandshake(t, n1.Server(), client)
	if serr == nil || cerr == nil {
		t.Fatalf("no client certificate: server %v, client %v; want both to fail", serr, cerr)
	}
	if !strings.Contains(serr.Error(), "didn't provide a certificate") {
		t.Errorf("server error %q does not say why", serr)
	}
}
