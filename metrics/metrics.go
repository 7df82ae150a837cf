// Package metrics exposes a node's state in the Prometheus text format
// (GET /metrics). Values are read from a Snapshot at scrape time, so no
// goroutine copies state into gauges between scrapes and a scrape always
// sees one consistent picture. The HA loop duration is the exception: it
// is a histogram the agent observes every round.
package metrics

import (
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Snapshot is what the agent reports at each scrape.
type Snapshot struct {
	Name    string
	Cluster string
	// Role is primary, replica, witness or none.
	Role        cluster.Role
	PGRunning   bool
	Primary     bool // holds the primary record and Raft leadership
	SyncStandby bool
	Paused      bool
	Pending     bool // pending restart
	Timeline    uint32
	// CurrentLSN is the primary's pg_current_wal_lsn (0 on replicas);
	// ReceiveLSN and ReplayLSN a replica's positions (0 on the primary).
	CurrentLSN, ReceiveLSN, ReplayLSN uint64
	// LagBytes is how far this replica is behind the primary; nil when
	// unknown or not a replica.
	LagBytes         *int64
	ReplayLagSeconds float64

	RaftState     string // Leader, Follower, Candidate, Shutdown
	RaftTerm      uint64
	RaftLastIndex uint64
	RaftCommit    uint64
	RaftApplied   uint64
	// RaftLastContact is the time since the leader was last heard from;
	// 0 on the leader, negative when never.
	RaftLastContact time.Duration
	RaftVoters      int

	// PrimaryChanges counts the retained history's primary changes by
	// reason (failover, switchover, manual...).
	PrimaryChanges map[string]int
	// WritableMembers is how many members report PostgreSQL accepting
	// writes. More than one must never happen.
	WritableMembers int
	MembersAlive    int
	Members         int

	Proxy proxy.Stats

	// APILoginFailures counts API requests with wrong credentials,
	// APILoginThrottled those refused (429) while their address waited.
	APILoginFailures, APILoginThrottled int64
}

// Source produces a Snapshot; the agent implements it.
type Source interface {
	MetricsSnapshot() Snapshot
}

// Registry is one node's metrics: the snapshot collector, the HA loop
// histogram and the Go runtime and process collectors.
type Registry struct {
	reg *prometheus.Registry
	// LoopDuration is observed by the agent after each HA loop round.
	LoopDuration prometheus.Histogram
}

// New builds the registry for src.
func New(src Source) *Registry {
	r := &Registry{
		reg: prometheus.NewRegistry(),
		LoopDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pgha_ha_loop_duration_seconds",
			Help:    "Duration of one HA loop round (probe, decide, act).",
			Buckets: []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}),
	}
	r.reg.MustRegister(r.LoopDuration, &collector{src: src},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Handler serves the registry in the Prometheus text format.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Gatherer is the underlying registry (tests read it directly).
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	dInfo        = desc("pgha_info", "Always 1; labels name the member and cluster.", "name", "cluster")
	dPrimary     = desc("pgha_primary", "1 if this node is the primary (holds the primary record and Raft leadership).")
	dReplica     = desc("pgha_replica", "1 if this node runs PostgreSQL as a replica.")
	dRole        = desc("pgha_role", "1 for this node's current role.", "role")
	dSync        = desc("pgha_sync_standby", "1 if this replica is in the committed synchronous standby set.")
	dPGUp        = desc("pgha_postgres_up", "1 if PostgreSQL is running and answering.")
	dPaused      = desc("pgha_paused", "1 if the cluster is in maintenance mode (no automatic failover).")
	dPending     = desc("pgha_pending_restart", "1 if a changed setting needs a PostgreSQL restart.")
	dTimeline    = desc("pgha_timeline", "PostgreSQL timeline of this node, 0 if unknown.")
	dCurrentLSN  = desc("pgha_wal_current_lsn_bytes", "pg_current_wal_lsn() on the primary, 0 elsewhere.")
	dReceiveLSN  = desc("pgha_wal_received_lsn_bytes", "pg_last_wal_receive_lsn() on a replica, 0 elsewhere.")
	dReplayLSN   = desc("pgha_wal_replayed_lsn_bytes", "pg_last_wal_replay_lsn() on a replica, 0 elsewhere.")
	dLagBytes    = desc("pgha_replication_lag_bytes", "Bytes this replica's replayed WAL is behind the primary's position.")
	dLagSeconds  = desc("pgha_replication_lag_seconds", "now() - pg_last_xact_replay_timestamp() on a replica (grows while the primary is idle).")
	dRaftState   = desc("pgha_raft_state", "1 for this node's current Raft state.", "state")
	dRaftLeader  = desc("pgha_raft_leader", "1 if this node is the Raft leader.")
	dRaftTerm    = desc("pgha_raft_term", "Current Raft term.")
	dRaftLast    = desc("pgha_raft_last_log_index", "Index of the last Raft log entry.")
	dRaftCommit  = desc("pgha_raft_commit_index", "Raft commit index.")
	dRaftApplied = desc("pgha_raft_applied_index", "Raft index last applied to the FSM.")
	dRaftContact = desc("pgha_raft_last_contact_seconds", "Seconds since the Raft leader was last heard from (0 on the leader, -1 if never).")
	dRaftVoters  = desc("pgha_raft_voters", "Number of voters in the Raft configuration.")
	dChanges     = desc("pgha_history_primary_changes", "Primary changes in the retained cluster history (the last 200), by reason; a gauge, since old entries age out.", "reason")
	dWritable    = desc("pgha_writable_members", "Members that report PostgreSQL accepting writes; more than 1 is a split brain.")
	dMembers     = desc("pgha_members", "Members known to gossip, by liveness.", "state")
	dAPIFailures = desc("pgha_api_login_failures_total", "API requests that presented wrong credentials.")
	dAPIThrottle = desc("pgha_api_login_throttled_total", "API requests refused (429) because their address failed to log in too often.")

	dProxyCurrent   = desc("pgha_proxy_connections", "Open client connections of a proxy port (held ones included).", "port")
	dProxyTotal     = desc("pgha_proxy_connections_total", "Client connections accepted by a proxy port.", "port")
	dProxyRefused   = desc("pgha_proxy_refused_total", "Client connections the proxy refused itself (port full, hold expired, no backend, address not allowed).", "port")
	dProxyDenied    = desc("pgha_proxy_denied_total", "Client connections the proxy refused because their address is outside postgresql.allowed_networks.", "port")
	dProxyHeldNow   = desc("pgha_proxy_held_connections", "Client connections held waiting for a primary.", "port")
	dProxyHeld      = desc("pgha_proxy_held_total", "Client connections that had to wait for a primary.", "port")
	dProxyHoldSecs  = desc("pgha_proxy_hold_seconds_total", "Time clients spent held waiting for a primary.", "port")
	dLoopBusy       = desc("pgha_proxy_loop_busy_seconds_total", "Time a proxy event loop spent serving its sockets; a rate near 1 means the loop limits the proxy (raise proxy.event_loops).", "loop")
	dLoopSessions   = desc("pgha_proxy_loop_sessions", "Connections a proxy event loop carries.", "loop")
	dBackendCurrent = desc("pgha_proxy_backend_connections", "Open connections to a backend.", "port", "backend", "addr")
	dBackendTotal   = desc("pgha_proxy_backend_connections_total", "Connections made to a backend.", "port", "backend", "addr")
	dBackendBytes   = desc("pgha_proxy_backend_bytes_total", "Bytes relayed to (in) and from (out) a backend, counted when a connection's direction ends.", "port", "backend", "addr", "direction")
	dBackendErrors  = desc("pgha_proxy_backend_errors_total", "Failed dials to a backend.", "port", "backend", "addr")
)

