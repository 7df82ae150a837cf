package tlsconf

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Validity of what Generate issues. The CA outlives several rounds of
// node certificates; node certificates are short enough that a leaked
// key expires, long enough not to surprise anyone in the first year.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	NodeValidity = 2 * 365 * 24 * time.Hour
)

// File names inside the output directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// NodeCertFile and NodeKeyFile name a node's files inside the directory.
func NodeCertFile(node string) string { return node + ".crt" }

// NodeKeyFile is the node's private key file name.
func NodeKeyFile(node string) string { return node + ".key" }

// Node is one certificate to issue: the node name and any extra host
// names or IP addresses peers and clients use to reach it.
type Node struct {
	Name  string
	Hosts []string
}

// GenerateOptions configures Generate.
type GenerateOptions struct {
	Dir   string
	Nodes []Node
	// Force replaces existing node files. The CA is never replaced: when
	// ca.crt and ca.key exist, new node certificates are signed with them,
	// which is how a node is added to a running cluster. Remove both to
	// start a new CA (every node then needs a new certificate).
	Force bool
	// Now is the issue time; zero means time.Now (tests set it).
	Now time.Time
}

// Generated describes what Generate wrote.
type Generated struct {
	Dir       string
	CACert    string // path
	CAKey     string // path
	CAReused  bool
	NodeFiles map[string][2]string // node -> {cert path, key path}
}

// nodeNameRe accepts what config accepts for a member name: it becomes a
// file name and a DNS SAN here.
var nodeNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// Generate creates (or reuses) the CA in o.Dir and issues one certificate
// and key per node. Keys are written 0600, certificates 0644, the
// directory is created 0700. Nothing is written unless every file can be:
// existing node files without Force, or half a CA, fail before the first
// write.
func Generate(o GenerateOptions) (*Generated, error) {
	if o.Dir == "" {
		return nil, errors.New("tls init: an output directory is required")
	}
	if len(o.Nodes) == 0 {
		return nil, errors.New("tls init: at least one node is required")
	}
	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}
	seen := map[string]bool{}
	for _, n := range o.Nodes {
		if !nodeNameRe.MatchString(n.Name) {
			return nil, fmt.Errorf("tls init: node name %q: use 1-63 lower-case letters, digits, '_' or '-' (as in the node's name setting)", n.Name)
		}
		if seen[n.Name] {
			return nil, fmt.Errorf("tls init: node %q given twice", n.Name)
		}
		seen[n.Name] = true
		for _, h := range n.Hosts {
			if h == "" || strings.ContainsAny(h, " /,=") {
				return nil, fmt.Errorf("tls init: node %q: bad host %q", n.Name, h)
			}
		}
	}

	g := &Generated{Dir: o.Dir, CACert: filepath.Join(o.Dir, CACertFile), CAKey: filepath.Join(o.Dir, CAKeyFile),
		NodeFiles: map[string][2]string{}}
	caCertExists, caKeyExists := exists(g.CACert), exists(g.CAKey)
	if caCertExists != caKeyExists {
		return nil, fmt.Errorf("tls init: %s and %s must both exist (to reuse the CA) or both be absent (to create one)", g.CACert, g.CAKey)
	}
	g.CAReused = caCertExists
	var clash []string
	for _, n := range o.Nodes {
		paths := [2]string{filepath.Join(o.Dir, NodeCertFile(n.Name)), filepath.Join(o.Dir, NodeKeyFile(n.Name))}
		g.NodeFiles[n.Name] = paths
		for _, p := range paths {
			if exists(p) {
				clash = append(clash, p)
			}
		}
	}
	if len(clash) > 0 && !o.Force {
		return nil, fmt.Errorf("tls init: refusing to overwrite %s (use --force to replace node files)", strings.Join(clash, ", "))
	}

	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("tls init: %w", err)
	}
	// MkdirAll leaves an existing directory's mode alone: the CA key
	// goes in here.
	if err := os.Chmod(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("tls init: %w", err)
	}
	var caCert *x509.Certificate
	var caKey crypto.Signer
	if g.CAReused {
		var err error
		if caCert, caKey, err = loadCA(g.CACert, g.CAKey); err != nil {
			return nil, fmt.Errorf("tls init: reuse CA: %w", err)
		}
	} else {
		var err error
		caCert, caKey, err = newCA(now)
		if err != nil {
			return nil, fmt.Errorf("tls init: %w", err)
		}
		keyPEM, err := encodeKey(caKey)
		if err != nil {
			return nil, fmt.Errorf("tls init: %w", err)
		}
		// The key first: a certificate without its key would be reused
		// next time and fail then.
		if err := writeFile(g.CAKey, keyPEM, 0o600, false); err != nil {
			return nil, fmt.Errorf("tls init: %w", err)
		}
		if err := writeFile(g.CACert, pemCert(caCert.Raw), 0o644, false); err != nil {
			return nil, fmt.Errorf("tls init: %w", err)
		}
	}
	for _, n := range o.Nodes {
		certDER, key, err := issueNode(n, caCert, caKey, now)
		if err != nil {
			return nil, fmt.Errorf("tls init: node %s: %w", n.Name, err)
		}
		keyPEM, err := encodeKey(key)
		if err != nil {
			return nil, fmt.Errorf("tls init: node %s: %w", n.Name, err)
		}
		paths := g.NodeFiles[n.Name]
		if err := writeFile(paths[1], keyPEM, 0o600, o.Force); err != nil {
			return nil, fmt.Errorf("tls init: %w", err)
		}
		if err := writeFile(paths[0], pemCert(certDER), 0o644, o.Force); err != nil {
			return nil, fmt.Errorf("tls init: %w", err)
		}
	}
	return g, nil
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// newKey returns a P-256 key and a serial number for its certificate:
// 128 random bits, unique without bookkeeping, as CAs do.
func newKey() (*ecdsa.PrivateKey, *big.Int, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, err
	}
	return key, sn, nil
}

