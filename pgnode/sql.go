package pgnode

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// connectHost picks the address for the management connection: loopback
// when PostgreSQL listens on it or on every address, else the first
// listen address.
func (n *Node) connectHost() string {
	var first string
	for _, a := range strings.Split(n.cfg.Listen, ",") {
		a = strings.TrimSpace(a)
		switch a {
		case "":
			continue
		case "*", "0.0.0.0", "localhost", "127.0.0.1":
			return "127.0.0.1"
		case "::", "::1":
			return "::1"
		}
		if first == "" {
			first = a
		}
	}
	if first == "" {
		return "127.0.0.1"
	}
	return first
}

// Connect opens a management connection: superuser with password over
// TCP, database postgres, application_name=pgha, synchronous_commit=local
// (a missing synchronous standby must never hang the agent) and a 5 s
// statement_timeout. Bound it with the context: pgx's connect_timeout has
// whole-second resolution, so sub-second checks need a deadline.
func (n *Node) Connect(ctx context.Context) (*pgx.Conn, error) {
	return n.connectTo(ctx, n.connectHost(), n.cfg.Port)
}

// ErrConnect marks a failure to open a management connection (as
// opposed to a query failing on one): the server accepts no new session.
var ErrConnect = errors.New("no new connection")

// connectTimeout bounds opening a management connection (a fork and a
// SCRAM exchange on the server: milliseconds, seconds under heavy load).
const connectTimeout = 4 * time.Second

// ConnectTo opens a management connection to another member's
// PostgreSQL, with this node's credentials and TLS (every TCP line of
// pg_hba.conf requires TLS when the cluster has it).
func (n *Node) ConnectTo(ctx context.Context, host string, port int) (*pgx.Conn, error) {
	return n.connectTo(ctx, host, port)
}

// connectTo opens a management connection to any member's PostgreSQL
// (they share the superuser credentials), e.g. a rewind source.
func (n *Node) connectTo(ctx context.Context, host string, port int) (*pgx.Conn, error) {
	// Everything is spelled out so that no PG* environment variable or
	// ~/.pgpass of the agent's user changes what we connect to.
	cs := conninfo(n.sslManagement(map[string]string{
		"host":             host,
		"port":             strconv.Itoa(port),
		"user":             n.cfg.Superuser,
		"password":         n.cfg.SuperuserPassword,
		"dbname":           "postgres",
		"application_name": "pgha",
		"connect_timeout":  "5",
	}))
	cfg, err := pgx.ParseConfig(cs)
	if err != nil {
		return nil, fmt.Errorf("connect: parse config: %w", err)
	}
	cfg.RuntimeParams["synchronous_commit"] = "local"
	cfg.RuntimeParams["statement_timeout"] = "5s"
	// Bounded whatever the caller's context: a server that accepts TCP
	// but does not answer (stopped, hung) must not hold up the HA loop
	// for longer than this.
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		addr := net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			// The server answered (too many clients, a refused login): it
			// is not hung, whatever else is wrong.
			return nil, fmt.Errorf("connect %s: %w", addr, err)
		}
		return nil, fmt.Errorf("connect %s: %w: %w", addr, ErrConnect, err)
	}
	return conn, nil
}

// Status is a snapshot of the local PostgreSQL, read in one query.
type Status struct {
	Running    bool
	InRecovery bool
	// Timeline: on a primary, of the current WAL segment (pg_control's
	// checkpoint timeline lags after a promotion); on a replica, the
	// newest timeline it is known to follow: the walreceiver's
	// received_tli, the minimum recovery point's or the last
	// restartpoint's timeline, whichever is newest. The last two trail a
	// timeline switch until the next restartpoint, so a caller that saw
	// ReceivedTLI earlier should remember it (the walreceiver's row is
	// gone while the primary is down).
	Timeline uint32
	// ReceivedTLI is the walreceiver's received_tli (replica; 0 when no
	// walreceiver runs or it has received nothing yet).
	ReceivedTLI uint32
	// WalLSN: primary pg_current_wal_lsn(); replica pg_last_wal_replay_lsn().
	WalLSN     uint64
	ReceiveLSN uint64 // replica: pg_last_wal_receive_lsn(), 0 if none
	ReplayLSN  uint64 // replica: pg_last_wal_replay_lsn()
	Streaming  bool   // replica: walreceiver status is "streaming"
	// UpstreamHost is the walreceiver's sender_host (replica).
	UpstreamHost string
	// ReplayLagSeconds: replica, now() - pg_last_xact_replay_timestamp();
	// it grows while the primary is idle.
	ReplayLagSeconds float64
	// Replicas are the primary's pg_stat_replication rows, by name.
	Replicas []ReplicaInfo
}