var roles = []cluster.Role{cluster.RolePrimary, cluster.RoleReplica, cluster.RoleWitness}
var raftStates = []string{"Leader", "Follower", "Candidate", "Shutdown"}

type collector struct{ src Source }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{dInfo, dPrimary, dReplica, dRole, dSync, dPGUp, dPaused, dPending, dTimeline,
		dCurrentLSN, dReceiveLSN, dReplayLSN, dLagBytes, dLagSeconds, dRaftState, dRaftLeader, dRaftTerm, dRaftLast,
		dRaftCommit, dRaftApplied, dRaftContact, dRaftVoters, dChanges, dWritable, dMembers, dAPIFailures, dAPIThrottle,
		dProxyCurrent, dProxyTotal, dProxyRefused, dProxyDenied, dProxyHeldNow, dProxyHeld, dProxyHoldSecs, dLoopBusy, dLoopSessions,
		dBackendCurrent, dBackendTotal, dBackendBytes, dBackendErrors} {
		ch <- d
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.MetricsSnapshot()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(dInfo, 1, s.Name, s.Cluster)
	gauge(dPrimary, b2f(s.Primary))
	gauge(dReplica, b2f(s.Role == cluster.RoleReplica && s.PGRunning))
	for _, r := range roles {
		gauge(dRole, b2f(s.Role == r), string(r))
	}
	gauge(dSync, b2f(s.SyncStandby))
	gauge(dPGUp, b2f(s.PGRunning))
	gauge(dPaused, b2f(s.Paused))
	gauge(dPending, b2f(s.Pending))
	gauge(dTimeline, float64(s.Timeline))
	gauge(dCurrentLSN, float64(s.CurrentLSN))
	gauge(dReceiveLSN, float64(s.ReceiveLSN))
	gauge(dReplayLSN, float64(s.ReplayLSN))
	if s.LagBytes != nil {
		gauge(dLagBytes, float64(*s.LagBytes))
		gauge(dLagSeconds, s.ReplayLagSeconds)
	}
	for _, st := range raftStates {
		gauge(dRaftState, b2f(s.RaftState == st), st)
	}
	gauge(dRaftLeader, b2f(s.RaftState == "Leader"))
	gauge(dRaftTerm, float64(s.RaftTerm))
	gauge(dRaftLast, float64(s.RaftLastIndex))
	gauge(dRaftCommit, float64(s.RaftCommit))
	gauge(dRaftApplied, float64(s.RaftApplied))
	counter(dAPIFailures, float64(s.APILoginFailures))
	counter(dAPIThrottle, float64(s.APILoginThrottled))
	contact := -1.0
	if s.RaftLastContact >= 0 {
		contact = s.RaftLastContact.Seconds()
	}
	gauge(dRaftContact, contact)
	gauge(dRaftVoters, float64(s.RaftVoters))
	reasons := make([]string, 0, len(s.PrimaryChanges))
	for r := range s.PrimaryChanges {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		gauge(dChanges, float64(s.PrimaryChanges[r]), r)
	}
	gauge(dWritable, float64(s.WritableMembers))
	gauge(dMembers, float64(s.MembersAlive), "alive")
	gauge(dMembers, float64(s.Members-s.MembersAlive), "unreachable")

	for _, p := range []struct {
		name string
		st   proxy.PortStats
	}{{"write", s.Proxy.Write}, {"read", s.Proxy.Read}} {
		if p.st.Listen == "" {
			continue // port disabled
		}
		gauge(dProxyCurrent, float64(p.st.Current), p.name)
		counter(dProxyTotal, float64(p.st.Total), p.name)
		counter(dProxyRefused, float64(p.st.Refused), p.name)
		counter(dProxyDenied, float64(p.st.Denied), p.name)
		gauge(dProxyHeldNow, float64(p.st.HeldNow), p.name)
		counter(dProxyHeld, float64(p.st.HeldTotal), p.name)
		counter(dProxyHoldSecs, p.st.HoldSecondsTotal, p.name)
		names := make([]string, 0, len(p.st.Backends))
		for n := range p.st.Backends {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			b := p.st.Backends[n]
			gauge(dBackendCurrent, float64(b.Current), p.name, n, b.Addr)
			counter(dBackendTotal, float64(b.Total), p.name, n, b.Addr)
			counter(dBackendBytes, float64(b.BytesIn), p.name, n, b.Addr, "in")
			counter(dBackendBytes, float64(b.BytesOut), p.name, n, b.Addr, "out")
			counter(dBackendErrors, float64(b.Errors), p.name, n, b.Addr)
		}
	}
	for i, l := range s.Proxy.Loops {
		loop := strconv.Itoa(i)
		counter(dLoopBusy, l.BusySeconds, loop)
		gauge(dLoopSessions, float64(l.Sessions), loop)
	}
}
