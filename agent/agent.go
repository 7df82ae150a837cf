// Package agent is the per-node controller: it ties Raft (raftfsm),
// gossip (membership), the local PostgreSQL (pgnode) and the REST API
// together and runs the HA loop. The loop gathers inputs, calls the pure
// Decide function and performs the actions it returns.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/config"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/metrics"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/proxy"
	"github.com/pgha/pgha/raftfsm"
	"github.com/pgha/pgha/tlsconf"
)

// Version is the agent's version, set by the build.
var Version = "dev"

// loopInterval is the HA loop's period when nothing wakes it earlier.
const loopInterval = time.Second

// applyTimeout bounds one Raft commit.
const applyTimeout = 5 * time.Second

// Agent is one pgha node.
type Agent struct {
	cfg    *config.Config
	log    *slog.Logger
	raft   *raftfsm.Node
	gossip *membership.Gossip
	pg     *pgnode.Node
	api    *api.Server
	proxy  *proxy.Proxy

	// leaderReady is true while this node is Raft leader and has passed
	// the Barrier of its current term.
	leaderReady atomic.Bool
	leaderTerm  atomic.Uint64
	// leaderSince is when this node last became leader (time.Time);
	leaderSince atomic.Value
	// primaryContact (time.Time) is this node's last Raft contact with the
	// primary's node while that node led: the start of a failover's write
	// downtime as the agents saw it.
	primaryContact atomic.Value
	// primaryUp is true while the local PostgreSQL runs as a primary: the
	// fence watchdog guards it.
	primaryUp atomic.Bool
	// fencedAt and confirmedAt (unix ns): after a fence, the node does
	// not act as leader until a leadership confirmation asked for after
	// the fence succeeded.
	fencedAt     atomic.Int64
	confirmedAt  atomic.Int64
	steppingDown atomic.Bool
	// scheduledRunning: a scheduled switchover is being carried out.
	scheduledRunning atomic.Bool
	// yield: this record holder cannot run PostgreSQL as primary (see
	// primaryStartTimeout); failingSince is when its attempts began to
	// fail (HA loop only).
	yield          atomic.Bool
	failingSince   time.Time
	lastStart      time.Time     // when the HA loop last started PostgreSQL (HA loop only)
	lostLeadership chan struct{} // poked when Raft leadership is lost
	// actionMu is held by each HA loop round and by a switchover, which
	// must own PostgreSQL while it runs.
	actionMu sync.Mutex

	wake chan struct{} // coalesced: run the HA loop now

	mu              sync.Mutex
	status          NodeStatus // what this node last observed; guarded by mu
	lastLSNAt       time.Time  // last commit of the primary LSN (HA loop only)
	lastSlots       time.Time  // last slot reconcile (HA loop only)
	seenSet         string     // bootstrap candidate set seen last round (HA loop only)
	seenSince       time.Time
	slotsFor        string               // member set the slots were last made for (HA loop only)
	lastTransfer    time.Time            // last leadership transfer attempt (HA loop only)
	nonvoters       map[string]time.Time // leader: when each non-voter was first seen; guarded by mu
	wantJoin        atomic.Bool          // ask the leader to add this node to Raft
	savedPeers      string               // peers last written to peers.json (HA loop only)
	syncAdding      *syncPending         // standby being made synchronous (HA loop only)
	syncAddingSince time.Time            // (HA loop only)
	badParams       string               // dynamic parameters last rejected (HA loop only)
	replicas        []pgnode.ReplicaInfo // pg_stat_replication at the last probe; guarded by mu

	metrics      *metrics.Registry
	tls          *tlsconf.Bundle   // nil without TLS
	apiTransport http.RoundTripper // shared by calls to other members' APIs
	lastWritable []string          // writable members as last settled (see watchWritable); guarded by mu
	multiSince   time.Time         // since when more than one member looks writable (HA loop only)
	// oldTimelineSince: since when this replica runs on an older timeline
	// without streaming (HA loop only; see LocalPG.OldTimelineFor).
	oldTimelineSince time.Time
	refusedJoins     map[string]string // joins refused and logged, by member (HA loop only)
	checkMu          sync.Mutex        // one Check inspection at a time
	checkIn          checkInput        // the last one, guarded by checkMu
	checkAt          time.Time         // when it was gathered, guarded by checkMu

	formation atomic.Bool // raft runs on fast timers until a leader exists
	leaving   atomic.Bool
	left      atomic.Bool   // removed from Raft by a graceful leave
	shutdown  chan struct{} // closed to ask Run to return (after leave)
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// NodeStatus is the local node's view, served by the API.
type NodeStatus struct {
	Name      string    `json:"name"`
	Role      string    `json:"role"`  // primary, replica, witness, or ""
	State     string    `json:"state"` // running, streaming, stopped, cloning...
	Timeline  uint32    `json:"timeline,omitempty"`
	WAL       uint64    `json:"wal_lsn,omitempty"`
	Receive   uint64    `json:"receive_lsn,omitempty"`
	Replay    uint64    `json:"replay_lsn,omitempty"`
	ReplayLag float64   `json:"replay_lag_seconds,omitempty"`
	Streaming bool      `json:"streaming,omitempty"`
	SysID     uint64    `json:"system_id,string,omitempty"`
	Waiting   string    `json:"waiting,omitempty"` // why nothing happens
	Pending   bool      `json:"pending_restart,omitempty"`
	Error     string    `json:"error,omitempty"`
	LoopAt    time.Time `json:"loop_at"`
	PGRunning bool      `json:"-"`
	InRecov   bool      `json:"-"`
}

// New builds an agent from a validated configuration. It opens Raft and
// gossip (both start listening) but runs no loop until Run.
func New(cfg *config.Config, logger *slog.Logger, logOut io.Writer) (*Agent, error) {
	if err := makeDataDir(cfg); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: logger, wake: make(chan struct{}, 1), shutdown: make(chan struct{}), lostLeadership: make(chan struct{}, 1)}
	a.status.Name = cfg.Name
	a.refusedJoins = map[string]string{}
	if cfg.TLS.Enabled() {
		// Loaded once, before anything listens: a bad file stops the start
		// with a message naming it.
		b, err := tlsconf.Load(tlsconf.Files(cfg.TLS))
		if err != nil {
			return nil, err
		}
		a.tls = b
	}
	var peerTLS *tls.Config
	if a.tls != nil {
		peerTLS = a.tls.PeerClient()
	}
	a.apiTransport = api.NewTransport(peerTLS)

	pgCfg := pgnode.Config{
		Name:               cfg.Name,
		BinDir:             cfg.PostgreSQL.BinDir,
		DataDir:            cfg.PostgreSQL.DataDir,
		RunDir:             filepath.Join(cfg.DataDir, "run"),
		Listen:             cfg.PostgreSQL.Listen,
		Port:               cfg.PostgreSQL.Port,
		OSUser:             cfg.PostgreSQL.OSUser,
		Superuser:          cfg.PostgreSQL.Superuser.Username,
		SuperuserPassword:  cfg.PostgreSQL.Superuser.Password,
		ReplUser:           cfg.PostgreSQL.Replication.Username,
		ReplPassword:       cfg.PostgreSQL.Replication.Password,
		Parameters:         cfg.PostgreSQL.Parameters,
		HBA:                cfg.PostgreSQL.PgHBA,
		AllowedNetworks:    cfg.PostgreSQL.AllowedNetworks,
		MaxSlotWalKeepSize: cfg.PostgreSQL.MaxSlotWalKeepSize,
		StartTimeout:       cfg.PostgreSQL.StartTimeout.Duration,
		TLS:                pgnode.TLSFiles(cfg.TLS),
		Logger:             logger.With("component", "postgres"),
	}
	var pg *pgnode.Node
	if !cfg.Witness {
		var err error
		if pg, err = pgnode.New(pgCfg); err != nil {
			return nil, err
		}
	}
	a.pg = pg

	rn, err := raftfsm.Open(raftfsm.Options{
		ID:                 cfg.Name,
		Dir:                filepath.Join(cfg.DataDir, "raft"),
		BindAddr:           cfg.Raft.Addr,
		Advertise:          cfg.Raft.Advertise,
		HeartbeatTimeout:   cfg.Raft.HeartbeatTimeout.Duration,
		ElectionTimeout:    cfg.Raft.ElectionTimeout.Duration,
		LeaderLeaseTimeout: cfg.Raft.LeaderLeaseTimeout.Duration,
		SnapshotThreshold:  uint64(cfg.Raft.SnapshotThreshold),
		LogOutput:          logOut,
		LogLevel:           raftLogLevel(cfg.LogLevel),
		TLSServer:          raftServerTLS(a.tls),
		TLSClient:          raftClientTLS(a.tls),
	})
	if err != nil {
		a.closePG()
		return nil, err
	}
	a.raft = rn

	g, err := membership.New(membership.Options{
		Name:      cfg.Name,
		Cluster:   cfg.Cluster,
		BindAddr:  cfg.Gossip.Addr,
		Advertise: cfg.Gossip.Advertise,
		Logger:    logger.With("component", "gossip"),
		LogOutput: gossipLogOutput(cfg.LogLevel, logOut),
		Key:       cfg.GossipKey(),
	}, a.baseMeta())
	if err != nil {
		rn.Close()
		a.closePG()
		return nil, err
	}
	a.gossip = g

	px, err := newProxy(cfg, a)
	if err != nil {
		g.Close()
		rn.Close()
		a.closePG()
		return nil, err
	}
	a.proxy = px
	a.metrics = metrics.New(a)
	srv, err := api.New(a.apiOptions(logger), a)
	if err != nil {
		px.Close()
		g.Close()
		rn.Close()
		a.closePG()
		return nil, err
	}
	a.api = srv
	return a, nil
}

