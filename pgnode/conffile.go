package pgnode

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgha/pgha/internal/safefile"
)

// Role is what WriteConfig configures PostgreSQL as.
type Role int

const (
	// RolePrimary: no standby.signal, no upstream.
	RolePrimary Role = iota
	// RoleReplica: standby.signal, and primary_conninfo to the Upstream
	// if there is one.
	RoleReplica
)

func (r Role) String() string {
	switch r {
	case RolePrimary:
		return "primary"
	case RoleReplica:
		return "replica"
	}
	return "Role(" + strconv.Itoa(int(r)) + ")"
}

// File names inside DataDir.
const (
	confFile     = "postgresql.conf"
	baseConfFile = "postgresql.base.conf" // initdb's original, included first
	hbaFile      = "pg_hba.conf"
	standbyFile  = "standby.signal"
)

// managedHeader starts every file pgha owns; its presence is how we tell
// our file from initdb's (or a human's) before replacing it.
const managedHeader = "# Managed by pgha: rewritten on every configuration change; edits here are lost.\n"

// postmasterParams change only at a restart (pg_settings.context =
// 'postmaster' in PostgreSQL 13-17). A difference in any of them between
// the old and new file makes WriteConfig report RestartNeeded.
// primary_conninfo and primary_slot_name are reloadable since 13.
var postmasterParams = map[string]bool{
	"archive_mode": true, "autovacuum_freeze_max_age": true, "autovacuum_max_workers": true,
	"autovacuum_multixact_freeze_max_age": true, "bonjour": true, "bonjour_name": true,
	"cluster_name": true, "data_sync_retry": true, "dynamic_shared_memory_type": true,
	"event_source": true, "external_pid_file": true, "hot_standby": true, "huge_pages": true,
	"huge_page_size": true, "ignore_invalid_pages": true, "jit_provider": true,
	"listen_addresses": true, "logging_collector": true, "max_connections": true,
	"max_files_per_process": true, "max_locks_per_transaction": true,
	"max_logical_replication_workers": true, "max_pred_locks_per_transaction": true,
	"max_prepared_transactions": true, "max_replication_slots": true, "max_wal_senders": true,
	"max_worker_processes": true, "min_dynamic_shared_memory": true, "old_snapshot_threshold": true,
	"port": true, "recovery_target_timeline": true, "shared_buffers": true,
	"shared_memory_type": true, "shared_preload_libraries": true,
	"superuser_reserved_connections": true, "track_activity_query_size": true,
	"track_commit_timestamp": true, "unix_socket_directories": true, "unix_socket_group": true,
	"unix_socket_permissions": true, "wal_buffers": true, "wal_decode_buffer_size": true,
	"wal_level": true, "wal_log_hints": true,
}

// Desired is everything the agent wants PostgreSQL configured with.
// pgnode keeps none of it between calls: each WriteConfig renders the
// files from its argument and the member's Config alone, so the files say
// exactly what the caller asked for at that moment, never a leftover of an
// earlier call.
type Desired struct {
	Role Role // RolePrimary or RoleReplica
	// Upstream, for RoleReplica, is where to stream from; nil makes a
	// standby with no upstream (see WriteConfig). Ignored for RolePrimary.
	Upstream *Upstream
	// Parameters are the cluster-wide dynamic parameters (Raft FSM); the
	// member's own Config.Parameters override them. Keys pgha protects,
	// malformed entries and synchronous_standby_names (see
	// SyncStandbyNames) are left out and named in ConfigChange.Ignored.
	Parameters map[string]string
	// SyncStandbyNames, when not nil, is the managed
	// synchronous_standby_names; it overrides any other source.
	SyncStandbyNames *string
}

// ConfigChange is what WriteConfig did.
type ConfigChange struct {
	Changed       bool     // some file changed: reload (or restart) to apply
	RestartNeeded bool     // a change takes effect only at a restart
	Ignored       []string // dynamic parameters left out (protected by pgha or malformed), sorted
}

