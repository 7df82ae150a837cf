package main

import (
	"encoding/base64"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgha/pgha/tlsconf"
)

func TestTLSInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	code, out, errOut := runCaptured(t, "tls", "init", "--dir", dir, "--nodes", "n1,n2",
		"--hosts", "n1=10.0.0.1,db1.example.com", "--hosts", "n2=10.0.0.2", "--install-dir", "/etc/pgha/tls")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "# n2: node configuration") || !strings.Contains(out, "cert_file: /etc/pgha/tls/n2.crt") {
		t.Errorf("output lacks n2's configuration:\n%s", out)
	}
	b, err := tlsconf.Load(tlsconf.Files{CAFile: filepath.Join(dir, "ca.crt"), CertFile: filepath.Join(dir, "n1.crt"), KeyFile: filepath.Join(dir, "n1.key")})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Cert.Leaf.VerifyHostname("db1.example.com"); err != nil {
		t.Error(err)
	}
	if err := b.Cert.Leaf.VerifyHostname("10.0.0.1"); err != nil {
		t.Error(err)
	}

	// A second run refuses to overwrite, --force replaces.
	code, _, errOut = runCaptured(t, "tls", "init", "--dir", dir, "--nodes", "n1")
	if code == 0 || !strings.Contains(errOut, "refusing to overwrite") {
		t.Errorf("second run: exit %d, %s", code, errOut)
	}
	if code, _, errOut = runCaptured(t, "tls", "init", "--dir", dir, "--nodes", "n1", "--force"); code != 0 {
		t.Errorf("--force: exit %d, %s", code, errOut)
	}
	if code, _, errOut = runCaptured(t, "tls", "init", "--dir", dir, "--nodes", "n3", "--hosts", "n4=x"); code != exitUsage {
		t.Errorf("--hosts of an unknown node: exit %d, %s", code, errOut)
	}
}

func TestKeygen(t *testing.T) {
	code, out, errOut := runCaptured(t, "keygen")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(out))
	if err != nil || len(k) != 32 {
		t.Fatalf("keygen printed %q: %d bytes, %v", out, len(k), err)
	}
	_, out2, _ := runCaptured(t, "keygen")
	if out2 == out {
		t.Error("two keys alike")
	}
}
