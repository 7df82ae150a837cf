package routing

import (
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/proxy"
	"github.com/pgha/pgha/raftfsm"
)

func state(f func(*raftfsm.State)) raftfsm.State {
	s := raftfsm.State{
		SystemID: 42,
		Members: map[string]raftfsm.Member{
			"n1": {Name: "n1", PGAddr: "10.0.0.1:5432"},
			"n2": {Name: "n2", PGAddr: "10.0.0.2:5432"},
			"n3": {Name: "n3", PGAddr: "10.0.0.3:5432"},
			"w":  {Name: "w", Witness: true},
		},
		Primary: &raftfsm.PrimaryRecord{Member: "n1", Epoch: 3, Timeline: 2},
	}
	if f != nil {
		f(&s)
	}
	return s
}

// member is a live gossip member: "primary" runs as primary, "replica"
// streams; lsn is its replayed WAL, on timeline 2.
func member(name string, role cluster.Role, lsn uint64, f ...func(*membership.Member)) membership.Member {
	m := membership.Member{Name: name, Alive: true, MetaOK: true, Meta: membership.Meta{Role: role, Timeline: 2, WAL: lsn}}
	switch role {
	case cluster.RolePrimary:
		m.Meta.PGState = cluster.StateRunning
	case cluster.RoleReplica:
		m.Meta.PGState = cluster.StateStreaming
	}
	for _, g := range f {
		g(&m)
	}
	return m
}

func view(ms ...membership.Member) map[string]membership.Member {
	out := map[string]membership.Member{}
	for _, m := range ms {
		out[m.Name] = m
	}
	return out
}

// text renders routes as "w=NAME d=NAME r=A,B" for comparison.
func text(r proxy.Routes) string {
	var b strings.Builder
	if r.Primary != nil {
		b.WriteString("w=" + r.Primary.Name + " ")
	}
	if r.Draining != nil {
		b.WriteString("d=" + r.Draining.Name + " ")
	}
	var names []string
	for _, x := range r.Replicas {
		names = append(names, x.Name)
	}
	b.WriteString("r=" + strings.Join(names, ","))
	return b.String()
}

func TestRoutes(t *testing.T) {
	const mb = 1 << 20
	healthy := view(member("n1", cluster.RolePrimary, 100*mb), member("n2", cluster.RoleReplica, 100*mb), member("n3", cluster.RoleReplica, 100*mb),
		membership.Member{Name: "w", Alive: true, MetaOK: true, Meta: membership.Meta{Witness: true, Role: cluster.RoleWitness}})
	mod := func(name string, f func(*membership.Member)) map[string]membership.Member {
		out := view()
		for k, v := range healthy {
			out[k] = v
		}
		m := out[name]
		f(&m)
		out[name] = m
		return out
	}
	cases := []struct {
		name string
		in   Input
		want string
	}{
		{"healthy: writes to the primary, reads to both replicas", Input{State: state(nil), Gossip: healthy, LeaderContact: true, MaxReplicaLag: mb}, "w=n1 r=n2,n3"},
		{"not initialised: nothing", Input{State: state(func(s *raftfsm.State) { s.SystemID = 0 }), Gossip: healthy, LeaderContact: true, MaxReplicaLag: mb}, "r="},
		{"no leader contact: no writes, reads go on", Input{State: state(nil), Gossip: healthy, MaxReplicaLag: mb}, "r=n2,n3"},
		{"switchover in progress: the primary drains", Input{State: state(func(s *raftfsm.State) { s.Primary.Demoting = true }), Gossip: healthy, LeaderContact: true, MaxReplicaLag: mb}, "d=n1 r=n2,n3"},
		{"record holder not running as primary yet: writes held", Input{State: state(func(s *raftfsm.State) { s.Primary.Member = "n2" }), Gossip: healthy, LeaderContact: true, MaxReplicaLag: mb}, "r=n3"},
		{"primary's status stale: writes held", Input{State: state(nil), Gossip: mod("n1", func(m *membership.Member) { m.Alive = false }), LeaderContact: true, MaxReplicaLag: mb}, "r=n2,n3"},
		{"lagging replica left out", Input{State: state(nil), Gossip: mod("n3", func(m *membership.Member) { m.Meta.WAL = 90 * mb }), LeaderContact: true, MaxReplicaLag: mb}, "w=n1 r=n2"},
		{"received but not replayed counts as lag", Input{State: state(nil), Gossip: mod("n3", func(m *membership.Member) { m.Meta.WAL, m.Meta.Recv = 90*mb, 100*mb }), LeaderContact: true, MaxReplicaLag: mb}, "w=n1 r=n2"},
		{"replica not streaming left out", Input{State: state(nil), Gossip: mod("n2", func(m *membership.Member) { m.Meta.PGState = cluster.StateRunning }), LeaderContact: true, MaxReplicaLag: mb}, "w=n1 r=n3"},
		{"noloadbalance left out", Input{State: state(nil), Gossip: mod("n2", func(m *membership.Member) { m.Meta.NoLB = true }), LeaderContact: true, MaxReplicaLag: mb}, "w=n1 r=n3"},
		{"replica on an older timeline left out", Input{State: state(nil), Gossip: mod("n2", func(m *membership.Member) { m.Meta.Timeline = 1 }), LeaderContact: true, MaxReplicaLag: mb}, "w=n1 r=n3"},
		{"stale replica left out", Input{State: state(nil), Gossip: mod("n3", func(m *membership.Member) { m.Alive = false }), LeaderContact: true, MaxReplicaLag: mb}, "w=n1 r=n2"},
		{"replica without a PostgreSQL address left out", Input{State: state(func(s *raftfsm.State) { s.Members["n3"] = raftfsm.Member{Name: "n3"} }), Gossip: healthy, LeaderContact: true, MaxReplicaLag: mb}, "w=n1 r=n2"},
		{"primary gone: lag measured against the recorded position", Input{State: state(func(s *raftfsm.State) {
			s.PrimaryLSN = &raftfsm.LSNRecord{LSN: 100 * mb, Timeline: 2}
		}), Gossip: mod("n1", func(m *membership.Member) {
			m.Meta.Role, m.Meta.PGState = cluster.RoleNone, cluster.StateStopped
			m.Meta.WAL = 0
		}), LeaderContact: true, MaxReplicaLag: mb}, "r=n2,n3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := text(Routes(c.in)); got != c.want {
				t.Fatalf("routes %q, want %q", got, c.want)
			}
		})
	}
}