// raftServerTLS and raftClientTLS put Raft on mutual TLS when the node
// has certificates (nil: plain TCP). The client verifies peers against
// the cluster CA, not by host name: see tlsconf.Bundle.PeerClient.
func raftServerTLS(b *tlsconf.Bundle) *tls.Config {
	if b == nil {
		return nil
	}
	return b.Server()
}

func raftClientTLS(b *tlsconf.Bundle) *tls.Config {
	if b == nil {
		return nil
	}
	return b.PeerClient()
}

func raftLogLevel(level string) string {
	if level == "debug" {
		return "debug"
	}
	return "warn"
}

func gossipLogOutput(level string, out io.Writer) io.Writer {
	if level == "debug" {
		return out
	}
	return nil
}

// Run runs the agent until ctx ends or the node has left the cluster,
// then shuts every part down in order. It returns nil on a clean stop.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.log.Info("pgha agent starting", "name", a.cfg.Name, "version", Version,
		"raft", a.raft.Addr(), "gossip", a.cfg.Gossip.Addr, "api", a.api.Addr(),
		"postgres", net.JoinHostPort(a.cfg.PostgreSQL.Listen, strconv.Itoa(a.cfg.PostgreSQL.Port)),
		"raft_state_on_disk", a.raft.HadState())

	if !a.raft.HadState() {
		if err := a.raft.SetFormationTimeouts(true); err != nil {
			a.log.Warn("fast first election", "err", err)
		} else {
			a.formation.Store(true)
		}
	}
	a.gossip.RetryJoin(a.joinAddrs())
	a.spawn(func() { a.api.Serve(ctx) })
	a.spawn(func() { a.watchLeadership(ctx) })
	a.spawn(func() { a.relayEvents(ctx) })
	a.spawn(func() { a.haLoop(ctx) })
	a.spawn(func() { a.fenceLoop(ctx) })
	a.spawn(func() { a.beat(ctx) })
	a.spawn(func() { a.proxy.Serve(ctx) })
	a.spawn(func() { a.routeLoop(ctx) })

	select {
	case <-ctx.Done():
	case <-a.shutdown:
	}
	cancel()
	return a.close()
}

