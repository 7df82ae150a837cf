package decide

import (
	"errors"
	"strings"
	"testing"

	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/raftfsm"
)

func TestBehind(t *testing.T) {
	cases := []struct {
		name    string
		ref, p  Position
		lag     int64
		compare bool
	}{
		{"same timeline, behind", Position{2, 5000}, Position{2, 4000}, 1000, true},
		{"same timeline, ahead", Position{2, 5000}, Position{2, 6000}, 0, true},
		{"newer timeline: its LSNs continue the history", Position{2, 5000}, Position{3, 4800}, 200, true},
		{"older timeline: not comparable, however far ahead", Position{3, 5000}, Position{2, 9000}, 0, false},
		{"unknown reference timeline compares by LSN", Position{0, 5000}, Position{2, 4000}, 1000, true},
	}
	for _, c := range cases {
		lag, ok := Behind(c.ref, c.p)
		if lag != c.lag || ok != c.compare {
			t.Errorf("%s: Behind(%v, %v) = %d, %v; want %d, %v", c.name, c.ref, c.p, lag, ok, c.lag, c.compare)
		}
	}
}

func TestEligible(t *testing.T) {
	st := withState(func(s *raftfsm.State) {
		s.Primary.Timeline = 2
		s.PrimaryLSN = &raftfsm.LSNRecord{LSN: 10_000, Timeline: 2}
		s.Config.MaximumLagOnFailover = 1000
	})
	// good is an eligible streaming voter replica on the record's timeline.
	good := MemberView{Name: "n2", Reachable: true, Voter: true, VoterKnown: true, Priority: 1,
		Role: cluster.RoleReplica, State: cluster.StateStreaming, Position: Position{2, 9_500}}
	mod := func(f func(*MemberView)) MemberView { v := good; f(&v); return v }
	sync := withState(func(s *raftfsm.State) {
		s.Primary.Timeline = 2
		s.Config.SynchronousMode = true
		s.SyncSet = []string{"n3"}
	})
	// The record moved to n1 in epoch 2, and n1 has not recorded its
	// promotion (yet, or ever: it may have died right after it).
	unrecorded := withState(func(s *raftfsm.State) {
		s.Primary.Timeline, s.Primary.Epoch = 2, 2
		s.PrimaryLSN = &raftfsm.LSNRecord{LSN: 10_000, Timeline: 2}
		s.Config.MaximumLagOnFailover = 1000
		s.History = []raftfsm.HistoryEntry{{Epoch: 2, Old: "n2", New: "n1"}}
	})
	promote := PromotionRule(st, nil, ForPromotion, false)
	switchover := PromotionRule(st, nil, ForSwitchover, false)
	forced := PromotionRule(st, nil, ForSwitchover, true)
	reads := Rule{Purpose: ForReads, Reference: Position{2, 10_000}, MaxLag: 1000}

	cases := []struct {
		name string
		st   raftfsm.State
		m    MemberView
		r    Rule
		why  string // "" = eligible
	}{
		{"a caught-up streaming voter", st, good, promote, ""},
		{"not a member", st, mod(func(v *MemberView) { v.Name = "n9" }), promote, "not a member"},
		{"the primary itself", st, mod(func(v *MemberView) { v.Name = "n1" }), promote, "is the primary"},
		{"unreachable", st, mod(func(v *MemberView) { v.Reachable = false }), promote, "not reachable"},
		{"witness", st, mod(func(v *MemberView) { v.Witness = true }), promote, "witness"},
		{"nofailover", st, mod(func(v *MemberView) { v.NoFailover = true }), promote, "nofailover"},
		{"nofailover still serves reads", st, mod(func(v *MemberView) { v.NoFailover = true }), reads, ""},
		{"non-voter cannot be promoted", st, mod(func(v *MemberView) { v.Voter = false }), switchover, "not a Raft voter"},
		{"non-voter serves reads", st, mod(func(v *MemberView) { v.Voter = false }), reads, ""},
		{"unknown suffrage is refused", st, mod(func(v *MemberView) { v.VoterKnown, v.Voter = false, false }), promote, "unknown Raft suffrage"},
		{"stopped", st, mod(func(v *MemberView) { v.Role, v.State = cluster.RoleNone, cluster.StateStopped }), promote, "not a running replica"},
		{"cloning", st, mod(func(v *MemberView) { v.Role, v.State = cluster.RoleNone, cluster.StateCloning }), promote, "not a running replica"},
		{"runs as a primary", st, mod(func(v *MemberView) { v.Role, v.State = cluster.RolePrimary, cluster.StateRunning }), promote, "not a running replica"},
		{"a running replica not streaming may be failed over to", st, mod(func(v *MemberView) { v.State = cluster.StateRunning }), promote, ""},
		{"but not switched over to", st, mod(func(v *MemberView) { v.State = cluster.StateRunning }), switchover, "not streaming"},
		{"unless forced", st, mod(func(v *MemberView) { v.State = cluster.StateRunning }), forced, ""},
		{"nor read from", st, mod(func(v *MemberView) { v.State = cluster.StateRunning }), reads, "not streaming"},
		{"noloadbalance serves no reads", st, mod(func(v *MemberView) { v.NoLoadBalance = true }), reads, "noloadbalance"},
		{"noloadbalance may be promoted", st, mod(func(v *MemberView) { v.NoLoadBalance = true }), promote, ""},
		{"synchronous mode: outside the set", sync, good, promote, "not in the synchronous set (n3)"},
		{"synchronous mode: in the set", sync, mod(func(v *MemberView) { v.Name = "n3" }), promote, ""},
		{"synchronous mode does not restrict reads", sync, good, Rule{Purpose: ForReads, MaxLag: -1}, ""},
		{"older timeline than the record", st, mod(func(v *MemberView) { v.Position = Position{1, 20_000} }), promote, "older than the cluster's 2"},
		{"older timeline serves no reads", st, mod(func(v *MemberView) { v.Position = Position{1, 20_000} }), reads, "older than the cluster's 2"},
		{"older timeline even when forced", st, mod(func(v *MemberView) { v.Position = Position{1, 20_000} }), forced, "older than the cluster's 2"},
		{"newer timeline than the record", st, mod(func(v *MemberView) { v.Position = Position{3, 20_000} }), promote, "newer than the cluster's 2"},
		{"one timeline up while the holder's promotion is unrecorded", unrecorded, mod(func(v *MemberView) { v.Position = Position{3, 9_500} }), promote, ""},
		{"two timelines up even then", unrecorded, mod(func(v *MemberView) { v.Position = Position{4, 9_500} }), promote, "newer than the cluster's 2"},
		{"no timeline reported", st, mod(func(v *MemberView) { v.Position = Position{0, 9_500} }), promote, "reports no timeline"},
		{"too far behind the recorded position", st, mod(func(v *MemberView) { v.Position = Position{2, 8_000} }), promote, "2000 bytes behind the primary (maximum_lag_on_failover 1000)"},
		{"too far behind, forced", st, mod(func(v *MemberView) { v.Position = Position{2, 8_000} }), forced, ""},
		{"too far behind for reads", st, mod(func(v *MemberView) { v.Position = Position{2, 8_000} }), reads, "2000 bytes behind the primary (proxy.max_replica_lag 1000)"},
		{"ahead of the recorded position", st, mod(func(v *MemberView) { v.Position = Position{2, 12_000} }), switchover, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Eligible(c.st, c.m, c.r)
			switch {
			case c.why == "" && err != nil:
				t.Fatalf("ineligible: %v", err)
			case c.why != "" && err == nil:
				t.Fatalf("eligible, want refused with %q", c.why)
			case c.why != "" && !strings.Contains(err.Error(), c.why):
				t.Fatalf("reason %q, want it to mention %q", err.Error(), c.why)
			case err != nil && (err.Member != c.m.Name || !errors.Is(err, cluster.ErrConflict)):
				t.Fatalf("error %#v: want member %s and a conflict", err, c.m.Name)
			}
		})
	}
}

