package api

import (
	"crypto/tls"
	"net/http"
	"time"

	"github.com/pgha/pgha/cluster"
)

// ClusterInfo is the body of GET /cluster: the cluster as the answering
// node sees it (Raft FSM for the authoritative part, gossip for the rest).
type ClusterInfo struct {
	Cluster     string `json:"cluster"`
	ClusterID   string `json:"cluster_id,omitempty"`
	SystemID    uint64 `json:"system_id,string,omitempty"`
	Initialized bool   `json:"initialized"`
	Leader      string `json:"leader,omitempty"`  // Raft leader
	Primary     string `json:"primary,omitempty"` // holder of the primary record
	Epoch       uint64 `json:"epoch,omitempty"`
	Timeline    uint32 `json:"timeline,omitempty"`
	PrimaryLSN  string `json:"primary_lsn,omitempty"`
	Paused      bool   `json:"paused"`
	// ScheduledSwitchover is a planned switchover, if any.
	ScheduledSwitchover *ScheduledInfo `json:"scheduled_switchover,omitempty"`
	// Sync says how synchronous replication stands ("" when off).
	Sync     string       `json:"synchronous,omitempty"`
	Observer string       `json:"observer"` // the member that answered
	Members  []MemberInfo `json:"members"`
}

// MemberInfo is one row of `pgha list`.
type MemberInfo struct {
	Name     string          `json:"name"`
	Host     string          `json:"host,omitempty"` // PostgreSQL host:port
	API      string          `json:"api,omitempty"`
	Role     string          `json:"role"`  // leader (the primary), replica, witness
	State    cluster.PGState `json:"state"` // running, streaming, stopped, cloning, unreachable...
	Timeline uint32          `json:"timeline,omitempty"`
	LagBytes *int64          `json:"lag_bytes,omitempty"`
	WAL      string          `json:"wal_lsn,omitempty"`
	Raft     string          `json:"raft"` // leader, voter, nonvoter, none
	Tags     map[string]any  `json:"tags,omitempty"`
	Waiting  string          `json:"waiting,omitempty"`
	Error    string          `json:"error,omitempty"`
	// Ineligible says why this member could not be promoted right now
	// (the rule automatic failover, switchover and failover apply), ""
	// when it could be; not set for the primary and witnesses.
	Ineligible string `json:"ineligible,omitempty"`
	Write      string `json:"write,omitempty"` // proxy write address
	Read       string `json:"read,omitempty"`  // proxy read address
}

// HealthInfo is the body of GET /health and of every Patroni-style health
// endpoint (/primary, /replica, /read-only...): the node's status as its
// agent sees it. The endpoints differ only in which status they answer 200
// to (see health.go); the body is the same, as with Patroni.
type HealthInfo struct {
	Name    string `json:"name"`
	Cluster string `json:"scope,omitempty"`
	// Role is primary, replica, witness or "" (nothing running yet).
	Role  cluster.Role    `json:"role"`
	State cluster.PGState `json:"state"`
	// PGRunning: PostgreSQL accepts connections.
	PGRunning bool `json:"postgres_running"`
	// InRecovery: PostgreSQL runs as a standby (pg_is_in_recovery()).
	InRecovery bool   `json:"in_recovery,omitempty"`
	Timeline   uint32 `json:"timeline,omitempty"`
	WAL        string `json:"wal_lsn,omitempty"`
	// ReceiveLSN and ReplayLSN are a replica's positions.
	ReceiveLSN string `json:"receive_lsn,omitempty"`
	ReplayLSN  string `json:"replay_lsn,omitempty"`
	// ReplicationState is Patroni's: "streaming" when the walreceiver
	// streams, "in archive recovery" otherwise (replicas only).
	ReplicationState string `json:"replication_state,omitempty"`
	// LagBytes is how far a replica is behind the primary's position
	// (replayed WAL against the primary's last known LSN); nil when
	// unknown (no primary, or not a replica).
	LagBytes *int64 `json:"lag_bytes,omitempty"`
	// ReplayLagSeconds is now() - pg_last_xact_replay_timestamp().
	ReplayLagSeconds float64 `json:"replay_lag_seconds,omitempty"`
	// SyncStandby: this replica is in the committed synchronous set.
	SyncStandby bool `json:"sync_standby,omitempty"`
	// Primary: this node holds the primary record and Raft leadership.
	Primary bool `json:"primary"`
	// Raft is this node's Raft state; Leader the Raft leader's name.
	Raft   string `json:"raft_state"`
	Leader string `json:"raft_leader,omitempty"`
	Paused bool   `json:"pause,omitempty"`
	// PendingRestart: a changed setting needs a PostgreSQL restart.
	PendingRestart bool           `json:"pending_restart,omitempty"`
	Tags           map[string]any `json:"tags,omitempty"`
	Waiting        string         `json:"waiting,omitempty"`
	Error          string         `json:"error,omitempty"`
	// LoopAt is when the HA loop last finished a round; /liveness fails
	// when it is stale.
	LoopAt time.Time `json:"loop_at"`
	// MaxLagOnFailover is the cluster's maximum_lag_on_failover, the
	// default lag bound of /readiness.
	MaxLagOnFailover int64 `json:"-"`
	// Yield: this node holds the primary record but cannot run
	// PostgreSQL as primary; the leader must fail over instead of handing
	// leadership back to it.
	Yield bool `json:"yield,omitempty"`
}