func (a *Agent) spawn(f func()) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		f()
	}()
}

// close stops the loops and the proxy, then PostgreSQL (it is our
// child), gossip, Raft.
func (a *Agent) close() error {
	a.wg.Wait()
	var errs []error
	if err := a.proxy.Close(); err != nil {
		errs = append(errs, err)
	}
	if a.pg != nil {
		stopCtx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := a.pg.Stop(stopCtx, pgnode.StopFast); err != nil {
			errs = append(errs, err)
		}
	}
	if err := a.closePG(); err != nil {
		errs = append(errs, err)
	}
	if !a.leaving.Load() {
		_ = a.gossip.Leave(500 * time.Millisecond)
	}
	if err := a.gossip.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := a.raft.Close(); err != nil {
		errs = append(errs, err)
	}
	if a.left.Load() {
		a.discardRaftState()
	}
	a.log.Info("pgha agent stopped")
	return errors.Join(errs...)
}

// poke wakes the HA loop without blocking.
func (a *Agent) poke() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// relayEvents turns FSM changes and gossip events into HA loop wake-ups.
func (a *Agent) relayEvents(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.raft.FSM().Changed():
			a.poke()
		case <-a.gossip.Events():
			a.poke()
		}
	}
}

// watchLeadership consumes Raft's NotifyCh. On gaining leadership it runs
// a Barrier so the FSM holds every committed entry before the HA loop
// acts as leader; only then is leaderReady set. One barrier per term.
func (a *Agent) watchLeadership(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case isLeader := <-a.raft.LeaderNotify():
			if !isLeader {
				a.leaderReady.Store(false)
				a.leaderSince.Store(time.Time{})
				a.log.Info("lost raft leadership")
				select {
				case a.lostLeadership <- struct{}{}:
				default:
				}
				a.poke()
				continue
			}
			a.leaderSince.Store(time.Now())
			term := a.raft.Term()
			a.log.Info("gained raft leadership", "term", term)
			// Retry the barrier while this term lasts: without it the node
			// would hold leadership without ever acting on it.
			for {
				err := a.raft.Barrier(5 * time.Second)
				if err == nil {
					break
				}
				a.log.Warn("leader barrier failed", "err", err)
				if !a.raft.IsLeader() || a.raft.Term() != term || ctx.Err() != nil {
					break
				}
			}
			if a.raft.IsLeader() && a.raft.Term() == term {
				a.leaderTerm.Store(term)
				a.leaderReady.Store(true)
			}
			a.poke()
		}
	}
}

