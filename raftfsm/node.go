package raftfsm

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// ErrNotLeader is returned by leader-only operations on a follower.
var ErrNotLeader = errors.New("not the raft leader")

// Options configures a Raft node.
type Options struct {
	ID                 string
	Dir                string // raft.db and snapshots/ live here
	BindAddr           string // host:port to listen on
	Advertise          string // host:port peers dial; default BindAddr
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	SnapshotThreshold  uint64
	LogOutput          io.Writer // raft's own log; default stderr
	LogLevel           string    // hclog level name; default "warn"
	// TLSServer and TLSClient, both set, put the transport on mutual TLS
	// (tlsconf's Server and PeerClient); both nil means plain TCP.
	TLSServer *tls.Config
	TLSClient *tls.Config
	// RestartQuiet is how long a node that restarts with Raft state
	// stays out of elections (it neither votes nor campaigns): it may
	// have heard the old leader just before it went down, and a vote
	// given sooner than a heartbeat timeout after that would break the
	// fencing arithmetic (agent/fence.go) that lets a new leader promote
	// once the old primary has surely stopped.
	RestartQuiet time.Duration
}

// Node is the local Raft server with pgha's FSM.
type Node struct {
	id    string
	raft  *raft.Raft
	fsm   *FSM
	trans *raft.NetworkTransport
	lt    *leaseTransport // trans as Raft uses it: lease and cut
	tls   *TLSStreamLayer // nil on plain TCP
	// probeFailed remembers failed TLS checks of joining nodes (see probe).
	probeMu     sync.Mutex
	probeFailed map[string]probeFailure
	store       *raftboltdb.BoltStore
	notify      chan bool
	hadState    bool
	// loopPending is the LoopAnswers question still in flight, if any.
	loopMu      sync.Mutex
	loopPending chan error
	// configured timers, restored after a fast first election
	heartbeat, election, lease time.Duration
}

// Open starts the local Raft server. If Dir already holds Raft state the
// node rejoins its cluster with it; otherwise it waits, doing nothing,
// until Bootstrap is called or a leader adds it.
func Open(o Options) (*Node, error) {
	if o.ID == "" || o.Dir == "" || o.BindAddr == "" {
		return nil, fmt.Errorf("raft: id, dir and bind address are required")
	}
	if o.Advertise == "" {
		o.Advertise = o.BindAddr
	}
	if o.LogOutput == nil {
		o.LogOutput = os.Stderr
	}
	if o.LogLevel == "" {
		o.LogLevel = "warn"
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("raft dir: %w", err)
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.LevelFromString(o.LogLevel), Output: o.LogOutput})

	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(o.ID)
	conf.Logger = logger
	if o.HeartbeatTimeout > 0 {
		conf.HeartbeatTimeout = o.HeartbeatTimeout
	}
	if o.ElectionTimeout > 0 {
		conf.ElectionTimeout = o.ElectionTimeout
	}
	if o.LeaderLeaseTimeout > 0 {
		conf.LeaderLeaseTimeout = o.LeaderLeaseTimeout
	}
	if o.SnapshotThreshold > 0 {
		conf.SnapshotThreshold = o.SnapshotThreshold
	}
	// When no command flows, the leader still sends every follower an
	// AppendEntries each CommitTimeout (50 ms by default) so that it
	// learns the commit index of the last entry: 20 round trips a second
	// per follower on an idle cluster, the biggest part of an idle
	// agent's CPU. pgha commits rarely and nudges the commit index out
	// itself after each command (see Apply), so a long CommitTimeout
	// costs no latency.
	conf.CommitTimeout = commitTimeout
	// Raft blocks on NotifyCh when nobody reads it: buffer generously and
	// let the consumer coalesce.
	notify := make(chan bool, 16)
	conf.NotifyCh = notify
	if err := raft.ValidateConfig(conf); err != nil {
		return nil, fmt.Errorf("raft config: %w", err)
	}

	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(o.Dir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("open raft.db: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(o.Dir, 3, logger)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("snapshot store: %w", err)
	}
	// The snapshot store makes its directory 0755; the snapshots hold
	// the whole cluster state, which no other user needs to read.
	if err := os.Chmod(filepath.Join(o.Dir, "snapshots"), 0o700); err != nil {
		store.Close()
		return nil, fmt.Errorf("snapshot store: %w", err)
	}
	hadState, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("read raft state: %w", err)
	}
	adv, err := net.ResolveTCPAddr("tcp", o.Advertise)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("raft advertise address %q: %w", o.Advertise, err)
	}
	trans, stream, err := newTransport(o, adv, logger)
	if err != nil {
		store.Close()
		return nil, err
	}
	fsm := NewFSM()
	if hadState && o.RestartQuiet > 0 {
		time.Sleep(o.RestartQuiet)
	}
	lt := newLeaseTransport(trans)
	r, err := raft.NewRaft(conf, fsm, store, store, snaps, lt)
	if err != nil {
		trans.Close()
		store.Close()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	return &Node{id: o.ID, raft: r, fsm: fsm, trans: trans, lt: lt, tls: stream, store: store, notify: notify, hadState: hadState,
		heartbeat: conf.HeartbeatTimeout, election: conf.ElectionTimeout, lease: conf.LeaderLeaseTimeout}, nil
}

