// Package raftfsm holds pgha's replicated cluster state and the Raft wiring
// around it. The state is small and authoritative: who the members are,
// which member is the PostgreSQL primary (and under which epoch), the last
// primary WAL position, the dynamic configuration. Everything volatile
// (LSNs of replicas, PostgreSQL health) travels by gossip instead.
//
// This package imports nothing of pgha's so that any tool can replay a log
// offline with the same code the agents run.
package raftfsm

import (
	"sort"
	"time"
)

// State is the whole replicated cluster state. The FSM hands out deep
// copies, so callers may keep and modify what they get.
type State struct {
	// ClusterID is a random identifier chosen by the node that bootstrapped
	// the cluster; agents compare it before acting on a data directory.
	ClusterID string `json:"cluster_id,omitempty"`
	// SystemID is PostgreSQL's system identifier of the cluster's data,
	// recorded once initdb ran. 0 until then.
	SystemID uint64 `json:"system_id,string,omitempty"`
	// Members by name.
	Members map[string]Member `json:"members,omitempty"`
	// Primary is the current primary record; nil before initialisation.
	Primary *PrimaryRecord `json:"primary,omitempty"`
	// PrimaryLSN is the last WAL position the leader saw on the primary.
	PrimaryLSN *LSNRecord `json:"primary_lsn,omitempty"`
	// Config is the dynamic, cluster-wide configuration.
	Config DynamicConfig `json:"config"`
	// SyncSet is the committed synchronous standby set: with synchronous
	// mode on, only these members may be promoted. The primary adds a
	// standby here only after PostgreSQL reports it synchronous, and
	// removes one here before it stops waiting for it.
	SyncSet []string `json:"sync_set,omitempty"`
	// Scheduled is a planned switchover the leader runs when it is due.
	Scheduled *ScheduledSwitchover `json:"scheduled_switchover,omitempty"`
	// Paused stops every automatic action (maintenance mode).
	Paused bool `json:"paused,omitempty"`
	// History lists every change of primary, oldest first.
	History []HistoryEntry `json:"history,omitempty"`
}

// Member is a cluster member as the Raft group knows it.
type Member struct {
	Name       string    `json:"name"`
	RaftAddr   string    `json:"raft_addr"`
	GossipAddr string    `json:"gossip_addr,omitempty"`
	APIAddr    string    `json:"api_addr,omitempty"`
	PGAddr     string    `json:"pg_addr,omitempty"`
	Witness    bool      `json:"witness,omitempty"`
	JoinedAt   time.Time `json:"joined_at"`
}

// PrimaryRecord says which member is the primary. Epoch grows by one with
// every change of primary (and with initialisation), so a stale record can
// always be told from a fresh one.
type PrimaryRecord struct {
	Member   string    `json:"member"`
	Epoch    uint64    `json:"epoch"`
	Timeline uint32    `json:"timeline,omitempty"`
	Since    time.Time `json:"since"`
	// Initializing is true between the claim of the first leader and the
	// end of its initdb: nobody may clone from it yet.
	Initializing bool `json:"initializing,omitempty"`
	// Demoting is true while a switchover stops this primary: proxies stop
	// sending it new connections before it starts refusing them.
	Demoting bool `json:"demoting,omitempty"`
}

// LSNRecord is a WAL position on a timeline, as seen at a given time.
type LSNRecord struct {
	LSN      uint64    `json:"lsn,string"`
	Timeline uint32    `json:"timeline"`
	At       time.Time `json:"at"`
}

// DynamicConfig is the cluster-wide configuration that can change at run
// time through Raft.
type DynamicConfig struct {
	// MaximumLagOnFailover is the most WAL, in bytes, a replica may be
	// behind the last known primary position and still be promoted.
	MaximumLagOnFailover int64 `json:"maximum_lag_on_failover"`
	// SynchronousMode makes the primary wait for synchronous standbys
	// and restricts promotion to the recorded synchronous set.
	SynchronousMode bool `json:"synchronous_mode"`
	// SynchronousNodeCount is how many synchronous standbys to keep.
	SynchronousNodeCount int `json:"synchronous_node_count"`
	// SynchronousModeStrict refuses writes when no synchronous standby is
	// available, instead of falling back to asynchronous replication.
	SynchronousModeStrict bool `json:"synchronous_mode_strict"`
	// Parameters are PostgreSQL settings applied on every member (a
	// member's own postgresql.parameters override them).
	Parameters map[string]string `json:"parameters,omitempty"`
	// PrimaryUnresponsiveTimeout, in seconds (0: the default, 10): a
	// primary whose PostgreSQL has not answered its agent's probe for this
	// long is fenced and handed over.
	PrimaryUnresponsiveTimeout int `json:"primary_unresponsive_timeout,omitempty"`
	// PrimaryStartTimeout, in seconds (0: the default, 30): a record
	// holder that leads but has not run PostgreSQL as primary for this
	// long (a start or crash recovery that does not end) yields the role.
	PrimaryStartTimeout int `json:"primary_start_timeout,omitempty"`
}