// WriteConfig writes the managed postgresql.conf and pg_hba.conf (and, for
// a replica, standby.signal; for a primary it removes it) and the pgpass
// file, all from d and the member's Config. d.Upstream is ignored for
// RolePrimary. For RoleReplica a nil d.Upstream makes a standby with no
// upstream (no primary_conninfo or primary_slot_name) that replays only
// its own WAL: the agent starts a former replica that way before
// promoting it, because a data directory started without standby.signal
// finishes recovery on the timeline it has, whereas a promotion out of
// standby mode always switches to a new one, which is what lets
// pg_rewind and the other members tell the histories apart.
// The result says whether any file changed (so the caller knows whether
// to reload), whether a change takes effect only at a restart, and which
// dynamic parameters were left out; an error comes with a zero
// ConfigChange. Files are replaced atomically; unchanged files are not
// rewritten.
func (n *Node) WriteConfig(d Desired) (ConfigChange, error) {
	n.dataMu.Lock()
	defer n.dataMu.Unlock()
	return n.writeConfig(d)
}

func (n *Node) writeConfig(d Desired) (ConfigChange, error) {
	if d.Role != RolePrimary && d.Role != RoleReplica {
		return ConfigChange{}, fmt.Errorf("write config: unknown role %v", d.Role)
	}
	up := d.Upstream
	if d.Role != RoleReplica {
		up = nil
	}
	if up != nil && (up.Host == "" || up.Port <= 0) {
		return ConfigChange{}, errors.New("write config: an upstream needs a host and port")
	}
	if up != nil && up.Slot != "" && !validSlotName(up.Slot) {
		return ConfigChange{}, fmt.Errorf("write config: invalid slot name %q", up.Slot)
	}
	// The agent builds the names from validated member names; a line
	// break would still end the setting early and make PostgreSQL refuse
	// the whole file, so it is an error here rather than at the reload.
	if d.SyncStandbyNames != nil && hasControl(*d.SyncStandbyNames) {
		return ConfigChange{}, errors.New("write config: synchronous_standby_names must not contain control characters")
	}
	if st, err := n.DataState(); err != nil {
		return ConfigChange{}, fmt.Errorf("write config: %w", err)
	} else if st != DataValid {
		return ConfigChange{}, fmt.Errorf("write config: %w (%s is %s)", ErrNoData, n.cfg.DataDir, st)
	}
	if err := n.ensureRunDir(); err != nil {
		return ConfigChange{}, fmt.Errorf("write config: %w", err)
	}
	if err := n.writeClientFiles(); err != nil {
		return ConfigChange{}, fmt.Errorf("write config: %w", err)
	}

	dd := n.cfg.DataDir
	confPath := filepath.Join(dd, confFile)
	old, err := n.readConfFile(confPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return ConfigChange{}, fmt.Errorf("write config: %w", err)
	}
	oldManaged := err == nil && bytes.HasPrefix(old, []byte(managedHeader))
	if err == nil && !oldManaged {
		// initdb's file (or a human's): keep it as the base we include,
		// or, if a base exists already, set it aside rather than lose it.
		dst := filepath.Join(dd, baseConfFile)
		if _, err := os.Stat(dst); err == nil {
			dst = confPath + ".replaced-" + time.Now().UTC().Format("20060102T150405Z")
			n.log.Warn("postgresql.conf was not pgha's; moved aside", "to", dst)
		}
		if err := os.Rename(confPath, dst); err != nil {
			return ConfigChange{}, fmt.Errorf("write config: keep original postgresql.conf: %w", err)
		}
	}

	dynamic, ignored := splitDynamic(d.Parameters)
	params := n.parameters(d.Role, up, dynamic, d.SyncStandbyNames)
	var restartNeeded bool
	if !oldManaged {
		// We cannot know what the running server (if any) uses.
		restartNeeded = true
	} else {
		oldParams := parseManagedConf(old)
		for k := range postmasterParams {
			ov, oldHas := oldParams[k]
			nv, newHas := params[k]
			if oldHas != newHas || ov != nv {
				n.log.Debug("restart needed", "parameter", k, "old", ov, "new", nv)
				restartNeeded = true
			}
		}
	}
	changed, err := n.writeFileAtomic(confPath, renderConf(params))
	if err != nil {
		return ConfigChange{}, fmt.Errorf("write config: %w", err)
	}

	hbaPath := filepath.Join(dd, hbaFile)
	if cur, err := n.readConfFile(hbaPath); err == nil && !bytes.HasPrefix(cur, []byte(managedHeader)) {
		if err := os.Rename(hbaPath, hbaPath+".orig"); err != nil {
			return ConfigChange{}, fmt.Errorf("write config: keep original pg_hba.conf: %w", err)
		}
	}
	c, err := n.writeFileAtomic(hbaPath, n.renderHBA())
	if err != nil {
		return ConfigChange{}, fmt.Errorf("write config: %w", err)
	}
	changed = changed || c

	// standby.signal is read only at start-up: adding or removing it
	// (demote / re-point a stopped primary) needs a restart. After a
	// promotion PostgreSQL has removed it already, so nothing changes.
	signalPath := filepath.Join(dd, standbyFile)
	_, serr := os.Stat(signalPath)
	hasSignal := serr == nil
	wantSignal := d.Role == RoleReplica
	switch {
	case wantSignal && !hasSignal:
		if _, err := n.writeFileAtomic(signalPath, nil); err != nil {
			return ConfigChange{}, fmt.Errorf("write config: %w", err)
		}
		restartNeeded, changed = true, true
	case !wantSignal && hasSignal:
		if err := os.Remove(signalPath); err != nil {
			return ConfigChange{}, fmt.Errorf("write config: %w", err)
		}
		syncDir(dd)
		restartNeeded, changed = true, true
	}
	n.log.Debug("wrote config", "role", d.Role, "changed", changed, "restart_needed", restartNeeded)
	// A restart applies every change, so a restart implies a change:
	// callers that only look at Changed still act.
	return ConfigChange{Changed: changed || restartNeeded, RestartNeeded: restartNeeded, Ignored: ignored}, nil
}

