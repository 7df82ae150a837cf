package agent

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/pgha/pgha/config"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/raftfsm"
)

// Fakes of the agent's ports (ports.go) for unit tests of the parts that
// talk to Raft and gossip: every call is recorded, the FSM is a real
// raftfsm.State that Apply changes with the real command code.

// fakeRaft is a Raft node that is leader of a fixed configuration.
type fakeRaft struct {
	// transferErr is what TransferLeadership returns.
	transferErr error
	mu          sync.Mutex
	servers     []raft.Server
	state       raftfsm.State
	calls       []string // "apply upsert_member n4", "add-nonvoter n4", ...
	// failAdd makes AddNonvoter fail with this error.
	failAdd error
}

var _ raftMembers = (*fakeRaft)(nil)

func newFakeRaft(st raftfsm.State, voters []string, nonvoters ...string) *fakeRaft {
	f := &fakeRaft{state: st}
	for _, v := range voters {
		f.servers = append(f.servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(v), Address: raft.ServerAddress("r-" + v)})
	}
	for _, v := range nonvoters {
		f.servers = append(f.servers, raft.Server{Suffrage: raft.Nonvoter, ID: raft.ServerID(v), Address: raft.ServerAddress("r-" + v)})
	}
	return f
}

func (f *fakeRaft) record(format string, args ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakeRaft) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeRaft) Servers() ([]raft.Server, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]raft.Server(nil), f.servers...), nil
}

func (f *fakeRaft) AddNonvoter(id, addr string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("add-nonvoter %s", id)
	if f.failAdd != nil {
		return f.failAdd
	}
	f.servers = append(f.servers, raft.Server{Suffrage: raft.Nonvoter, ID: raft.ServerID(id), Address: raft.ServerAddress(addr)})
	return nil
}

func (f *fakeRaft) AddVoter(id, addr string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("add-voter %s", id)
	for i, s := range f.servers {
		if string(s.ID) == id {
			f.servers[i].Suffrage = raft.Voter
			return nil
		}
	}
	f.servers = append(f.servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(addr)})
	return nil
}

func (f *fakeRaft) RemoveServer(id string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("remove-server %s", id)
	for i, s := range f.servers {
		if string(s.ID) == id {
			f.servers = append(f.servers[:i], f.servers[i+1:]...)
			break
		}
	}
	return nil
}

func (f *fakeRaft) TransferLeadership(id, _ string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("transfer %s", id)
	return f.transferErr
}

// Apply runs the command through the real FSM code on a copy of the
// state, as raftfsm.FSM does.
func (f *fakeRaft) Apply(payload any, _ time.Duration) error {
	data, err := raftfsm.Encode(payload)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("apply %T", payload)
	next := cloneState(f.state)
	if err := raftfsm.ApplyCommand(&next, data); err != nil {
		return err
	}
	f.state = next
	return nil
}

func (f *fakeRaft) ClusterState() raftfsm.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return cloneState(f.state)
}

// cloneState deep-copies through the FSM's own snapshot encoding.
func cloneState(s raftfsm.State) raftfsm.State {
	c := s
	c.Members = map[string]raftfsm.Member{}
	for k, v := range s.Members {
		c.Members[k] = v
	}
	if s.Primary != nil {
		p := *s.Primary
		c.Primary = &p
	}
	return c
}

// fakeConsensus is fakeRaft with the rest of consensus, for the parts
// that need a whole node (the operator backend's views).
type fakeConsensus struct {
	*fakeRaft
	leader  atomic.Bool
	changed chan struct{}
	notify  chan bool
	// verify, when set, answers VerifyLeader (default: confirmed).
	verify func(timeout time.Duration) error
	// lease, when set, answers LeaseSince (default: now while leader).
	lease func() time.Time
	// loop, when set, answers LoopAnswers (default: answered).
	loop func(timeout time.Duration) (bool, error)
	cut  atomic.Bool
}

