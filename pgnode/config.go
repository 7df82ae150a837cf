package pgnode

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

// Config describes the local PostgreSQL instance. Zero values that have a
// sensible default get it (see withDefaults); the rest is checked by
// Validate.
type Config struct {
	// Name is the member name; it becomes application_name on replicas
	// and cluster_name (process titles).
	Name string
	// BinDir holds initdb, postgres, pg_ctl... Empty: `pg_config --bindir`
	// from PATH, then /usr/lib/postgresql/15/bin.
	BinDir string
	// DataDir is PGDATA.
	DataDir string
	// RunDir is an agent-owned directory for the pgpass file, the initdb
	// password file and postgresql.log. Created 0700 (owned by OSUser when
	// running as root) if missing.
	RunDir string
	// Listen is listen_addresses. Default "127.0.0.1".
	Listen string
	// Port is PostgreSQL's TCP port. Default 5432.
	Port int
	// OSUser runs PostgreSQL and its tools when the agent runs as root.
	// Default "postgres". Ignored when not root.
	OSUser string

	Superuser         string // default "postgres"
	SuperuserPassword string
	ReplUser          string // default "replicator"
	ReplPassword      string

	// Parameters are user settings for postgresql.conf, applied over the
	// managed defaults. Keys pgha must control (see ProtectedParameters)
	// are rejected by Validate.
	Parameters map[string]string
	// HBA lines are appended after the managed pg_hba.conf lines.
	HBA []string
	// AllowedNetworks are CIDRs that may connect with a SCRAM password,
	// for replication and for ordinary sessions.
	AllowedNetworks []string
	// MaxSlotWalKeepSize is max_slot_wal_keep_size (e.g. "4GB"); empty
	// leaves PostgreSQL's default (unlimited).
	MaxSlotWalKeepSize string
	// StartTimeout bounds how long Start waits for connections to be
	// accepted (crash recovery included). Default 60 s.
	StartTimeout time.Duration
	// TLS, when set, turns on SSL in PostgreSQL, requires it on the
	// network lines of pg_hba.conf and makes every connection this
	// member opens (replication, pg_basebackup, pg_rewind, management)
	// verify the server against the CA and present the member's
	// certificate. The files are copied into RunDir (see tls.go).
	TLS TLSFiles
	// StopTimeout is how long Stop waits before escalating to a harder
	// shutdown mode when the context has no earlier deadline. Default 30 s.
	StopTimeout time.Duration
	// Logger receives pgnode's logs. Default slog.Default().
	Logger *slog.Logger
}

const (
	defaultListen       = "127.0.0.1"
	defaultPort         = 5432
	defaultOSUser       = "postgres"
	defaultSuperuser    = "postgres"
	defaultReplUser     = "replicator"
	defaultStartTimeout = 60 * time.Second
	defaultStopTimeout  = 30 * time.Second
)

// protected lists settings whose value pgha must own: changing them
// behind its back breaks connections (listen_addresses, port, sockets),
// replication (primary_conninfo, slot, timeline, recovery targets),
// pg_rewind (wal_log_hints), read-only replicas (hot_standby), where the
// configuration lives, or the SCRAM-only authentication (password_encryption).
var protected = map[string]bool{
	"listen_addresses":          true,
	"port":                      true,
	"unix_socket_directories":   true,
	"hot_standby":               true,
	"wal_log_hints":             true,
	"primary_conninfo":          true,
	"primary_slot_name":         true,
	"recovery_target_timeline":  true,
	"recovery_target":           true,
	"recovery_target_lsn":       true,
	"recovery_target_name":      true,
	"recovery_target_time":      true,
	"recovery_target_xid":       true,
	"recovery_target_action":    true,
	"recovery_target_inclusive": true,
	"data_directory":            true,
	"config_file":               true,
	"hba_file":                  true,
	"ident_file":                true,
	"include":                   true,
	"include_if_exists":         true,
	"include_dir":               true,
	"password_encryption":       true,
}