// splitDynamic sorts the cluster-wide parameters into those WriteConfig
// writes and those it leaves out, sorted. A member's own Parameters are
// checked by Config.Validate, which refuses the agent's start; the
// cluster-wide ones arrive through Raft at any time, where refusing is
// too late and failing every WriteConfig would stop the node from
// following the cluster, so the bad ones are dropped and named instead:
// protected keys (pgha owns their value); names that are not lower-case
// GUC names (PostgreSQL folds case, so "Port" would set port past the
// protected check, and other characters could be read as more than a
// name in the file); values with control characters (a line break would
// end the setting early); and synchronous_standby_names, which pgha
// manages through synchronous_mode so that the committed synchronous
// set, which failover trusts, always describes what the primary waits
// for.
func splitDynamic(params map[string]string) (accepted map[string]string, ignored []string) {
	accepted = make(map[string]string, len(params))
	for k, v := range params {
		if DynamicParameterProblem(k, v) != "" {
			ignored = append(ignored, k)
			continue
		}
		accepted[k] = v
	}
	sort.Strings(ignored)
	return accepted, ignored
}

// parameters computes the full managed postgresql.conf content. Later
// sources win: the managed defaults, the cluster-wide dynamic parameters
// (already filtered by splitDynamic), the member's own Parameters, the
// managed synchronous_standby_names, TLS, the upstream.
func (n *Node) parameters(role Role, up *Upstream, dynamic map[string]string, syncNames *string) map[string]string {
	p := map[string]string{
		"listen_addresses": n.cfg.Listen,
		"port":             strconv.Itoa(n.cfg.Port),
		// No Unix sockets: several members on one host would clash on
		// /var/run/postgresql/.s.PGSQL.<port>, and paths under a deep
		// data dir exceed the 107-byte sun_path limit. We use TCP.
		"unix_socket_directories": "",
		"cluster_name":            n.cfg.Name,
		"wal_level":               "replica",
		"hot_standby":             "on",
		"wal_log_hints":           "on", // pg_rewind
		"max_wal_senders":         "10",
		"max_replication_slots":   "10",
		"wal_keep_size":           "128MB",
		// A replica whose primary went away retries after this long (the
		// default is 5 s): after a switchover or failover it finds the new
		// primary about as soon as its agent points it there.
		"wal_retrieve_retry_interval": "1s",
		"password_encryption":         "scram-sha-256",
		// Written on both roles: it is the default, and keeping it
		// identical means a promotion does not look like a restart-worthy
		// change of a postmaster-context setting.
		"recovery_target_timeline": "latest",
		// The agent captures stderr into RunDir/postgresql.log.
		"logging_collector": "off",
		"log_destination":   "stderr",
		"log_line_prefix":   "%m [%p] %q%u@%d ",
	}
	if n.cfg.MaxSlotWalKeepSize != "" {
		p["max_slot_wal_keep_size"] = n.cfg.MaxSlotWalKeepSize
	}
	for k, v := range dynamic {
		p[k] = v // checked by splitDynamic
	}
	for k, v := range n.cfg.Parameters {
		p[k] = v // protected keys were rejected by Validate
	}
	if syncNames != nil {
		// Written on both roles: a standby ignores it, and a promoted
		// standby then waits for its synchronous standbys from its first
		// commit on.
		p["synchronous_standby_names"] = *syncNames
	}
	n.setTLSParams(p)
	if role == RoleReplica && up != nil {
		p["primary_conninfo"] = n.primaryConninfo(*up)
		if up.Slot != "" {
			p["primary_slot_name"] = up.Slot
		}
	}
	return p
}