// newTransport listens on o.BindAddr, over mutual TLS when configured.
func newTransport(o Options, adv *net.TCPAddr, logger hclog.Logger) (*raft.NetworkTransport, *TLSStreamLayer, error) {
	const maxPool, timeout = 3, 5 * time.Second
	if (o.TLSServer == nil) != (o.TLSClient == nil) {
		return nil, nil, errors.New("raft: TLS needs both a server and a client configuration")
	}
	if o.TLSServer == nil {
		trans, err := raft.NewTCPTransportWithLogger(o.BindAddr, adv, maxPool, timeout, logger)
		if err != nil {
			return nil, nil, fmt.Errorf("raft listen on %s: %w", o.BindAddr, err)
		}
		return trans, nil, nil
	}
	stream, err := NewTLSStreamLayer(o.BindAddr, adv, o.TLSServer, o.TLSClient, logger)
	if err != nil {
		return nil, nil, fmt.Errorf("raft listen on %s: %w", o.BindAddr, err)
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: stream, MaxPool: maxPool, Timeout: timeout, Logger: logger,
	})
	return trans, stream, nil
}

// SetFormationTimeouts shortens (fast) or restores Raft's heartbeat and
// election timeouts. A new cluster has no leader to lose: its first
// election only delays bootstrap, so it may run on the shortest timers
// Raft allows (the leader lease); once a leader exists the configured,
// flap-resistant timers apply again.
func (n *Node) SetFormationTimeouts(fast bool) error {
	rc := n.raft.ReloadableConfig()
	if fast {
		rc.HeartbeatTimeout, rc.ElectionTimeout = n.lease, n.lease
	} else {
		rc.HeartbeatTimeout, rc.ElectionTimeout = n.heartbeat, n.election
	}
	if err := n.raft.ReloadConfig(rc); err != nil {
		return fmt.Errorf("raft reload timeouts: %w", err)
	}
	return nil
}

// HadState reports whether Raft state was on disk when the node opened.
func (n *Node) HadState() bool { return n.hadState }

// HasConfiguration reports whether the node is part of a configuration
// (bootstrapped, restored or added by a leader).
func (n *Node) HasConfiguration() bool {
	servers, err := n.Servers()
	return err == nil && len(servers) > 0
}

// FSM returns the node's state machine.
func (n *Node) FSM() *FSM { return n.fsm }

// ID returns the local server ID.
func (n *Node) ID() string { return n.id }

// Addr returns the address peers dial.
func (n *Node) Addr() string { return string(n.trans.LocalAddr()) }

// LeaderNotify receives true when this node becomes leader and false when
// it stops being leader. Only one consumer may read it.
func (n *Node) LeaderNotify() <-chan bool { return n.notify }

// IsLeader reports whether Raft believes this node is leader. A minority
// leader keeps believing it until its lease check runs; use VerifyLeader
// before acting on it.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// State returns Raft's state name (Leader, Follower, Candidate, Shutdown).
func (n *Node) State() string { return n.raft.State().String() }

// Leader returns the leader's ID and address as far as this node knows.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// LastContact returns the last time this node heard from the leader (zero
// when it is the leader itself).
func (n *Node) LastContact() time.Time { return n.raft.LastContact() }