// TestRoutesFollowAPromotionBeforeGossip: the FSM's record of the
// promotion routes writes to the new primary before its gossip says so,
// unless a status read after the promotion says otherwise.
func TestRoutesFollowAPromotionBeforeGossip(t *testing.T) {
	promoted := time.Date(2026, 12, 8, 10, 0, 0, 0, time.UTC)
	st := state(func(s *raftfsm.State) {
		s.Primary = &raftfsm.PrimaryRecord{Member: "n2", Epoch: 4, Timeline: 3}
		s.History = []raftfsm.HistoryEntry{{Epoch: 3, New: "n1"}, {Epoch: 4, Old: "n1", New: "n2", PromotedAt: promoted}}
	})
	n2 := func(at time.Time, role cluster.Role) membership.Member {
		m := member("n2", role, 100)
		m.Meta.Timeline, m.Meta.At = 3, at.UnixMilli()
		return m
	}
	cases := []struct {
		name string
		n2   membership.Member
		st   raftfsm.State
		want string
	}{
		{"gossip from before the promotion: the FSM wins", n2(promoted.Add(-time.Second), cluster.RoleReplica), st, "w=n2 r="},
		{"gossip after the promotion saying replica: held", n2(promoted.Add(time.Second), cluster.RoleReplica), st, "r="},
		{"gossip says primary: routed", n2(promoted.Add(time.Second), cluster.RolePrimary), st, "w=n2 r="},
		{"not promoted yet: held", n2(promoted.Add(-time.Second), cluster.RoleReplica), state(func(s *raftfsm.State) {
			s.Primary = &raftfsm.PrimaryRecord{Member: "n2", Epoch: 4, Timeline: 2}
			s.History = []raftfsm.HistoryEntry{{Epoch: 4, Old: "n1", New: "n2"}}
		}), "r="},
	}
	for _, c := range cases {
		stale := c.n2
		stale.Alive = false
		for _, g := range []membership.Member{c.n2, stale} {
			want := c.want
			if !g.Alive {
				want = "r="
			}
			got := text(Routes(Input{State: c.st, Gossip: view(g), LeaderContact: true, MaxReplicaLag: 1 << 20}))
			if got != want {
				t.Errorf("%s (alive %v): routes %q, want %q", c.name, g.Alive, got, want)
			}
		}
	}
}