func (n *Node) primaryConninfo(up Upstream) string {
	return conninfo(n.sslConninfo(map[string]string{
		"host":                up.Host,
		"port":                strconv.Itoa(up.Port),
		"user":                n.cfg.ReplUser,
		"passfile":            n.PassFile(),
		"application_name":    n.cfg.Name,
		"connect_timeout":     "2",
		"keepalives":          "1",
		"keepalives_idle":     "5",
		"keepalives_interval": "2",
		"keepalives_count":    "3",
	}))
}

// conninfoOrder keeps conninfo strings readable and stable (stable text
// means no spurious "changed" from map iteration order).
var conninfoOrder = []string{"host", "port", "user", "passfile", "dbname", "application_name",
	"connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count"}

// conninfo renders libpq key=value pairs, quoting values as libpq wants.
func conninfo(kv map[string]string) string {
	var b strings.Builder
	done := map[string]bool{}
	emit := func(k string) {
		if done[k] {
			return
		}
		v, ok := kv[k]
		if !ok {
			return
		}
		done[k] = true
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(quoteConninfo(v))
	}
	for _, k := range conninfoOrder {
		emit(k)
	}
	rest := make([]string, 0, len(kv))
	for k := range kv {
		rest = append(rest, k)
	}
	sort.Strings(rest)
	for _, k := range rest {
		emit(k)
	}
	return b.String()
}