// Stats returns Raft's counters.
func (n *Node) Stats() map[string]string { return n.raft.Stats() }

// Term returns the current term.
func (n *Node) Term() uint64 { return n.raft.CurrentTerm() }

// Bootstrap makes a new cluster of the given servers. It must be called on
// exactly one node that has no Raft state.
func (n *Node) Bootstrap(servers []raft.Server) error {
	if n.hadState {
		return fmt.Errorf("bootstrap: raft state already on disk")
	}
	if err := n.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	return nil
}

// commitTimeout is Raft's CommitTimeout (see Open).
const commitTimeout = 500 * time.Millisecond

// Apply encodes payload, commits it through Raft and returns the FSM's
// verdict on it. Once it has committed, a no-op entry follows it without
// waiting: its AppendEntries carries the new commit index, so followers
// apply the command one round trip later instead of at the next
// CommitTimeout (see Open).
func (n *Node) Apply(payload any, timeout time.Duration) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	data, err := Encode(payload)
	if err != nil {
		return err
	}
	f := n.raft.Apply(data, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return fmt.Errorf("raft apply: %w", err)
	}
	if res, ok := f.Response().(ApplyResult); ok && res.Err != nil {
		return res.Err
	}
	n.nudge()
	return nil
}

// nudge appends a no-op entry (see Apply) without waiting for it; a
// short enqueue timeout keeps a stalled Raft loop from holding the caller.
func (n *Node) nudge() {
	_ = n.raft.Apply(noopCommand, 10*time.Millisecond)
}

// noopCommand is the encoded no-op.
var noopCommand = func() []byte {
	b, err := Encode(nil)
	if err != nil {
		panic(err)
	}
	return b
}()

// Barrier waits until every preceding log entry is applied to the FSM.
func (n *Node) Barrier(timeout time.Duration) error {
	if err := n.raft.Barrier(timeout).Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return fmt.Errorf("raft barrier: %w", err)
	}
	return nil
}

// VerifyLeader confirms with a quorum that this node is still leader.
func (n *Node) VerifyLeader(timeout time.Duration) error {
	done := make(chan error, 1)
	// Asking can itself block when Raft's main loop is stalled: ask from
	// the goroutine too, so the caller's timeout always holds.
	go func() { done <- n.raft.VerifyLeader().Error() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%w: leadership not confirmed within %s", ErrNotLeader, timeout)
	}
}

// LeaseSince returns when a quorum of voters last accepted this node as
// their leader in the current term (the send time of the requests they
// answered; see leaseTransport), zero when this node does not lead or no
// quorum answered yet. Neither Raft's main loop nor the disk is waited
// for: the heartbeats feed it.
func (n *Node) LeaseSince() time.Time {
	if n.raft.State() != raft.Leader {
		return time.Time{}
	}
	servers, err := n.Servers()
	if err != nil {
		return time.Time{}
	}
	var voters []raft.ServerID
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			voters = append(voters, s.ID)
		}
	}
	return n.lt.leaseSince(raft.ServerID(n.id), voters, n.raft.CurrentTerm(), time.Now())
}

// LoopAnswers asks Raft's main loop to confirm leadership and reports
// whether the loop answered at all (yes or no) within timeout: a loop
// stuck on a hung disk does not. err is the answer.
func (n *Node) LoopAnswers(timeout time.Duration) (answered bool, err error) {
	// While an earlier question is still unanswered (a loop stuck for
	// good), wait for that one rather than pile up goroutines.
	n.loopMu.Lock()
	if n.loopPending == nil {
		ch := make(chan error, 1)
		n.loopPending = ch
		go func() {
			err := n.raft.VerifyLeader().Error()
			n.loopMu.Lock()
			n.loopPending = nil
			n.loopMu.Unlock()
			ch <- err
		}()
	}
	done := n.loopPending
	n.loopMu.Unlock()
	select {
	case err := <-done:
		return true, err
	case <-time.After(timeout):
		return false, nil
	}
}

// SetCut cuts (or restores) this node's outgoing Raft traffic: while
// cut, its followers stop hearing from it and elect another leader. For
// a leader whose main loop is stuck (see leaseTransport).
func (n *Node) SetCut(cut bool) { n.lt.cut.Store(cut) }