// ClientOptions configures a Client: TLS for an https API and the
// credentials sent with every request.
type ClientOptions struct {
	// TLS, when set, makes the client speak https and verify the server
	// with it (RootCAs = the cluster CA).
	TLS *tls.Config
	// Auth is "user:password" for HTTP basic auth.
	Auth string
	// Token is sent as "Authorization: Bearer TOKEN" (when Auth is empty).
	Token string
	// Transport, when set, is used as is (TLS then comes from it): a
	// long-lived caller shares one so connections are reused, not leaked
	// one transport per call.
	Transport http.RoundTripper
}

// JoinRequest is the body of POST /v1/join.
type JoinRequest struct {
	// Addr is the gossip host:port of any member of the cluster to join.
	Addr string `json:"addr"`
	// TimeoutSeconds bounds the wait for the leader to add this node.
	TimeoutSeconds int `json:"timeout_seconds,omitempty"`
}

// RemoveRequest is the body of POST /v1/remove.
type RemoveRequest struct {
	Name  string `json:"name"`
	Force bool   `json:"force,omitempty"`
}

// ErrorBody is what every error response carries.
type ErrorBody struct {
	Error string `json:"error"`
}

// SwitchoverRequest is the body of POST /switchover and POST /failover
// (Patroni's field names).
type SwitchoverRequest struct {
	// Leader, when set, must name the current primary (a guard against
	// acting on a stale view).
	Leader string `json:"leader,omitempty"`
	// Candidate is the member to promote; switchover picks the best one
	// when empty, failover requires it.
	Candidate string `json:"candidate,omitempty"`
	// Force skips the lag check (never the catch-up wait of a switchover).
	Force bool `json:"force,omitempty"`
	// ScheduledAt (RFC 3339) plans the switchover for later; the leader
	// runs it then. Switchover only.
	ScheduledAt string `json:"scheduled_at,omitempty"`
}

// SwitchoverResult is the answer of a successful switchover or failover.
type SwitchoverResult struct {
	Old         string  `json:"old"`
	New         string  `json:"new"`
	Epoch       uint64  `json:"epoch"`
	WriteGapSec float64 `json:"write_gap_seconds,omitempty"`
	Message     string  `json:"message"`
}

// PauseRequest is the body of POST /v1/pause.
type PauseRequest struct {
	Paused bool `json:"paused"`
}

// HistoryEntry is one change of primary, as GET /history lists them.
type HistoryEntry struct {
	Epoch       uint64    `json:"epoch"`
	At          time.Time `json:"at"`
	Old         string    `json:"old,omitempty"`
	New         string    `json:"new"`
	Timeline    uint32    `json:"timeline,omitempty"`
	LSN         string    `json:"lsn,omitempty"`
	Reason      string    `json:"reason"`
	DowntimeSec *float64  `json:"write_downtime_seconds,omitempty"`
}

// DynamicConfig is the body of GET /config and the result of PATCH
// /config: the cluster-wide configuration kept in Raft (Patroni's keys).
type DynamicConfig struct {
	MaximumLagOnFailover  int64 `json:"maximum_lag_on_failover"`
	SynchronousMode       bool  `json:"synchronous_mode"`
	SynchronousNodeCount  int   `json:"synchronous_node_count"`
	SynchronousModeStrict bool  `json:"synchronous_mode_strict"`
	// Seconds; the values in force (defaults filled in).
	PrimaryUnresponsiveTimeout int              `json:"primary_unresponsive_timeout"`
	PrimaryStartTimeout        int              `json:"primary_start_timeout"`
	Pause                      bool             `json:"pause"`
	PostgreSQL                 PostgreSQLConfig `json:"postgresql"`
}

// PostgreSQLConfig holds the cluster-wide PostgreSQL parameters.
type PostgreSQLConfig struct {
	Parameters map[string]string `json:"parameters"`
}

// ScheduledInfo describes a planned switchover.
type ScheduledInfo struct {
	At        time.Time `json:"at"`
	From      string    `json:"from"`
	Candidate string    `json:"candidate,omitempty"`
}

// Check statuses, in the Nagios convention (exit codes OK 0, WARNING 1,
// CRITICAL 2, UNKNOWN 3; see CheckExitCode).
const (
	CheckOK       = "OK"
	CheckWarning  = "WARNING"
	CheckCritical = "CRITICAL"
	CheckUnknown  = "UNKNOWN"
)

// CheckOptions are the thresholds of GET /check (query parameters
// warn_lag, crit_lag as sizes; warn_conn, crit_conn as percentages of
// max_connections).
type CheckOptions struct {
	WarnLag     int64
	CritLag     int64
	WarnConnPct int
	CritConnPct int
}

// DefaultCheckOptions are used for thresholds the caller leaves out.
func DefaultCheckOptions() CheckOptions {
	return CheckOptions{WarnLag: 16 << 20, CritLag: 64 << 20, WarnConnPct: 80, CritConnPct: 90}
}

// CheckItem is one component's verdict.
type CheckItem struct {
	Component string `json:"component"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

// CheckResult is the body of GET /check.
type CheckResult struct {
	Name   string       `json:"name"`
	Role   cluster.Role `json:"role"`
	Status string       `json:"status"` // the worst of Checks
	Checks []CheckItem  `json:"checks"`
}

// CheckRank orders statuses from best to worst, for the overall verdict:
// a CRITICAL outranks an UNKNOWN.
func CheckRank(s string) int {
	switch s {
	case CheckOK:
		return 0
	case CheckWarning:
		return 1
	case CheckUnknown:
		return 2
	}
	return 3
}

// CheckExitCode is the Nagios exit code of a status.
func CheckExitCode(s string) int {
	switch s {
	case CheckOK:
		return 0
	case CheckWarning:
		return 1
	case CheckCritical:
		return 2
	}
	return 3
}