func newCA(now time.Time) (*x509.Certificate, crypto.Signer, error) {
	key, sn, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		// A name of its own per CA: verifiers look issuers up by name, so
		// two CAs named alike make "signed by unknown authority" carry a
		// confusing "ECDSA verification failure" with the wrong CA, and
		// an operator comparing files could not tell them apart.
		Subject: pkix.Name{CommonName: fmt.Sprintf("pgha cluster CA %s %.8s", now.UTC().Format("2006-01-02"), fmt.Sprintf("%032x", sn)),
			Organization: []string{"pgha"}},
		// A little back-dating absorbs clock skew between the machine
		// that generates and the nodes.
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CAValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func issueNode(n Node, ca *x509.Certificate, caKey crypto.Signer, now time.Time) ([]byte, crypto.Signer, error) {
	key, sn, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	dns := []string{n.Name, "localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, h := range n.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, h)
		}
	}
	notAfter := now.Add(NodeValidity)
	if notAfter.After(ca.NotAfter) {
		// A certificate cannot outlive its issuer; verification would
		// fail from the CA's expiry on anyway.
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		// The CN is the member name: PostgreSQL logs it for SSL
		// connections, and clientcert=verify-full would compare it to
		// the user name.
		Subject:     pkix.Name{CommonName: n.Name, Organization: []string{"pgha"}},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    dedup(dns),
		IPAddresses: ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate: %w", err)
	}
	return der, key, nil
}

func dedup(s []string) []string {
	seen := map[string]bool{}
	out := s[:0:0]
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

func loadCA(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	certs, err := parseCerts(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		return nil, nil, fmt.Errorf("%s: no PEM private key found", keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		if k, err = x509.ParseECPrivateKey(b.Bytes); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
		}
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: unsupported key type %T", keyPath, k)
	}
	cert := certs[0]
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("%s: not a CA certificate", certPath)
	}
	if !publicKeysEqual(cert.PublicKey, signer.Public()) {
		return nil, nil, fmt.Errorf("%s does not match %s", keyPath, certPath)
	}
	return cert, signer, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}

func encodeKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// writeFile writes data with exactly perm. Without replace an existing
// file is an error (O_EXCL: no race with a second `tls init`); with it the
// file is replaced through a temporary so a reader never sees half a key.
func writeFile(path string, data []byte, perm fs.FileMode, replace bool) error {
	if !replace {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
		if err != nil {
			return err
		}
		return finish(f, data, perm)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if err := finish(f, data, perm); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// finish writes, fixes the mode (the umask may have narrowed or the
// temp file widened it), syncs and closes f.
func finish(f *os.File, data []byte, perm fs.FileMode) error {
	_, werr := f.Write(data)
	merr := f.Chmod(perm)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, merr, serr, cerr); err != nil {
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	return nil
}

// Snippet returns the tls section of node's configuration for files that
// will be installed under installDir on the node (the generated directory
// itself when installDir is empty).
func (g *Generated) Snippet(node, installDir string) string {
	dir := installDir
	if dir == "" {
		dir = g.Dir
		if abs, err := filepath.Abs(dir); err == nil {
			dir = abs
		}
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "tls:\n")
	fmt.Fprintf(&b, "  ca_file: %s\n", filepath.Join(dir, CACertFile))
	fmt.Fprintf(&b, "  cert_file: %s\n", filepath.Join(dir, NodeCertFile(node)))
	fmt.Fprintf(&b, "  key_file: %s\n", filepath.Join(dir, NodeKeyFile(node)))
	return b.String()
}
