// Package agent is the per-node controller: it wires Raft (raftfsm),
// gossip (membership), the local PostgreSQL (pgnode), the proxy and the
// REST API together and runs the goroutines that keep them in step. Each
// goroutine owns its state; DESIGN.md says which owns what. The decisions
// themselves are pure functions elsewhere (agent/decide, agent/routing).
//
// Files, by owner:
//   - agent.go: wiring (New, Run, shutdown);
//   - leadership.go: the leadership watcher (Raft's NotifyCh, Barrier);
//   - loop.go, probe.go, execute.go, postgres.go, formation.go: the HA
//     loop, what it observes and the actions it performs;
//   - term.go, sync.go: the leader term, made after the term's Barrier
//     and dropped with leadership (member reconciliation, transfers, the
//     synchronous set);
//   - fence.go: the fence watchdog;
//   - routes.go: the proxy's routing loop;
//   - backend.go and op_*.go: the operator backend behind api.Backend;
//     view.go, check.go: what the API reads.
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
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/cluster"
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

// Agent is one pgha node. Its fields are the node's parts and the small
// boards through which goroutines share what they own; none of the HA
// loop's own state lives here (see haLoop).
type Agent struct {
	cfg *config.Config
	log *slog.Logger

	raft   consensus
	gossip gossipNet
	pg     localPG // nil on a witness
	api    *api.Server
	proxy  *proxy.Proxy

	metrics      *metrics.Registry
	tls          *tlsconf.Bundle   // nil without TLS
	apiTransport http.RoundTripper // shared by calls to other members' APIs

	// lead is the leadership the watcher established (term, Barrier
	// passed, since when); written by watchLeadership only.
	lead leadershipBoard
	// guard is the fence watchdog's latch and arming; see fence.go.
	guard watchdog
	// status is what the HA loop last observed, for the API; written by
	// the HA loop only.
	status statusBoard
	// loop is the HA loop. Its state is its own: others reach it only
	// through loop.do, which runs a job on the loop's goroutine.
	loop *haLoop

	wake       chan struct{} // coalesced: run the HA loop now
	routesWake chan struct{} // coalesced: recompute the proxy's routes now

	// wantJoin: ask the leader to add this node (set by Join and by
	// formation, read by the HA loop's publish).
	wantJoin atomic.Bool
	// leaving is set while a graceful leave runs (the HA loop stands
	// still) and left once Raft has removed this node.
	leaving, left atomic.Bool

	check checkCache

	shutdown  chan struct{} // closed to ask Run to return (after leave)
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// New builds an agent from a validated configuration. It opens Raft and
// gossip (both start listening) but runs no loop until Run.
func New(cfg *config.Config, logger *slog.Logger, logOut io.Writer) (*Agent, error) {
	if err := prepareDataDir(cfg, logger); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: logger, wake: make(chan struct{}, 1), routesWake: make(chan struct{}, 1),
		shutdown: make(chan struct{})}
	a.guard.lost, a.guard.wake = make(chan struct{}, 1), make(chan struct{}, 1)
	a.status.s.Name = cfg.Name
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

	var closers []func() error
	fail := func(err error) (*Agent, error) {
		for i := len(closers) - 1; i >= 0; i-- {
			_ = closers[i]()
		}
		return nil, err
	}
	if !cfg.Witness {
		pg, err := pgnode.New(pgnodeConfig(cfg, logger))
		if err != nil {
			return nil, err
		}
		a.pg = pg // only a real node: a nil *pgnode.Node would make a non-nil interface
		closers = append(closers, pg.Close)
	}

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
		RestartQuiet:       cfg.Raft.HeartbeatTimeout.Duration + fenceSlack,
	})
	if err != nil {
		return fail(err)
	}
	a.raft = raftNode{rn}
	closers = append(closers, rn.Close)

	if err := checkMetaFits(a.baseMeta()); err != nil {
		return fail(err)
	}
	g, err := membership.New(membership.Options{
		Name:      cfg.Name,
		Cluster:   cfg.Cluster,
		BindAddr:  cfg.Gossip.Addr,
		Advertise: cfg.Gossip.Advertise,
		Logger:    logger.With("component", "gossip"),
		LogOutput: gossipLogOutput(cfg.LogLevel, logOut),
		Key:       cfg.GossipKey(),
		OnNotice:  a.noticeLogger(),
	}, a.baseMeta())
	if err != nil {
		return fail(err)
	}
	a.gossip = g
	closers = append(closers, g.Close)

	px, err := newProxy(cfg, logger)
	if err != nil {
		return fail(err)
	}
	a.proxy = px
	closers = append(closers, px.Close)
	a.metrics = metrics.New(a)
	srv, err := api.New(a.apiOptions(logger), a)
	if err != nil {
		return fail(err)
	}
	a.api = srv
	a.loop = newHALoop(a)
	return a, nil
}

// pgnodeConfig is the local PostgreSQL's configuration from the node's.
func pgnodeConfig(cfg *config.Config, logger *slog.Logger) pgnode.Config {
	return pgnode.Config{
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
// Every goroutine it starts ends with ctx; close waits for them all
// before it stops the parts they use.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.log.Info("pgha agent starting", "name", a.cfg.Name, "version", Version,
		"raft", a.raft.Addr(), "gossip", a.cfg.Gossip.Addr, "api", a.api.Addr(),
		"postgres", net.JoinHostPort(a.cfg.PostgreSQL.Listen, strconv.Itoa(a.cfg.PostgreSQL.Port)),
		"raft_state_on_disk", a.raft.HadState())

	a.loop.startFormation()
	a.gossip.RetryJoin(a.joinAddrs())
	a.spawn(func() { a.api.Serve(ctx) })
	a.spawn(func() { a.watchLeadership(ctx) })
	a.spawn(func() { a.relayEvents(ctx) })
	a.spawn(func() { a.loop.run(ctx) })
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
		if err := a.pg.Close(); err != nil {
			errs = append(errs, err)
		}
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
func (a *Agent) poke() { notify(a.wake) }

// pokeRoutes makes the routing loop recompute without blocking.
func (a *Agent) pokeRoutes() { notify(a.routesWake) }

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// relayEvents is the one reader of the FSM's and gossip's change
// channels: it turns each change into wake-ups of the HA loop and the
// routing loop.
func (a *Agent) relayEvents(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.raft.Changed():
		case <-a.gossip.Events():
		}
		a.poke()
		a.pokeRoutes()
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

// checkMetaFits refuses, at start, addresses too long for the gossip
// status in its fullest state (the numbers at their largest), rather
// than a status that cannot be published later.
func checkMetaFits(m membership.Meta) error {
	m.HasRaft, m.Role, m.PGState, m.Pending = true, cluster.RoleReplica, cluster.StateReinitializing, true
	m.Timeline, m.WAL, m.Recv, m.SysID, m.At = ^uint32(0), ^uint64(0), ^uint64(0), ^uint64(0), 9999999999999
	if _, err := membership.EncodeMeta(m); err != nil {
		return fmt.Errorf("the advertised addresses do not fit in the gossip status: %w; use shorter host names or addresses", err)
	}
	return nil
}

func advertiseOr(adv, addr string) string {
	if adv != "" {
		return adv
	}
	return addr
}

// discardRaftState removes the Raft directory of a node that has left.
func (a *Agent) discardRaftState() {
	dir := filepath.Join(a.cfg.DataDir, "raft")
	if err := os.RemoveAll(dir); err != nil {
		a.log.Warn("discard raft state", "dir", dir, "err", err)
		return
	}
	a.log.Info("discarded the Raft state of this former member", "dir", dir)
}