// ProtectedParameters returns, sorted, the postgresql.conf keys that
// Config.Parameters may not set.
func ProtectedParameters() []string {
	keys := make([]string, 0, len(protected))
	for k := range protected {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

var (
	paramKeyRe = regexp.MustCompile(`^[a-z_][a-z0-9_.]*$`)
	// Role names are restricted to plain identifiers so they need no
	// quoting rules of their own in pgpass, pg_hba.conf and conninfo.
	roleRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)
)

func (c Config) withDefaults() Config {
	if c.Listen == "" {
		c.Listen = defaultListen
	}
	if c.Port == 0 {
		c.Port = defaultPort
	}
	if c.OSUser == "" {
		c.OSUser = defaultOSUser
	}
	if c.Superuser == "" {
		c.Superuser = defaultSuperuser
	}
	if c.ReplUser == "" {
		c.ReplUser = defaultReplUser
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = defaultStartTimeout
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = defaultStopTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.DataDir != "" {
		c.DataDir = filepath.Clean(c.DataDir)
	}
	if c.RunDir != "" {
		c.RunDir = filepath.Clean(c.RunDir)
	}
	// GUC names are case-insensitive; lower-case them once so the
	// protected check and the rendered file cannot be fooled by "Port".
	if len(c.Parameters) > 0 {
		p := make(map[string]string, len(c.Parameters))
		for k, v := range c.Parameters {
			p[strings.ToLower(strings.TrimSpace(k))] = v
		}
		c.Parameters = p
	}
	return c
}

// Validate checks the configuration (after defaults) without touching the
// system. Errors name the offending field or parameter.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if c.Name == "" {
		bad("name is required")
	}
	if c.DataDir == "" || !filepath.IsAbs(c.DataDir) {
		bad("data dir must be an absolute path, got %q", c.DataDir)
	}
	if c.RunDir == "" || !filepath.IsAbs(c.RunDir) {
		bad("run dir must be an absolute path, got %q", c.RunDir)
	}
	if c.DataDir != "" && c.DataDir == c.RunDir {
		bad("run dir must not be the data dir %q", c.DataDir)
	}
	if c.Port < 1 || c.Port > 65535 {
		bad("port %d out of range 1-65535", c.Port)
	}
	if hasControl(c.Listen) || strings.ContainsAny(c.Listen, "'\\") {
		bad("listen %q: invalid characters", c.Listen)
	}
	for _, r := range []struct{ field, v string }{{"superuser", c.Superuser}, {"replication user", c.ReplUser}} {
		if !roleRe.MatchString(r.v) {
			bad("%s %q: must be a plain identifier (letters, digits, underscore; at most 63)", r.field, r.v)
		}
	}
	if c.Superuser == c.ReplUser {
		bad("replication user must differ from the superuser %q", c.Superuser)
	}
	for _, p := range []struct{ field, v string }{{"superuser password", c.SuperuserPassword}, {"replication password", c.ReplPassword}} {
		if p.v == "" {
			bad("%s is required", p.field)
		} else if strings.ContainsAny(p.v, "\x00\r\n") {
			bad("%s must not contain NUL or line breaks", p.field)
		}
	}
	keys := make([]string, 0, len(c.Parameters))
	for k := range c.Parameters {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := c.Parameters[k]
		switch {
		case protected[k]:
			bad("parameter %q is managed by pgha and cannot be set", k)
		case !paramKeyRe.MatchString(k):
			bad("parameter %q: invalid name", k)
		case hasControl(v):
			bad("parameter %q: value must not contain control characters", k)
		case k == "wal_level" && v != "replica" && v != "logical":
			bad("parameter wal_level=%q: replication needs replica or logical", v)
		}
	}
	for i, l := range c.HBA {
		if hasControl(l) {
			bad("hba line %d: must be a single line", i+1)
		}
	}
	for _, n := range c.AllowedNetworks {
		if _, _, err := net.ParseCIDR(n); err != nil {
			bad("allowed network %q: %w", n, err)
		}
	}
	if hasControl(c.MaxSlotWalKeepSize) {
		bad("max slot wal keep size: invalid characters")
	}
	if t := c.TLS; t.Enabled() {
		if t.CAFile == "" || t.CertFile == "" || t.KeyFile == "" {
			bad("tls: the CA, certificate and key files go together")
		}
		for _, k := range tlsParams {
			if _, ok := c.Parameters[k]; ok {
				bad("parameter %q is managed by pgha when tls is configured", k)
			}
		}
	}
	if c.StartTimeout < 0 || c.StopTimeout < 0 {
		bad("start and stop timeouts must not be negative")
	}
	if len(errs) > 0 {
		return fmt.Errorf("pgnode config: %w", errors.Join(errs...))
	}
	return nil
}

// DynamicParameterProblem says why a setting of the cluster-wide dynamic
// configuration would never be applied ("" when it would): the same rule
// that makes the renderer skip it, so PATCH /config can refuse it before
// it is committed instead of storing it for nothing.
func DynamicParameterProblem(k, v string) string {
	lk := strings.ToLower(k)
	switch {
	case !paramKeyRe.MatchString(k):
		return "invalid name (lower-case letters, digits, '_' and '.'; no spaces or control characters)"
	case protected[lk]:
		return "managed by pgha and cannot be set"
	case slices.Contains(tlsParams, lk):
		return "TLS is set per node with tls: in its configuration (pgha tls init)"
	case lk == "synchronous_standby_names":
		return "managed by pgha: use synchronous_mode and synchronous_node_count"
	case hasControl(v):
		return "value must not contain line breaks or other control characters"
	case lk == "wal_level" && v != "replica" && v != "logical":
		return "replication needs wal_level replica or logical"
	}
	return ""
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}
