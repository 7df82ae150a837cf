package pgnode

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// TLSFiles names the cluster CA and this member's certificate and key
// (PEM), as the agent reads them. The same certificate serves PostgreSQL
// as server and the member's replication, pg_basebackup, pg_rewind and
// management connections as client.
type TLSFiles struct {
	CAFile   string
	CertFile string
	KeyFile  string
}

// Enabled reports whether TLS is configured.
func (t TLSFiles) Enabled() bool { return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" }

// Copies of the TLS files in RunDir, the ones PostgreSQL and its tools
// read. RunDir rather than the data directory: pg_basebackup and
// pg_rewind copy every file of the source's data directory, which would
// hand each replica the primary's private key (and overwrite its own
// with it until the next configuration write).
const (
	tlsCAName   = "tls-ca.crt"
	tlsCertName = "tls-node.crt"
	tlsKeyName  = "tls-node.key"
)

// tlsParams are the postgresql.conf settings pgha owns when TLS is on.
var tlsParams = []string{"ssl", "ssl_ca_file", "ssl_cert_file", "ssl_key_file"}

func (n *Node) tlsPath(name string) string { return filepath.Join(n.cfg.RunDir, name) }

// installTLS copies the TLS files into RunDir, owned by the OS user and
// 0600. PostgreSQL refuses a key file that group or others can read
// ("private key file has group or world access"), and the originals may
// belong to root, who runs the agent, or sit where the OS user cannot
// read them. Unchanged copies are left alone; a changed certificate
// takes effect at the next reload, which the caller does after a
// configuration change.
func (n *Node) installTLS() error {
	t := n.cfg.TLS
	if !t.Enabled() {
		return nil
	}
	for _, f := range []struct{ key, src, dst string }{
		{"tls.ca_file", t.CAFile, tlsCAName},
		{"tls.cert_file", t.CertFile, tlsCertName},
		{"tls.key_file", t.KeyFile, tlsKeyName},
	} {
		data, err := os.ReadFile(f.src)
		if err != nil {
			return fmt.Errorf("tls: %s %s: %w", f.key, f.src, err)
		}
		if _, err := n.writeFileAtomic(n.tlsPath(f.dst), data); err != nil {
			return fmt.Errorf("tls: copy %s: %w", f.key, err)
		}
	}
	return nil
}

// writeClientFiles writes what PostgreSQL's client tools need in RunDir:
// the password file and, with TLS, the certificate copies.
func (n *Node) writeClientFiles() error {
	return errors.Join(n.writePassFile(), n.installTLS())
}

// sslConninfo adds the client side of TLS to a libpq connection string
// of a PostgreSQL tool (walreceiver, pg_basebackup, pg_rewind).
//
// sslmode=verify-ca: the server must show a certificate of the cluster
// CA, and this member presents its own. Not verify-full: members reach
// each other by the addresses in their configuration, which are in the
// certificate only if `pgha tls init --hosts` was given them; with a CA
// that signs only this cluster's members, "signed by our CA" is the
// check that matters, the same one the server applies to us.
func (n *Node) sslConninfo(kv map[string]string) map[string]string {
	if !n.cfg.TLS.Enabled() {
		return kv
	}
	kv["sslmode"] = "verify-ca"
	kv["sslrootcert"] = n.tlsPath(tlsCAName)
	kv["sslcert"] = n.tlsPath(tlsCertName)
	kv["sslkey"] = n.tlsPath(tlsKeyName)
	return kv
}

// sslManagement is sslConninfo for the agent's own pgx connections. They
// read the configured files directly: the agent can read them, and they
// exist before the first copy is made (a rewind source is contacted
// before anything else).
func (n *Node) sslManagement(kv map[string]string) map[string]string {
	t := n.cfg.TLS
	if !t.Enabled() {
		// Not prefer: against a server that hangs, prefer waits out the
		// connect timeout twice (TLS, then plain).
		kv["sslmode"] = "disable"
		return kv
	}
	kv["sslmode"] = "verify-ca"
	kv["sslrootcert"] = t.CAFile
	kv["sslcert"] = t.CertFile
	kv["sslkey"] = t.KeyFile
	return kv
}

// setTLSParams turns on PostgreSQL's SSL with the copies in RunDir. It
// runs after the user's parameters, which Validate keeps off these keys.
// ssl_ca_file makes the server ask clients for a certificate (libpq then
// sends this member's); pg_hba.conf decides what it requires.
func (n *Node) setTLSParams(p map[string]string) {
	if !n.cfg.TLS.Enabled() {
		return
	}
	p["ssl"] = "on"
	p["ssl_ca_file"] = n.tlsPath(tlsCAName)
	p["ssl_cert_file"] = n.tlsPath(tlsCertName)
	p["ssl_key_file"] = n.tlsPath(tlsKeyName)
}
