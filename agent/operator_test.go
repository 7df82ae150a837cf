package agent

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/pgha/pgha/agent/decide"
	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/raftfsm"
)

// streaming is a streaming replica on timeline tl holding WAL up to lsn.
func streaming(name string, tl uint32, lsn uint64) membership.Member {
	return gossipMember(name, func(m *membership.Meta) {
		m.Role, m.PGState, m.Timeline, m.WAL, m.Recv = cluster.RoleReplica, cluster.StateStreaming, tl, lsn, lsn
	})
}

// onTimeline2 is a cluster on timeline 2 with n1 primary, n4 a member.
func onTimeline2() raftfsm.State {
	st := threeMembers()
	st.Members["n4"] = raftfsm.Member{Name: "n4", PGAddr: "pg-n4"}
	st.Primary.Timeline = 2
	st.PrimaryLSN = &raftfsm.LSNRecord{LSN: 1000, Timeline: 2}
	return st
}

// TestCandidateRefusesWithTheReason: switchover and failover to a
// non-voter or to a member on an older timeline are refused, with the
// eligibility rule's reason, as a conflict (409).
func TestCandidateRefusesWithTheReason(t *testing.T) {
	r := newFakeRaft(onTimeline2(), []string{"n1", "n2", "n3"}, "n4")
	g := &fakeGossip{members: []membership.Member{
		gossipMember("n1", func(m *membership.Meta) { m.Role, m.PGState, m.Timeline = cluster.RolePrimary, cluster.StateRunning, 2 }),
		streaming("n2", 2, 1000), // eligible
		streaming("n3", 1, 5000), // diverged on the old timeline
		streaming("n4", 2, 1000), // a non-voter
	}}
	a := testAgent(r, g)
	st := r.ClusterState()
	cases := []struct {
		name, cand string
		p          decide.Purpose
		force      bool
		want       string // "" = accepted
		invalid    bool   // a bad request rather than a conflict
	}{
		{"switchover to an eligible replica", "n2", decide.ForSwitchover, false, "", false},
		{"switchover to a non-voter", "n4", decide.ForSwitchover, false, "n4 is not a Raft voter", false},
		{"failover to a non-voter", "n4", decide.ForPromotion, false, "n4 is not a Raft voter", false},
		{"forced failover to a non-voter", "n4", decide.ForPromotion, true, "n4 is not a Raft voter", false},
		{"switchover to an older timeline", "n3", decide.ForSwitchover, false, "n3 is on timeline 1, older than the cluster's 2", false},
		{"forced failover to an older timeline", "n3", decide.ForPromotion, true, "n3 is on timeline 1, older than the cluster's 2", false},
		{"the primary itself", "n1", decide.ForSwitchover, false, "already the primary", true},
		{"a stranger", "n9", decide.ForSwitchover, false, `no member named "n9"`, true},
		{"no name: the best eligible one", "", decide.ForSwitchover, false, "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := a.candidate(st, c.cand, c.p, c.force)
			if c.want == "" {
				if err != nil || got != "n2" {
					t.Fatalf("candidate = %q, %v; want n2", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want it to say %q", err, c.want)
			}
			kind := cluster.ErrConflict
			if c.invalid {
				kind = cluster.ErrInvalid
			}
			if !errors.Is(err, kind) {
				t.Fatalf("err %v is not %v", err, kind)
			}
			var ie *cluster.IneligibleError
			if !c.invalid && (!errors.As(err, &ie) || ie.Member != c.cand) {
				t.Fatalf("err %#v: want an IneligibleError for %s", err, c.cand)
			}
		})
	}
}

// TestClusterViewShowsWhyNotPromotable: pgha list shows the rule's reason
// for each replica that could not be promoted.
func TestClusterViewShowsWhyNotPromotable(t *testing.T) {
	r := newFakeRaft(onTimeline2(), []string{"n1", "n2", "n3"}, "n4")
	g := &fakeGossip{members: []membership.Member{
		gossipMember("n1", func(m *membership.Meta) { m.Role, m.PGState, m.Timeline = cluster.RolePrimary, cluster.StateRunning, 2 }),
		streaming("n2", 2, 1000), streaming("n3", 1, 5000), streaming("n4", 2, 1000),
	}}
	ci := testAgent(r, g).Cluster()
	why := map[string]string{}
	for _, m := range ci.Members {
		why[m.Name] = m.Ineligible
	}
	if why["n1"] != "" || why["n2"] != "" {
		t.Errorf("primary or eligible replica has a reason: %v", why)
	}
	if !strings.Contains(why["n3"], "older than the cluster's 2") || !strings.Contains(why["n4"], "not a Raft voter") {
		t.Errorf("reasons %v", why)
	}
}

// TestRemoveGoesThroughTheFSMFirst: the FSM refuses to remove the
// primary before Raft is touched, and a dead member leaves the FSM before
// it leaves Raft.
func TestRemoveGoesThroughTheFSMFirst(t *testing.T) {
	r := newFakeRaft(threeMembers(), []string{"n1", "n2", "n3"})
	a := testAgent(r, &fakeGossip{members: []membership.Member{gossipMember("n1", nil), gossipMember("n2", nil)}})
	l := a.loop
	term := testTerm(r, allowAll)

	// The primary (n1 here is also this node; try n1 as primary held by n2).
	st := r.ClusterState()
	st.Primary.Member = "n3"
	r.state = st
	err := l.remove(term, api.RemoveRequest{Name: "n3", Force: true})
	if !errors.Is(err, cluster.ErrConflict) || !strings.Contains(err.Error(), "primary") {
		t.Fatalf("removing the primary: %v", err)
	}
	if got := r.log(); len(got) != 0 {
		t.Fatalf("removing the primary touched Raft: %v", got)
	}

	// A live member needs --force.
	if err := l.remove(term, api.RemoveRequest{Name: "n2"}); !errors.Is(err, cluster.ErrConflict) {
		t.Fatalf("removing a live member without force: %v", err)
	}

	// A dead one: FSM, then Raft.
	st.Primary.Member = "n1"
	r.state = st
	if err := l.remove(term, api.RemoveRequest{Name: "n3"}); err != nil {
		t.Fatal(err)
	}
	if got := r.log(); !slices.Equal(got, []string{"apply raftfsm.RemoveMember", "remove-server n3"}) {
		t.Fatalf("calls %v", got)
	}
	if err := l.remove(term, api.RemoveRequest{Name: "n3"}); !errors.Is(err, cluster.ErrNotFound) {
		t.Fatalf("removing twice: %v", err)
	}
	if err := l.remove(term, api.RemoveRequest{Name: "n1"}); !errors.Is(err, cluster.ErrInvalid) {
		t.Fatalf("the leader removing itself: %v", err)
	}
}