// Cut reports whether the transport is cut.
func (n *Node) Cut() bool { return n.lt.cut.Load() }

// Servers returns the latest Raft configuration.
func (n *Node) Servers() ([]raft.Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("raft configuration: %w", err)
	}
	return f.Configuration().Servers, nil
}

// AddNonvoter adds a server that replicates the log without voting; it is
// how a new node starts, so that an empty node never counts in a quorum.
// Adding the same ID with the same address is a no-op. Over TLS the
// server must first complete a handshake both ways: a node whose
// certificate is not of the cluster CA would otherwise sit in the
// configuration, unreachable, and count toward the voters once promoted.
func (n *Node) AddNonvoter(id, addr string, timeout time.Duration) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	if n.tls != nil && !n.hasServer(id, addr) {
		if err := n.probe(addr, min(timeout, probeTimeout)); err != nil {
			return fmt.Errorf("add nonvoter %s: %w", id, err)
		}
	}
	if err := n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout).Error(); err != nil {
		return fmt.Errorf("add nonvoter %s: %w", id, err)
	}
	return nil
}

// probeTimeout bounds the TLS handshake check of a joining node, and
// probeBackoff is how long a failed one is remembered: the leader's HA
// loop retries every round, and an address that drops packets must not
// cost it a timeout each time.
const (
	probeTimeout = time.Second
	probeBackoff = 10 * time.Second
)

// probe runs the TLS handshake check of addr, or returns the failure
// remembered from the last probeBackoff.
func (n *Node) probe(addr string, timeout time.Duration) error {
	n.probeMu.Lock()
	f, ok := n.probeFailed[addr]
	n.probeMu.Unlock()
	if ok && time.Since(f.at) < probeBackoff {
		return f.err
	}
	err := n.tls.Probe(addr, timeout)
	n.probeMu.Lock()
	defer n.probeMu.Unlock()
	if n.probeFailed == nil {
		n.probeFailed = map[string]probeFailure{}
	}
	if err != nil {
		n.probeFailed[addr] = probeFailure{at: time.Now(), err: err}
	} else {
		delete(n.probeFailed, addr)
	}
	return err
}

type probeFailure struct {
	at  time.Time
	err error
}

// hasServer reports whether the configuration already has id at addr.
func (n *Node) hasServer(id, addr string) bool {
	servers, err := n.Servers()
	if err != nil {
		return false
	}
	for _, s := range servers {
		if string(s.ID) == id && string(s.Address) == addr {
			return true
		}
	}
	return false
}

// AddVoter makes a server a voter (promoting a non-voter).
func (n *Node) AddVoter(id, addr string, timeout time.Duration) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout).Error(); err != nil {
		return fmt.Errorf("add voter %s: %w", id, err)
	}
	return nil
}

// RemoveServer removes a server from the configuration.
func (n *Node) RemoveServer(id string, timeout time.Duration) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, timeout).Error(); err != nil {
		return fmt.Errorf("remove server %s: %w", id, err)
	}
	return nil
}

// TransferLeadership hands leadership to the given server and reports
// who won: hashicorp/raft may return nil while another node won.
func (n *Node) TransferLeadership(id, addr string, timeout time.Duration) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	if err := n.raft.LeadershipTransferToServer(raft.ServerID(id), raft.ServerAddress(addr)).Error(); err != nil {
		return fmt.Errorf("leadership transfer to %s: %w", id, err)
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if lid, _ := n.Leader(); lid != "" {
			if lid == id {
				return nil
			}
			if lid != n.id {
				return fmt.Errorf("leadership transfer to %s: %s won instead", id, lid)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("leadership transfer to %s: no new leader within %s", id, timeout)
}

// StepDown hands leadership to another voter (Raft picks the most up to
// date) and waits for the transfer to finish.
func (n *Node) StepDown(timeout time.Duration) error {
	f := n.raft.LeadershipTransfer()
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		return fmt.Errorf("leadership transfer: no answer within %s", timeout)
	}
}

// Close shuts Raft down, then the transport and the store.
func (n *Node) Close() error {
	err := n.raft.Shutdown().Error()
	if cerr := n.trans.Close(); err == nil {
		err = cerr
	}
	if cerr := n.store.Close(); err == nil {
		err = cerr
	}
	return err
}