func (f *fakeConsensus) LeaseSince() time.Time {
	if f.lease != nil {
		return f.lease()
	}
	if !f.leader.Load() {
		return time.Time{}
	}
	return time.Now()
}
func (f *fakeConsensus) LoopAnswers(timeout time.Duration) (bool, error) {
	if f.loop != nil {
		return f.loop(timeout)
	}
	return true, f.VerifyLeader(timeout)
}
func (f *fakeConsensus) SetCut(c bool) { f.cut.Store(c) }
func (f *fakeConsensus) Cut() bool     { return f.cut.Load() }

var _ consensus = (*fakeConsensus)(nil)

func (f *fakeConsensus) Addr() string                    { return "r-self" }
func (f *fakeConsensus) HadState() bool                  { return true }
func (f *fakeConsensus) HasConfiguration() bool          { return true }
func (f *fakeConsensus) SetFormationTimeouts(bool) error { return nil }
func (f *fakeConsensus) Bootstrap([]raft.Server) error   { return nil }
func (f *fakeConsensus) Changed() <-chan struct{}        { return f.changed }
func (f *fakeConsensus) LeaderNotify() <-chan bool       { return f.notify }
func (f *fakeConsensus) IsLeader() bool                  { return f.leader.Load() }
func (f *fakeConsensus) State() string                   { return "Leader" }
func (f *fakeConsensus) Leader() (string, string)        { return "n1", "r-n1" }
func (f *fakeConsensus) LastContact() time.Time          { return time.Now() }
func (f *fakeConsensus) Term() uint64                    { return 7 }
func (f *fakeConsensus) Stats() map[string]string        { return map[string]string{} }
func (f *fakeConsensus) Barrier(time.Duration) error     { return nil }
func (f *fakeConsensus) VerifyLeader(timeout time.Duration) error {
	if f.verify != nil {
		return f.verify(timeout)
	}
	if !f.leader.Load() {
		return errors.New("not leader")
	}
	return nil
}
func (f *fakeConsensus) StepDown(time.Duration) error { return nil }
func (f *fakeConsensus) Close() error                 { return nil }

// fakeGossip serves a fixed member list.
type fakeGossip struct {
	mu      sync.Mutex
	members []membership.Member
	meta    membership.Meta
}

var _ gossipNet = (*fakeGossip)(nil)

func (g *fakeGossip) Notify(string, string) error { return nil }

func (g *fakeGossip) Members() []membership.Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]membership.Member(nil), g.members...)
}
func (g *fakeGossip) SetMeta(m membership.Meta) error {
	g.mu.Lock()
	g.meta = m
	g.mu.Unlock()
	return nil
}
func (g *fakeGossip) Touch(int64) error          { return nil }
func (g *fakeGossip) LocalMeta() membership.Meta { g.mu.Lock(); defer g.mu.Unlock(); return g.meta }
func (g *fakeGossip) Events() <-chan struct{}    { return nil }
func (g *fakeGossip) Join([]string) (int, error) { return 0, nil }
func (g *fakeGossip) RetryJoin([]string)         {}
func (g *fakeGossip) Leave(time.Duration) error  { return nil }
func (g *fakeGossip) Close() error               { return nil }

// testAgent is an Agent on fakes: enough for its views and for jobs run
// directly on its loop (no goroutine runs).
func testAgent(r *fakeRaft, g *fakeGossip) *Agent {
	cfg := config.Default()
	cfg.Name, cfg.Cluster = "n1", "it"
	fc := &fakeConsensus{fakeRaft: r}
	fc.leader.Store(true)
	a := &Agent{cfg: &cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		raft: fc, gossip: g,
		wake: make(chan struct{}, 1), routesWake: make(chan struct{}, 1)}
	a.guard.lost, a.guard.wake = make(chan struct{}, 1), make(chan struct{}, 1)
	a.loop = newHALoop(a)
	return a
}

// gossipMember is a live member of cluster "it" with the given status.
func gossipMember(name string, f func(*membership.Meta)) membership.Member {
	m := membership.Meta{Cluster: "it", HasRaft: true, Raft: "r-" + name, API: "api-" + name, PG: "pg-" + name, Priority: 1}
	if f != nil {
		f(&m)
	}
	return membership.Member{Name: name, Addr: "g-" + name, Alive: true, MetaOK: true, Meta: m, LastUpdate: time.Now()}
}