// apiOptions configures the REST API server from the node's settings.
func (a *Agent) apiOptions(logger *slog.Logger) api.Options {
	o := api.Options{
		Addr:         a.cfg.API.Addr,
		Logger:       logger.With("component", "api"),
		Auth:         a.apiCredentials(),
		ProtectReads: a.cfg.API.ProtectReads,
		Metrics:      a.metrics.Handler(),
	}
	if a.tls != nil {
		o.TLS, o.ClientTLS = a.tls.Server(), a.tls.PeerClient()
	}
	return o
}

// apiCredentials are the node's own API credentials: required from
// callers, and sent when this agent calls another member's API.
func (a *Agent) apiCredentials() api.Credentials {
	return api.Credentials{Basic: a.cfg.API.Auth, Token: a.cfg.API.Token}
}

// apiClient returns a client for another member's API, with this node's
// credentials.
func (a *Agent) apiClient(addr string) *api.Client {
	c := a.apiCredentials()
	o := api.ClientOptions{Auth: c.Basic, Token: c.Token, Transport: a.apiTransport}
	if a.tls != nil {
		o.TLS = a.tls.PeerClient() // picks https; the transport carries it
	}
	return api.NewClientWith(addr, o)
}

// isLeader is the leadership the HA loop acts on: Raft says leader and
// the barrier of this term passed.
func (a *Agent) isLeader() bool {
	return a.leaderReady.Load() && a.raft.IsLeader() && a.raft.Term() == a.leaderTerm.Load() &&
		a.fencedAt.Load() <= a.confirmedAt.Load()
}

func (a *Agent) setStatus(f func(*NodeStatus)) {
	a.mu.Lock()
	f(&a.status)
	a.mu.Unlock()
}

// Status returns the node's last observed status.
func (a *Agent) Status() NodeStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status
}

// baseMeta is the static part of the gossip metadata.
func (a *Agent) baseMeta() membership.Meta {
	c := a.cfg
	return membership.Meta{
		Cluster:  c.Cluster,
		Version:  Version,
		Raft:     advertiseOr(c.Raft.Advertise, c.Raft.Addr),
		API:      advertiseOr(c.API.Advertise, c.API.Addr),
		PG:       c.PostgreSQL.ConnectAddress,
		Write:    c.Proxy.WriteAddr,
		Read:     c.Proxy.ReadAddr,
		Expect:   c.BootstrapExpect,
		Witness:  c.Witness,
		NoFail:   c.Tags.NoFailover,
		NoLB:     c.Tags.NoLoadBalance,
		Priority: c.Tags.FailoverPriority,
	}
}

// closePG closes pgnode (a witness has none).
func (a *Agent) closePG() error {
	if a.pg == nil {
		return nil
	}
	return a.pg.Close()
}

func advertiseOr(adv, addr string) string {
	if adv != "" {
		return adv
	}
	return addr
}

func (a *Agent) setJoinWanted()   { a.wantJoin.Store(true) }
func (a *Agent) joinWanted() bool { return a.wantJoin.Load() }

// makeDataDir creates the node's data directory when it does not exist.
// When the agent runs as root it belongs to the PostgreSQL OS user, who
// must reach the PostgreSQL data directory and the run directory inside.
func makeDataDir(cfg *config.Config) error {
	if _, err := os.Stat(cfg.DataDir); err == nil {
		return nil
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup(cfg.PostgreSQL.OSUser)
	if err != nil {
		return fmt.Errorf("postgresql.os_user %q: %w (create it, e.g. useradd --system postgres)", cfg.PostgreSQL.OSUser, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(cfg.DataDir, uid, gid); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	return nil
}