// The escapers are built once: a configuration is rendered often enough
// (and per value) that building them per call showed in allocation
// profiles.
var (
	conninfoEscaper = strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	confEscaper     = strings.NewReplacer(`\`, `\\`, `'`, `''`)
	pgpassEscaper   = strings.NewReplacer(`\`, `\\`, `:`, `\:`)
)

func quoteConninfo(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t'\\") {
		return v
	}
	return "'" + conninfoEscaper.Replace(v) + "'"
}

// quoteConf quotes a postgresql.conf value. Inside quotes the GUC lexer
// treats backslash as an escape and a doubled quote as one quote, so
// both are escaped.
func quoteConf(v string) string {
	return "'" + confEscaper.Replace(v) + "'"
}

func renderConf(p map[string]string) []byte {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	b.WriteString(managedHeader)
	b.WriteString("# Set parameters in pgha's configuration (postgresql.parameters) instead.\n")
	b.WriteString("# initdb's original settings come first; everything below overrides them.\n")
	b.WriteString("include_if_exists = '" + baseConfFile + "'\n\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteConf(p[k]))
	}
	return b.Bytes()
}

// parseManagedConf reads back what renderConf wrote (only that format:
// `key = 'value'` lines); comments and the include line are skipped.
func parseManagedConf(data []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, " = ")
		if !ok || k == "include_if_exists" {
			continue
		}
		if uv, ok := unquoteConf(v); ok {
			out[k] = uv
		}
	}
	return out
}

func unquoteConf(v string) (string, bool) {
	if len(v) < 2 || v[0] != '\'' || v[len(v)-1] != '\'' {
		return "", false
	}
	v = v[1 : len(v)-1]
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if (c == '\\' || c == '\'') && i+1 < len(v) {
			i++
			c = v[i]
		}
		b.WriteByte(c)
	}
	return b.String(), true
}

// renderHBA writes the managed pg_hba.conf. No Unix sockets are used, so
// every managed line is TCP with SCRAM; there is no trust line. "samehost"
// (any address of this machine) lets the agent's management connection
// and a replica on the same host (the loopback demo) in without opening
// anything wider. The per-network "all all" line admits the superuser
// too: pg_rewind on another member logs in as it (a plain connection, not
// replication) to read this server's files, so it must not be narrowed to
// non-superusers. With TLS every line is hostssl, so passwords and WAL
// never cross the network in clear, and the samehost lines too: the
// proxy on this node connects from this machine on behalf of clients
// from anywhere (pgha's own connections use TLS).
func (n *Node) renderHBA() []byte {
	var b bytes.Buffer
	b.WriteString(managedHeader)
	b.WriteString("# Add lines through pgha's configuration (postgresql.pg_hba) instead.\n")
	line := func(typ, db, usr, addr, method string) {
		fmt.Fprintf(&b, "%-7s %-12s %-14s %-20s %s\n", typ, db, usr, addr, method)
	}
	su, ru := `"`+n.cfg.Superuser+`"`, `"`+n.cfg.ReplUser+`"`
	// With TLS every TCP line is hostssl, this machine's too: the proxy
	// on this node connects from this machine's address on behalf of
	// clients from anywhere, so a plain host line here would let them
	// in without TLS.
	network := "host"
	if n.cfg.TLS.Enabled() {
		network = "hostssl"
	}
	b.WriteString("# this machine: the agent's management connection (superuser), a replica on the same host\n")
	line(network, "all", su, "samehost", "scram-sha-256")
	line(network, "replication", ru, "samehost", "scram-sha-256")
	if len(n.cfg.AllowedNetworks) > 0 {
		if network == "hostssl" {
			b.WriteString("# postgresql.allowed_networks, TLS required: replicas streaming, pg_rewind and clients\n")
		} else {
			b.WriteString("# postgresql.allowed_networks: replicas streaming, pg_rewind and clients\n")
		}
	}
	for _, cidr := range n.cfg.AllowedNetworks {
		line(network, "replication", ru, cidr, "scram-sha-256")
		line(network, "all", "all", cidr, "scram-sha-256")
	}
	if len(n.cfg.HBA) > 0 {
		b.WriteString("# user lines\n")
		for _, l := range n.cfg.HBA {
			b.WriteString(l + "\n")
		}
	}
	return b.Bytes()
}

// writePassFile writes RunDir/pgpass for pg_basebackup and the
// walreceiver. libpq ignores a password file readable by group or others,
// hence 0600 and owned by the OS user.
func (n *Node) writePassFile() error {
	esc := pgpassEscaper
	var b bytes.Buffer
	fmt.Fprintf(&b, "*:*:*:%s:%s\n", esc.Replace(n.cfg.ReplUser), esc.Replace(n.cfg.ReplPassword))
	// The superuser line serves pg_rewind's source connection.
	fmt.Fprintf(&b, "*:*:*:%s:%s\n", esc.Replace(n.cfg.Superuser), esc.Replace(n.cfg.SuperuserPassword))
	if _, err := n.writeFileAtomic(n.PassFile(), b.Bytes()); err != nil {
		return fmt.Errorf("pgpass: %w", err)
	}
	return nil
}

// writeFileAtomic replaces path with data (0600, owned by the OS user) via
// a temp file, fsync and rename, so PostgreSQL never reads a torn file.
// It does nothing if the content is already identical. The directories
// it writes in belong to the OS user, so it never writes through a path
// that user may have turned into a link (see internal/safefile).
func (n *Node) writeFileAtomic(path string, data []byte) (changed bool, err error) {
	return safefile.Replace(path, data, 0o600, n.owner())
}

func syncDir(dir string) { safefile.SyncDir(dir) }

// maxConfFile bounds what the agent reads of a configuration file the OS
// user can write.
const maxConfFile = 1 << 20

// readConfFile reads a configuration file in the data directory, which
// the OS user owns: a link, a FIFO or a huge file there was not written
// by PostgreSQL or pgha, so it is moved aside (for a human to look at)
// and reported as missing, never followed or read.
func (n *Node) readConfFile(path string) ([]byte, error) {
	data, err := safefile.ReadFile(path, maxConfFile)
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		return data, err
	}
	if fi, lerr := os.Lstat(path); lerr == nil && fi.Mode().IsRegular() && fi.Size() <= maxConfFile {
		return nil, err // an ordinary read error
	}
	dst, rerr := safefile.SetAside(path)
	if rerr != nil {
		return nil, fmt.Errorf("%w (and %v)", err, rerr)
	}
	n.log.Warn("moved aside a configuration file pgha did not write", "path", path, "to", dst, "why", err)
	return nil, fs.ErrNotExist
}

// PendingRestart reports whether PostgreSQL has settings that change only
// at the next restart (pg_settings.pending_restart).
func (n *Node) PendingRestart(ctx context.Context) (bool, error) {
	conn, err := n.Connect(ctx)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	var pending bool
	if err := conn.QueryRow(ctx, "SELECT count(*) > 0 FROM pg_settings WHERE pending_restart").Scan(&pending); err != nil {
		return false, fmt.Errorf("pending_restart: %w", err)
	}
	return pending, nil
}