// ReplicaInfo is one row of pg_stat_replication.
type ReplicaInfo struct {
	ApplicationName string
	ClientAddr      string
	State           string // startup, catchup, streaming, backup, stopping
	SentLSN         uint64
	WriteLSN        uint64
	FlushLSN        uint64
	ReplayLSN       uint64
	SyncState       string // async, potential, sync, quorum
}

// statusQuery works on primaries and replicas alike: functions that fail
// during recovery sit behind CASE, which PostgreSQL evaluates lazily.
const statusQuery = `
SELECT r.rec,
       CASE WHEN r.rec THEN NULL ELSE pg_current_wal_lsn()::text END,
       CASE WHEN r.rec THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END,
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       (SELECT timeline_id::int8 FROM pg_control_checkpoint()),
       (SELECT min_recovery_end_timeline::int8 FROM pg_control_recovery()),
       CASE WHEN r.rec THEN COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)::float8 ELSE 0 END,
       w.status,
       w.received_tli::int8,
       w.sender_host,
       (SELECT COALESCE(json_agg(json_build_object(
                   'application_name', s.application_name,
                   'client_addr', host(s.client_addr),
                   'state', s.state,
                   'sent_lsn', s.sent_lsn::text,
                   'write_lsn', s.write_lsn::text,
                   'flush_lsn', s.flush_lsn::text,
                   'replay_lsn', s.replay_lsn::text,
                   'sync_state', s.sync_state) ORDER BY s.application_name, s.pid), '[]')
          FROM pg_stat_replication s)
  FROM (SELECT pg_is_in_recovery() AS rec) r
  LEFT JOIN pg_stat_wal_receiver w ON true`

