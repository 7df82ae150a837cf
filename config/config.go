// Package config holds a node's static configuration: what it reads from
// its YAML file, PGHA_* environment variables and command-line flags.
// Cluster-wide settings that can change at run time live in the Raft FSM
// (dynamic configuration), not here.
package config

import (
	"time"
)

// Config is one node's configuration. Every leaf field has a YAML key (the
// yaml tag, nested with dots), an environment variable (PGHA_ + the dotted
// key upper-cased with dots and dashes as underscores, e.g.
// PGHA_RAFT_ADDR) and a flag (--raft.addr).
type Config struct {
	// Name is the member's stable, unique name (Raft server ID, gossip
	// name, replication slot suffix). Required.
	Name string `yaml:"name"`
	// Cluster names the cluster; nodes of another cluster are refused on
	// the gossip layer (memberlist label).
	Cluster string `yaml:"cluster"`
	// DataDir holds the Raft state (raft/), the PostgreSQL data directory
	// (pgdata/ unless postgresql.data_dir says otherwise) and logs.
	DataDir string `yaml:"data_dir"`
	// BootstrapExpect is the number of nodes that form a new cluster
	// together. 0 means "never bootstrap; join an existing cluster".
	BootstrapExpect int `yaml:"bootstrap_expect"`
	// Witness makes this node a Raft voter without PostgreSQL: two
	// database nodes plus a witness keep a majority when one node is lost.
	// A witness never becomes primary; it runs the proxy like any node.
	Witness bool `yaml:"witness"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// LogFormat is text or json.
	LogFormat string `yaml:"log_format"`

	Raft       Raft       `yaml:"raft"`
	Gossip     Gossip     `yaml:"gossip"`
	API        API        `yaml:"api"`
	PostgreSQL PostgreSQL `yaml:"postgresql"`
	Proxy      Proxy      `yaml:"proxy"`
	TLS        TLS        `yaml:"tls"`
	Tags       Tags       `yaml:"tags"`

	// origins records where each value was set (file and line, env var or
	// flag) so that Validate, which runs after all sources are merged, can
	// point at the line or variable to fix. Keys are dotted keys; list
	// entries are "key[i]". Values not in the map are defaults.
	origins map[string]origin
}

// Raft configures the embedded consensus group.
type Raft struct {
	// Addr is the host:port the Raft transport listens on and advertises.
	Addr string `yaml:"addr"`
	// Advertise, when set, is the host:port peers use instead of Addr.
	Advertise          string   `yaml:"advertise"`
	HeartbeatTimeout   Duration `yaml:"heartbeat_timeout"`
	ElectionTimeout    Duration `yaml:"election_timeout"`
	LeaderLeaseTimeout Duration `yaml:"leader_lease_timeout"`
	// SnapshotThreshold is the number of log entries between snapshots.
	SnapshotThreshold int `yaml:"snapshot_threshold"`
}

// Gossip configures memberlist.
type Gossip struct {
	// Addr is the host:port memberlist binds (TCP and UDP).
	Addr string `yaml:"addr"`
	// Advertise, when set, is the host:port peers use instead of Addr.
	Advertise string `yaml:"advertise"`
	// Join lists gossip addresses of other members to contact at start.
	Join []string `yaml:"join"`
	// Key is the cluster's gossip encryption key (base64 of 16, 24 or 32
	// random bytes, AES-GCM; `pgha keygen` prints one). Every member needs
	// the same key; a node with another key cannot join. Empty: no
	// encryption (the memberlist label still keeps other clusters out).
	Key string `yaml:"key"`
}

// API configures the REST API.
type API struct {
	// Addr is the host:port the REST API listens on.
	Addr string `yaml:"addr"`
	// Advertise, when set, is the host:port other members and the CLI use.
	Advertise string `yaml:"advertise"`
	// Auth is "user:password" for HTTP basic auth. When Auth or Token is
	// set, mutating endpoints (and joining the cluster) answer 401 without
	// matching credentials. The CLI sends the same value from --api-auth
	// or PGHA_API_AUTH.
	Auth string `yaml:"auth"`
	// Token is a bearer token accepted like Auth (Authorization: Bearer).
	Token string `yaml:"token"`
	// ProtectReads requires credentials on the read endpoints too
	// (/cluster, /config, /history, /proxy, /metrics). Health endpoints
	// (/primary, /replica, /health...) stay open for load balancers.
	ProtectReads bool `yaml:"protect_reads"`
}

// TLS names the files of the cluster's certificate authority and this
// node's certificate. When set, the Raft transport, the REST API and
// PostgreSQL use TLS, peers must present a certificate signed by the CA
// (mutual TLS), and replication connects with sslmode=verify-ca. `pgha tls
// init` generates a CA and node certificates for a quick start.
type TLS struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Enabled reports whether TLS is configured.
func (t TLS) Enabled() bool { return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" }

// PostgreSQL configures the local PostgreSQL instance.
type PostgreSQL struct {
	// BinDir holds initdb, postgres, pg_basebackup... Empty: pg_config
	// --bindir, then /usr/lib/postgresql/15/bin.
	BinDir string `yaml:"bin_dir"`
	// DataDir is the PostgreSQL data directory; default DataDir/pgdata.
	DataDir string `yaml:"data_dir"`
	// Listen is the address PostgreSQL listens on (listen_addresses).
	Listen string `yaml:"listen"`
	// Port is PostgreSQL's port.
	Port int `yaml:"port"`
	// ConnectAddress is the host:port other members and clients use to
	// reach this PostgreSQL; default Listen:Port.
	ConnectAddress string `yaml:"connect_address"`
	// OSUser runs PostgreSQL and its tools when the agent runs as root.
	OSUser string `yaml:"os_user"`

	Superuser   Credentials `yaml:"superuser"`
	Replication Credentials `yaml:"replication"`

	// Parameters are extra postgresql.conf settings.
	Parameters map[string]string `yaml:"parameters"`
	// PgHBA are extra pg_hba.conf lines, added after the managed ones.
	PgHBA []string `yaml:"pg_hba"`
	// AllowedNetworks are CIDRs allowed to connect (clients and
	// replication) with a SCRAM password; default loopback only.
	AllowedNetworks []string `yaml:"allowed_networks"`
	// MaxSlotWalKeepSize bounds the WAL a replication slot may retain.
	MaxSlotWalKeepSize string `yaml:"max_slot_wal_keep_size"`
	// StartTimeout bounds how long a start (including crash recovery) may take.
	StartTimeout Duration `yaml:"start_timeout"`
}

// Credentials is a PostgreSQL role and its password.
type Credentials struct {
	Username string `yaml:"username"`
	Password string `yaml:"password"`
}

// Proxy configures the embedded TCP proxy (write and read ports).
type Proxy struct {
	WriteAddr string `yaml:"write_addr"`
	ReadAddr  string `yaml:"read_addr"`
	// HoldTimeout is how long a new write connection waits for a primary
	// (failover, switchover) before it is refused.
	HoldTimeout Duration `yaml:"hold_timeout"`
	// MaxReplicaLag takes a replica out of the read port when it is more
	// than this many bytes behind the primary ("16MB").
	MaxReplicaLag Size `yaml:"max_replica_lag"`
	// ReadFallbackPrimary sends reads to the primary when no replica is
	// healthy.
	ReadFallbackPrimary bool `yaml:"read_fallback_primary"`
	// MaxConn bounds the client connections of each port.
	MaxConn int `yaml:"max_conn"`
	// EventLoops is how many event loops copy the proxied bytes (Linux;
	// each a goroutine with its own epoll set);
	// 0 copies each connection with two goroutines instead.
	EventLoops int `yaml:"event_loops"`
	// AllowedNetworks narrows, for the proxy's ports only, the client
	// networks of postgresql.allowed_networks (which it defaults to).
	AllowedNetworks []string `yaml:"allowed_networks"`
}

// Tags are per-member behaviour switches, gossiped and shown in `pgha list`.
type Tags struct {
	NoFailover       bool `yaml:"nofailover"`
	NoLoadBalance    bool `yaml:"noloadbalance"`
	FailoverPriority int  `yaml:"failover_priority"`
}

// Duration is a time.Duration written as "1s", "500ms" in YAML and env.
type Duration struct{ time.Duration }

// Default returns a Config with every default filled in.
func Default() Config {
	return Config{
		Cluster:   "pgha",
		LogLevel:  "info",
		LogFormat: "text",
		Raft: Raft{
			Addr:               "127.0.0.1:8300",
			HeartbeatTimeout:   Duration{1000 * time.Millisecond},
			ElectionTimeout:    Duration{1000 * time.Millisecond},
			LeaderLeaseTimeout: Duration{500 * time.Millisecond},
			SnapshotThreshold:  1024,
		},
		Gossip: Gossip{Addr: "127.0.0.1:7946"},
		API:    API{Addr: "127.0.0.1:8008"},
		PostgreSQL: PostgreSQL{
			Listen:             "127.0.0.1",
			Port:               5432,
			OSUser:             "postgres",
			Superuser:          Credentials{Username: "postgres"},
			Replication:        Credentials{Username: "replicator"},
			MaxSlotWalKeepSize: "4GB",
			StartTimeout:       Duration{60 * time.Second},
		},
		Proxy: Proxy{WriteAddr: "127.0.0.1:5000", ReadAddr: "127.0.0.1:5001", HoldTimeout: Duration{30 * time.Second},
			MaxReplicaLag: Size{16 << 20}, ReadFallbackPrimary: true, MaxConn: 1000, EventLoops: 1},
		Tags: Tags{FailoverPriority: 1},
	}
}