// Defaults of the timeouts above.
const (
	DefaultPrimaryUnresponsiveTimeout = 10 * time.Second
	DefaultPrimaryStartTimeout        = 30 * time.Second
)

// UnresponsiveTimeout is PrimaryUnresponsiveTimeout as a duration.
func (c DynamicConfig) UnresponsiveTimeout() time.Duration {
	if c.PrimaryUnresponsiveTimeout <= 0 {
		return DefaultPrimaryUnresponsiveTimeout
	}
	return time.Duration(c.PrimaryUnresponsiveTimeout) * time.Second
}

// StartTimeout is PrimaryStartTimeout as a duration.
func (c DynamicConfig) StartTimeout() time.Duration {
	if c.PrimaryStartTimeout <= 0 {
		return DefaultPrimaryStartTimeout
	}
	return time.Duration(c.PrimaryStartTimeout) * time.Second
}

// DefaultDynamicConfig is what a fresh cluster starts with.
func DefaultDynamicConfig() DynamicConfig {
	return DynamicConfig{MaximumLagOnFailover: 1 << 20, SynchronousNodeCount: 1}
}

// ScheduledSwitchover is a switchover planned for a given time.
type ScheduledSwitchover struct {
	At        time.Time `json:"at"`
	From      string    `json:"from"`                // the primary when it was scheduled
	Candidate string    `json:"candidate,omitempty"` // "" = the best replica then
	Force     bool      `json:"force,omitempty"`
}

// HistoryEntry records one change of primary.
type HistoryEntry struct {
	Epoch    uint64    `json:"epoch"`
	At       time.Time `json:"at"`
	Old      string    `json:"old,omitempty"`
	New      string    `json:"new"`
	Timeline uint32    `json:"timeline,omitempty"`
	LSN      uint64    `json:"lsn,string,omitempty"`
	Reason   string    `json:"reason"`
	// LastSeen is when the agents last saw the old primary take writes
	// (failover: last Raft contact with it; switchover: its clean stop).
	LastSeen time.Time `json:"last_seen,omitempty"`
	// PromotedAt is when the new primary accepted writes; PromotedAt -
	// LastSeen is the write downtime as the agents saw it.
	PromotedAt time.Time `json:"promoted_at,omitempty"`
}

// InSyncSet reports whether name is in the committed synchronous set.
func (s State) InSyncSet(name string) bool {
	for _, n := range s.SyncSet {
		if n == name {
			return true
		}
	}
	return false
}

// MemberNames returns the member names, sorted.
func (s State) MemberNames() []string {
	names := make([]string, 0, len(s.Members))
	for n := range s.Members {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// IsPrimary reports whether name holds the primary record.
func (s State) IsPrimary(name string) bool {
	return s.Primary != nil && s.Primary.Member == name
}

// clone returns a deep copy.
func (s *State) clone() State {
	c := *s
	if s.Members != nil {
		c.Members = make(map[string]Member, len(s.Members))
		for k, v := range s.Members {
			c.Members[k] = v
		}
	}
	if s.Primary != nil {
		p := *s.Primary
		c.Primary = &p
	}
	if s.PrimaryLSN != nil {
		l := *s.PrimaryLSN
		c.PrimaryLSN = &l
	}
	if s.Config.Parameters != nil {
		c.Config.Parameters = make(map[string]string, len(s.Config.Parameters))
		for k, v := range s.Config.Parameters {
			c.Config.Parameters[k] = v
		}
	}
	c.History = append([]HistoryEntry(nil), s.History...)
	c.SyncSet = append([]string(nil), s.SyncSet...)
	if s.Scheduled != nil {
		sc := *s.Scheduled
		c.Scheduled = &sc
	}
	return c
}
