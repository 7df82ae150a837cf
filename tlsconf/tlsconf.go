// Package tlsconf turns the cluster's certificate files (tls.ca_file,
// tls.cert_file, tls.key_file) into *tls.Config values for the parts of
// pgha that talk over the network, and generates a small private CA with
// node certificates for `pgha tls init`.
//
// The trust model is one private CA per cluster: a peer is a member when
// it presents a certificate signed by that CA, for server and client
// roles alike (mutual TLS). Every node certificate carries both the
// server and client extended key usages, so the same pair serves the Raft
// listener and the Raft dialer, PostgreSQL's server and its replication
// client.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"
)

// Files names the PEM files, as in the node configuration. Its fields
// match config.TLS, so tlsconf.Files(cfg.TLS) converts.
type Files struct {
	CAFile   string
	CertFile string
	KeyFile  string
}

// Enabled reports whether any file is set.
func (f Files) Enabled() bool { return f.CAFile != "" || f.CertFile != "" || f.KeyFile != "" }

// Bundle is the loaded and checked material.
type Bundle struct {
	Files Files
	// CAs holds the CA certificates of ca_file: the roots for peers.
	CAs *x509.CertPool
	// Cert is the node's certificate and key; Cert.Leaf is parsed.
	Cert tls.Certificate
}

// MinVersion is the oldest protocol version pgha speaks or accepts.
// Every peer is pgha itself or PostgreSQL 15 (OpenSSL 1.1+), so there is
// no old client to keep TLS 1.0/1.1 alive for.
const MinVersion = tls.VersionTLS12

// Load reads and checks the three files: the CA file must hold at least
// one certificate, the key must match the certificate, and the
// certificate must chain to the CA, be valid now and allow both server
// and client use. Each error names the setting and the file.
func Load(f Files) (*Bundle, error) {
	for _, kv := range [][2]string{{"tls.ca_file", f.CAFile}, {"tls.cert_file", f.CertFile}, {"tls.key_file", f.KeyFile}} {
		if kv[1] == "" {
			return nil, fmt.Errorf("%s: not set (tls.ca_file, tls.cert_file and tls.key_file go together)", kv[0])
		}
	}
	caPEM, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, fileErr("tls.ca_file", f.CAFile, err)
	}
	cas, err := parseCerts(caPEM)
	if err != nil {
		return nil, fileErr("tls.ca_file", f.CAFile, err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}

	certPEM, err := os.ReadFile(f.CertFile)
	if err != nil {
		return nil, fileErr("tls.cert_file", f.CertFile, err)
	}
	keyPEM, err := os.ReadFile(f.KeyFile)
	if err != nil {
		return nil, fileErr("tls.key_file", f.KeyFile, err)
	}
	if _, err := parseCerts(certPEM); err != nil {
		return nil, fileErr("tls.cert_file", f.CertFile, err)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || !isKeyBlock(b.Type) {
		return nil, fileErr("tls.key_file", f.KeyFile, errors.New("no PEM private key found"))
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// The usual cause is a key of another node's certificate.
		return nil, fmt.Errorf("tls.key_file %s does not match tls.cert_file %s: %w", f.KeyFile, f.CertFile, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fileErr("tls.cert_file", f.CertFile, err)
		}
		pair.Leaf = leaf
	}
	now := time.Now()
	switch {
	case now.Before(leaf.NotBefore):
		return nil, fileErr("tls.cert_file", f.CertFile, fmt.Errorf("not valid before %s (check the clock)", leaf.NotBefore.UTC().Format(time.RFC3339)))
	case now.After(leaf.NotAfter):
		return nil, fileErr("tls.cert_file", f.CertFile, fmt.Errorf("expired on %s", leaf.NotAfter.UTC().Format(time.RFC3339)))
	}
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	for _, u := range []struct {
		eku  x509.ExtKeyUsage
		name string
	}{{x509.ExtKeyUsageServerAuth, "server"}, {x509.ExtKeyUsageClientAuth, "client"}} {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{u.eku}, CurrentTime: now})
		if err == nil {
			continue
		}
		var ua x509.UnknownAuthorityError
		if errors.As(err, &ua) {
			return nil, fmt.Errorf("tls.cert_file %s: not signed by the CA in tls.ca_file %s (subject %q, issuer %q)",
				f.CertFile, f.CAFile, leaf.Subject.CommonName, leaf.Issuer.CommonName)
		}
		// Peers check the same usage, so a certificate that cannot act
		// as both would fail half of the connections.
		return nil, fileErr("tls.cert_file", f.CertFile, fmt.Errorf("not usable as a %s certificate: %w", u.name, err))
	}
	return &Bundle{Files: f, CAs: pool, Cert: pair}, nil
}

func fileErr(key, path string, err error) error {
	return fmt.Errorf("%s %s: %w", key, path, err)
}

func isKeyBlock(typ string) bool {
	return typ == "PRIVATE KEY" || typ == "EC PRIVATE KEY" || typ == "RSA PRIVATE KEY"
}

// parseCerts returns every CERTIFICATE block of a PEM file.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return out, nil
}

// Server returns the configuration of a listener that requires a client
// certificate signed by the cluster CA.
func (b *Bundle) Server() *tls.Config {
	return &tls.Config{
		MinVersion:   MinVersion,
		Certificates: []tls.Certificate{b.Cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    b.CAs,
	}
}

// Client returns the configuration of a client that presents the node's
// certificate and verifies the server against the cluster CA, host name
// included (the usual check; ServerName comes from the dialled address).
func (b *Bundle) Client() *tls.Config {
	return &tls.Config{
		MinVersion:   MinVersion,
		Certificates: []tls.Certificate{b.Cert},
		RootCAs:      b.CAs,
	}
}

// PeerClient is Client for connections between members (Raft): it
// verifies that the server's certificate chains to the cluster CA and
// allows server use, but not its host name. Members dial each other by
// the addresses in the Raft configuration, which need not be among the
// certificate's names (they are only when `pgha tls init --hosts` was
// given them); with a CA that signs nothing but this cluster's nodes,
// "signed by our CA" is what makes a member, on both sides of the
// connection, the same check the server applies to clients.
func (b *Bundle) PeerClient() *tls.Config {
	pool := b.CAs
	return &tls.Config{
		MinVersion:   MinVersion,
		Certificates: []tls.Certificate{b.Cert},
		RootCAs:      pool,
		// Verification is not skipped: VerifyConnection below does the
		// chain check that the standard one would, without the name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyChain(cs.PeerCertificates, pool, x509.ExtKeyUsageServerAuth)
		},
	}
}

// verifyChain checks that certs[0] chains to roots (certs[1:] may be
// intermediates) for the given use.
func verifyChain(certs []*x509.Certificate, roots *x509.CertPool, eku x509.ExtKeyUsage) error {
	if len(certs) == 0 {
		return errors.New("tls: peer presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
		return fmt.Errorf("tls: peer certificate %q: %w", certs[0].Subject.CommonName, err)
	}
	return nil
}

// CAPool reads a PEM file of CA certificates, for clients that verify a
// server but present no certificate of their own (the CLI's --ca-file).
func CAPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := parseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}