// Status reads the server's state in one round trip over a fresh
// management connection, bounded by ctx. On error Running reflects only
// whether our child process is alive.
func (n *Node) Status(ctx context.Context) (Status, error) {
	st := Status{Running: n.Running()}
	// One management connection, kept between calls: the HA loop asks
	// every second, and a new connection each time would cost a backend
	// fork and a SCRAM exchange (thousands of hash rounds) per second.
	n.statusMu.Lock()
	defer n.statusMu.Unlock()
	if n.statusConn == nil || n.statusConn.IsClosed() {
		// A new session (a fork and a SCRAM exchange) may take longer
		// than the caller's query deadline on a busy machine: it gets
		// the connect timeout, the query the caller's deadline.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), connectTimeout)
		stop := context.AfterFunc(ctx, func() {
			if errors.Is(ctx.Err(), context.Canceled) {
				cancel() // shutting down: do not wait out the connect
			}
		})
		conn, err := n.Connect(cctx)
		stop()
		cancel()
		if err != nil {
			return st, fmt.Errorf("status: %w", err)
		}
		n.statusConn = conn
	}
	conn := n.statusConn

	var (
		walLSN, walTLI, recvLSN, replayLSN, wrStatus, sender *string
		ckptTLI, minRecTLI, recvTLI                          *int64
		replicasJSON                                         []byte
	)
	err := conn.QueryRow(ctx, statusQuery).Scan(&st.InRecovery, &walLSN, &walTLI, &recvLSN, &replayLSN,
		&ckptTLI, &minRecTLI, &st.ReplayLagSeconds, &wrStatus, &recvTLI, &sender, &replicasJSON)
	if err != nil {
		// A restart, a timeout or a broken socket: start afresh next time.
		conn.Close(context.WithoutCancel(ctx))
		n.statusConn = nil
		return st, fmt.Errorf("status: %w", err)
	}
	st.Running = true
	var errs []error
	lsn := func(p *string) uint64 {
		if p == nil {
			return 0
		}
		v, err := ParseLSN(*p)
		errs = append(errs, err)
		return v
	}
	st.ReceiveLSN = lsn(recvLSN)
	st.ReplayLSN = lsn(replayLSN)
	if st.InRecovery {
		st.WalLSN = st.ReplayLSN
		st.Streaming = wrStatus != nil && *wrStatus == "streaming"
		if sender != nil {
			st.UpstreamHost = *sender
		}
		for _, tli := range []*int64{recvTLI, minRecTLI, ckptTLI} {
			if tli != nil && *tli > 0 && uint32(*tli) > st.Timeline {
				st.Timeline = uint32(*tli)
			}
		}
		if recvTLI != nil && *recvTLI > 0 {
			st.ReceivedTLI = uint32(*recvTLI)
		}
	} else {
		st.WalLSN = lsn(walLSN)
		if walTLI != nil {
			tli, err := strconv.ParseUint(*walTLI, 16, 32)
			errs = append(errs, err)
			st.Timeline = uint32(tli)
		}
	}

	var rows []struct {
		ApplicationName string  `json:"application_name"`
		ClientAddr      *string `json:"client_addr"`
		State           string  `json:"state"`
		SentLSN         *string `json:"sent_lsn"`
		WriteLSN        *string `json:"write_lsn"`
		FlushLSN        *string `json:"flush_lsn"`
		ReplayLSN       *string `json:"replay_lsn"`
		SyncState       string  `json:"sync_state"`
	}
	if err := json.Unmarshal(replicasJSON, &rows); err != nil {
		return st, fmt.Errorf("status: pg_stat_replication: %w", err)
	}
	for _, r := range rows {
		ri := ReplicaInfo{
			ApplicationName: r.ApplicationName, State: r.State, SyncState: r.SyncState,
			SentLSN: lsn(r.SentLSN), WriteLSN: lsn(r.WriteLSN), FlushLSN: lsn(r.FlushLSN), ReplayLSN: lsn(r.ReplayLSN),
		}
		if r.ClientAddr != nil {
			ri.ClientAddr = *r.ClientAddr
		}
		st.Replicas = append(st.Replicas, ri)
	}
	if err := errors.Join(errs...); err != nil {
		return st, fmt.Errorf("status: %w", err)
	}
	return st, nil
}

// SlotPrefix marks the replication slots pgha owns. EnsureSlots never
// touches a slot without it.
const SlotPrefix = "pgha_"

// SlotName returns the physical slot name for a member: SlotPrefix + the
// lower-cased name with anything outside [a-z0-9_] replaced by '_', cut
// to PostgreSQL's 63-byte limit. Distinct names can map to one slot
// ("a-b", "a.b"); member names should avoid relying on punctuation.
func SlotName(member string) string {
	var b strings.Builder
	b.WriteString(SlotPrefix)
	for _, r := range strings.ToLower(member) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	s := b.String()
	if len(s) > 63 {
		s = s[:63]
	}
	return s
}

func validSlotName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if !((r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_') {
			return false
		}
	}
	return true
}