func TestBest(t *testing.T) {
	st := withState(func(s *raftfsm.State) {
		s.Primary.Timeline = 2
		s.PrimaryLSN = &raftfsm.LSNRecord{LSN: 10_000, Timeline: 2}
		s.Config.MaximumLagOnFailover = 1 << 20
	})
	view := func(name string, prio int, pos Position) MemberView {
		return MemberView{Name: name, Reachable: true, Voter: true, VoterKnown: true, Priority: prio,
			Role: cluster.RoleReplica, State: cluster.StateStreaming, Position: pos}
	}
	r := PromotionRule(st, nil, ForPromotion, false)
	cases := []struct {
		name  string
		views []MemberView
		want  string
		why   string
	}{
		{"the most advanced", []MemberView{view("n2", 1, Position{2, 9000}), view("n3", 1, Position{2, 9500})}, "n3", ""},
		{"priority first", []MemberView{view("n2", 2, Position{2, 9000}), view("n3", 1, Position{2, 9500})}, "n2", ""},
		{"ties by name", []MemberView{view("n3", 1, Position{2, 9000}), view("n2", 1, Position{2, 9000})}, "n2", ""},
		{"a diverged replica far ahead on an old timeline never wins", []MemberView{view("n2", 1, Position{2, 9000}), view("n3", 1, Position{1, 90_000})}, "n2", ""},
		{"nobody: every reason listed", []MemberView{view("n2", 1, Position{1, 9000}), {Name: "n3"}}, "", "n2 is on timeline 1, older than the cluster's 2; n3 is not reachable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, why := Best(st, c.views, r)
			if got != c.want || !strings.Contains(why, c.why) {
				t.Fatalf("Best = %q, %q; want %q, %q", got, why, c.want, c.why)
			}
		})
	}
}

