package agent

import (
	"context"
	"time"

	"github.com/hashicorp/raft"
	"github.com/jackc/pgx/v5"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

// The agent's parts reach Raft, gossip and PostgreSQL through these
// interfaces, so that the leader term, formation and the operator
// backend can be unit-tested with fakes (fakes_test.go) instead of a real
// Raft group or PostgreSQL. The real implementations are raftfsm.Node,
// membership.Gossip and pgnode.Node.

// raftMembers is what the leader term needs of Raft: the configuration,
// changes to it, and commits.
type raftMembers interface {
	Servers() ([]raft.Server, error)
	AddNonvoter(id, addr string, timeout time.Duration) error
	AddVoter(id, addr string, timeout time.Duration) error
	RemoveServer(id string, timeout time.Duration) error
	TransferLeadership(id, addr string, timeout time.Duration) error
	Apply(payload any, timeout time.Duration) error
	// ClusterState is a copy of the FSM's state.
	ClusterState() raftfsm.State
}

// consensus is the Raft node as the agent uses it.
type consensus interface {
	raftMembers
	Addr() string
	HadState() bool
	HasConfiguration() bool
	SetFormationTimeouts(fast bool) error
	Bootstrap(servers []raft.Server) error
	// Changed receives after FSM changes (one reader: relayEvents).
	Changed() <-chan struct{}
	// LeaderNotify is Raft's NotifyCh (one reader: watchLeadership).
	LeaderNotify() <-chan bool
	IsLeader() bool
	State() string
	Leader() (id, addr string)
	LastContact() time.Time
	Term() uint64
	Stats() map[string]string
	Barrier(timeout time.Duration) error
	VerifyLeader(timeout time.Duration) error
	// LeaseSince, LoopAnswers, SetCut, Cut: see raftfsm.Node and
	// fence.go.
	LeaseSince() time.Time
	LoopAnswers(timeout time.Duration) (answered bool, err error)
	SetCut(cut bool)
	Cut() bool
	StepDown(timeout time.Duration) error
	Close() error
}

// raftNode adapts raftfsm.Node to consensus.
type raftNode struct{ *raftfsm.Node }

func (n raftNode) ClusterState() raftfsm.State { return n.FSM().State() }
func (n raftNode) Changed() <-chan struct{}    { return n.FSM().Changed() }

// gossipNet is the gossip layer as the agent uses it.
type gossipNet interface {
	Members() []membership.Member
	SetMeta(m membership.Meta) error
	Touch(at int64) error
	LocalMeta() membership.Meta
	Events() <-chan struct{}
	Join(addrs []string) (int, error)
	RetryJoin(addrs []string)
	Leave(timeout time.Duration) error
	Notify(to, text string) error
	Close() error
}

// localPG is the local PostgreSQL as the agent drives it.
type localPG interface {
	Running() bool
	Exited() <-chan struct{}
	DataState() (pgnode.DataState, error)
	ControlData(ctx context.Context) (pgnode.ControlData, error)
	Status(ctx context.Context) (pgnode.Status, error)
	WriteConfig(d pgnode.Desired) (pgnode.ConfigChange, error)
	Start(ctx context.Context) error
	Stop(ctx context.Context, mode pgnode.StopMode) error
	Fence(grace time.Duration) error
	Reload(ctx context.Context) error
	PendingRestart(ctx context.Context) (bool, error)
	Bootstrap(ctx context.Context, d pgnode.Desired) (uint64, error)
	Clone(ctx context.Context, src pgnode.Upstream, progress func(pct int, detail string)) error
	Rewind(ctx context.Context, src pgnode.Upstream) error
	MoveAside() (string, error)
	Promote(ctx context.Context) (uint32, error)
	EnsureSlots(ctx context.Context, want []string) (created, dropped []string, err error)
	Inspect(ctx context.Context) (pgnode.Inspection, error)
	Connect(ctx context.Context) (*pgx.Conn, error)
	RotateLog(max int64, keep int) (bool, error)
	ConnectTo(ctx context.Context, host string, port int) (*pgx.Conn, error)
	Close() error
}

var (
	_ consensus = raftNode{}
	_ gossipNet = (*membership.Gossip)(nil)
	_ localPG   = (*pgnode.Node)(nil)
)