// EnsureSlots makes the physical replication slots on this primary match
// want: it creates each missing one (reserving WAL at once, so a replica
// that connects later finds everything it needs), and drops inactive
// slots that carry SlotPrefix but are not wanted. An active unwanted slot
// is kept until its walsender goes away. Slots without the prefix belong
// to someone else and are never touched.
func (n *Node) EnsureSlots(ctx context.Context, want []string) (created, dropped []string, err error) {
	wanted := map[string]bool{}
	for _, s := range want {
		if !validSlotName(s) {
			return nil, nil, fmt.Errorf("ensure slots: invalid slot name %q", s)
		}
		wanted[s] = true
	}
	conn, err := n.Connect(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("ensure slots: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return nil, nil, fmt.Errorf("ensure slots: %w", err)
	}
	if inRecovery {
		return nil, nil, fmt.Errorf("ensure slots: %w", ErrNotPrimary)
	}

	type slot struct {
		physical, active bool
	}
	existing := map[string]slot{}
	rows, err := conn.Query(ctx, "SELECT slot_name::text, slot_type = 'physical', active FROM pg_replication_slots")
	if err != nil {
		return nil, nil, fmt.Errorf("ensure slots: %w", err)
	}
	for rows.Next() {
		var name string
		var s slot
		if err := rows.Scan(&name, &s.physical, &s.active); err != nil {
			rows.Close()
			return nil, nil, fmt.Errorf("ensure slots: %w", err)
		}
		existing[name] = s
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("ensure slots: %w", err)
	}

	for _, name := range sortedKeys(wanted) {
		if s, ok := existing[name]; ok {
			if !s.physical {
				return created, dropped, fmt.Errorf("ensure slots: %q exists but is a logical slot", name)
			}
			continue
		}
		if _, err := conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", name); err != nil {
			return created, dropped, fmt.Errorf("ensure slots: create %s: %w", name, err)
		}
		n.log.Info("created replication slot", "slot", name)
		created = append(created, name)
	}
	for _, name := range sortedKeys(existing) {
		s := existing[name]
		if wanted[name] || !strings.HasPrefix(name, SlotPrefix) || !s.physical || s.active {
			continue
		}
		if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", name); err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && (pgErr.Code == "55006" || pgErr.Code == "42704") {
				continue // became active, or already gone: next round decides
			}
			return created, dropped, fmt.Errorf("ensure slots: drop %s: %w", name, err)
		}
		n.log.Info("dropped replication slot", "slot", name)
		dropped = append(dropped, name)
	}
	return created, dropped, nil
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// ensureReplRole creates (or updates) the replication role with
// REPLICATION LOGIN and the configured password. For ASCII passwords the
// SCRAM verifier is computed here, so the plain password never reaches
// the server (nor its logs); statement logging is off for the session
// either way.
func (n *Node) ensureReplRole(ctx context.Context) error {
	conn, err := n.Connect(ctx)
	if err != nil {
		return fmt.Errorf("replication role: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "SET log_statement = 'none'; SET log_min_error_statement = 'panic'; "+
		"SET log_min_duration_statement = -1; SET password_encryption = 'scram-sha-256'"); err != nil {
		return fmt.Errorf("replication role: %w", err)
	}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", n.cfg.ReplUser).Scan(&exists); err != nil {
		return fmt.Errorf("replication role: %w", err)
	}
	secret := n.cfg.ReplPassword
	if isASCII(secret) {
		if secret, err = scramVerifier(secret); err != nil {
			return fmt.Errorf("replication role: %w", err)
		}
	}
	verb := "CREATE"
	if exists {
		verb = "ALTER"
	}
	stmt := fmt.Sprintf("%s ROLE %s WITH REPLICATION LOGIN PASSWORD %s",
		verb, pgx.Identifier{n.cfg.ReplUser}.Sanitize(), quoteLiteral(secret))
	if _, err := conn.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("replication role: %s role %s: %w", strings.ToLower(verb), n.cfg.ReplUser, err)
	}
	n.log.Info("replication role ready", "role", n.cfg.ReplUser, "created", !exists)
	return nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// quoteLiteral quotes a SQL string literal (standard_conforming_strings
// is on since 9.1, so only the quote needs doubling).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// scramVerifier computes PostgreSQL's SCRAM-SHA-256 verifier (RFC 5803
// format) with a random salt and PostgreSQL's default 4096 iterations.
// SASLprep leaves ASCII passwords unchanged, which is why callers only
// use it for those.
func scramVerifier(password string) (string, error) {
	const iterations = 4096
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("scram salt: %w", err)
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return "", fmt.Errorf("scram: %w", err)
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	server := mac(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, b64(salt), b64(stored[:]), b64(server)), nil
}

// closeStatusConn drops the kept management connection.
func (n *Node) closeStatusConn() {
	n.statusMu.Lock()
	defer n.statusMu.Unlock()
	if n.statusConn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		n.statusConn.Close(ctx)
		n.statusConn = nil
	}
}