func TestPrimaryPosition(t *testing.T) {
	gossipSays := func(role cluster.Role, tl uint32, wal uint64) map[string]membership.Member {
		return map[string]membership.Member{"n1": {Name: "n1", MetaOK: true, Meta: membership.Meta{Role: role, Timeline: tl, WAL: wal}}}
	}
	recorded := withState(func(s *raftfsm.State) { s.PrimaryLSN = &raftfsm.LSNRecord{LSN: 1000, Timeline: 2} })
	cases := []struct {
		name   string
		st     raftfsm.State
		gossip map[string]membership.Member
		want   Position
	}{
		{"no primary", raftfsm.State{}, nil, Position{}},
		{"recorded only", recorded, nil, Position{2, 1000}},
		{"the primary's last gossip is later", recorded, gossipSays(cluster.RolePrimary, 2, 5000), Position{2, 5000}},
		{"a stale gossip from before the record", recorded, gossipSays(cluster.RolePrimary, 2, 500), Position{2, 1000}},
		{"gossip on a newer timeline", recorded, gossipSays(cluster.RolePrimary, 3, 900), Position{3, 900}},
		{"the holder does not run as primary yet", recorded, gossipSays(cluster.RoleReplica, 2, 5000), Position{2, 1000}},
	}
	for _, c := range cases {
		if got := PrimaryPosition(c.st, c.gossip); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	// A candidate is judged against the later position: 4000 bytes behind
	// the dead primary's last word, though level with the record.
	st := recorded
	st.Config.MaximumLagOnFailover = 100
	st.Primary.Timeline = 2
	v := MemberView{Name: "n2", Reachable: true, Voter: true, VoterKnown: true, Role: cluster.RoleReplica,
		State: cluster.StateStreaming, Position: Position{2, 1000}}
	if err := Eligible(st, v, PromotionRule(st, gossipSays(cluster.RolePrimary, 2, 5000), ForSwitchover, false)); err == nil || !strings.Contains(err.Reason, "4000 bytes behind") {
		t.Fatalf("a switchover judged against the record only: %v", err)
	}
	// A failover judges against the record, the one position every node
	// reads alike.
	if err := Eligible(st, v, PromotionRule(st, gossipSays(cluster.RolePrimary, 2, 5000), ForPromotion, false)); err != nil {
		t.Fatalf("a failover judged against the dead primary's last gossip: %v", err)
	}
}
