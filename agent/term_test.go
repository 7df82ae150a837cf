package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/agent/decide"
	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

func threeMembers() raftfsm.State {
	st := raftfsm.State{SystemID: 42, Members: map[string]raftfsm.Member{}, Config: raftfsm.DefaultDynamicConfig()}
	for _, n := range []string{"n1", "n2", "n3"} {
		st.Members[n] = raftfsm.Member{Name: n, RaftAddr: "r-" + n, GossipAddr: "g-" + n, APIAddr: "api-" + n, PGAddr: "pg-" + n}
	}
	st.Primary = &raftfsm.PrimaryRecord{Member: "n1", Epoch: 2, Timeline: 1}
	return st
}

func testTerm(r *fakeRaft, allowed func(string, membership.Member) bool) *leaderTerm {
	return &leaderTerm{number: 7, self: "n1", log: slog.New(slog.NewTextHandler(io.Discard, nil)), raft: r,
		allowed: allowed, nonvoters: map[string]time.Time{}, refused: map[string]string{}, failed: map[string]*failedTransfers{}}
}

func byName(ms ...membership.Member) map[string]membership.Member {
	out := map[string]membership.Member{}
	for _, m := range ms {
		out[m.Name] = m
	}
	return out
}

func allowAll(string, membership.Member) bool { return true }

func TestReconcileAddsJoinerAsNonvoterThenVoter(t *testing.T) {
	r := newFakeRaft(threeMembers(), []string{"n1", "n2", "n3"})
	term := testTerm(r, allowAll)
	joiner := gossipMember("n4", func(m *membership.Meta) { m.HasRaft, m.Join = false, true })
	g := byName(gossipMember("n1", nil), gossipMember("n2", nil), gossipMember("n3", nil), joiner)
	now := time.Now()

	servers, _ := r.Servers()
	term.reconcile(g, servers, now)
	if got := r.log(); !slices.Equal(got, []string{"add-nonvoter n4", "apply raftfsm.UpsertMember"}) {
		t.Fatalf("first round: %v", got)
	}
	if m, ok := r.ClusterState().Members["n4"]; !ok || m.APIAddr != "api-n4" || m.PGAddr != "pg-n4" {
		t.Fatalf("n4 not recorded with its addresses: %+v", m)
	}

	// Not promoted until it has Raft state and has caught up for a while.
	joiner.Meta.HasRaft, joiner.Meta.Join = true, false
	g["n4"] = joiner
	servers, _ = r.Servers()
	term.reconcile(g, servers, now.Add(time.Second))
	if got := r.log(); len(got) != 2 {
		t.Fatalf("promoted too early: %v", got)
	}
	term.reconcile(g, servers, now.Add(nonvoterSettle+time.Second))
	if got := r.log(); got[len(got)-1] != "add-voter n4" {
		t.Fatalf("not promoted after settling: %v", got)
	}
}

func TestReconcileRefusesJoinWithoutProofOnce(t *testing.T) {
	r := newFakeRaft(threeMembers(), []string{"n1", "n2", "n3"})
	term := testTerm(r, func(name string, _ membership.Member) bool { return name != "n4" })
	g := byName(gossipMember("n4", func(m *membership.Meta) { m.HasRaft, m.Join, m.JoinProof = false, true, "forged" }))
	servers, _ := r.Servers()
	for range 3 {
		term.reconcile(g, servers, time.Now())
	}
	if got := r.log(); len(got) != 0 {
		t.Fatalf("a join without proof reached Raft: %v", got)
	}
	if !strings.HasPrefix(term.refused["n4"], "forged|") {
		t.Fatalf("refusal not remembered (it would be logged every round): %v", term.refused)
	}
}

func TestReconcileLogsAFailedAddOncePerReason(t *testing.T) {
	r := newFakeRaft(threeMembers(), []string{"n1", "n2", "n3"})
	r.failAdd = errors.New("tls: unknown certificate authority")
	term := testTerm(r, allowAll)
	g := byName(gossipMember("n4", func(m *membership.Meta) { m.HasRaft, m.Join = false, true }))
	servers, _ := r.Servers()
	term.reconcile(g, servers, time.Now())
	term.reconcile(g, servers, time.Now())
	if term.refused["n4"] != r.failAdd.Error() {
		t.Fatalf("failure not remembered: %v", term.refused)
	}
	if _, ok := r.ClusterState().Members["n4"]; ok {
		t.Fatal("a member Raft refused was recorded in the FSM")
	}
}

func TestReconcileNeverRemovesAndKeepsAddressesCurrent(t *testing.T) {
	r := newFakeRaft(threeMembers(), []string{"n1", "n2", "n3"})
	term := testTerm(r, allowAll)
	moved := gossipMember("n2", func(m *membership.Meta) { m.PG = "pg-n2-new" })
	dead := gossipMember("n3", nil)
	dead.Alive = false
	// n1 unchanged, n2 moved, n3 dead (its gossip stale): only n2 is written.
	servers, _ := r.Servers()
	term.reconcile(byName(gossipMember("n1", nil), moved, dead), servers, time.Now())
	if got := r.log(); !slices.Equal(got, []string{"apply raftfsm.UpsertMember"}) {
		t.Fatalf("calls %v, want one upsert (n2)", got)
	}
	st := r.ClusterState()
	if st.Members["n2"].PGAddr != "pg-n2-new" {
		t.Fatalf("n2's new address not recorded: %+v", st.Members["n2"])
	}
	if _, ok := st.Members["n3"]; !ok {
		t.Fatal("a member whose gossip went stale was removed")
	}
	// Gone from gossip entirely: still not removed.
	term.reconcile(byName(gossipMember("n1", nil)), servers, time.Now())
	if len(r.ClusterState().Members) != 3 {
		t.Fatal("reconcile removed a member")
	}
}

func TestNewTermForgetsTheOldTermsBookkeeping(t *testing.T) {
	r := newFakeRaft(threeMembers(), []string{"n1", "n2", "n3"}, "n4")
	a := testAgent(r, &fakeGossip{})
	l := a.loop
	t1 := l.termFor(7)
	t1.nonvoters["n4"] = time.Now().Add(-time.Hour)
	t1.lastTransfer = time.Now()
	t1.sync = syncAdding{name: "n2", target: 5, since: time.Now()}
	l.term = t1
	if l.termFor(7) != t1 {
		t.Fatal("the same term got a new object")
	}
	l.term = l.termFor(0)
	if l.term != nil {
		t.Fatal("a term survived the loss of leadership")
	}
	t2 := l.termFor(8)
	if len(t2.nonvoters) != 0 || !t2.lastTransfer.IsZero() || t2.sync.name != "" {
		t.Fatalf("new term inherited bookkeeping: %+v", t2)
	}
}

func TestTransferOnlyToAVoter(t *testing.T) {
	r := newFakeRaft(threeMembers(), []string{"n1", "n2"}, "n3")
	term := testTerm(r, allowAll)
	if err := term.transferTo("n3"); err == nil || !strings.Contains(err.Error(), "not a voter") {
		t.Fatalf("transfer to a non-voter: %v", err)
	}
	if err := term.transferTo("n9"); err == nil {
		t.Fatal("transfer to a stranger succeeded")
	}
	now := time.Now()
	if err := term.transfer("n2", "test", now); err != nil {
		t.Fatal(err)
	}
	if err := term.transfer("n2", "test", now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := r.log(); !slices.Equal(got, []string{"transfer n2"}) {
		t.Fatalf("transfers %v: want one (at most every %s)", got, transferEvery)
	}
}

// TestHolderThatCannotLeadCountsAsLost: a record holder whose agent
// answers but which never wins the leadership handed to it (a one-way
// partition, its Raft port blocked) is treated as lost after
// maxFailedTransfers, instead of being handed leadership forever.
func TestHolderThatCannotLeadCountsAsLost(t *testing.T) {
	r := newFakeRaft(threeMembers(), []string{"n1", "n2", "n3"})
	r.transferErr = errors.New("n1 did not take leadership")
	term := testTerm(r, allowAll)
	term.self = "n2"
	term.ask = func(context.Context, string) (api.HealthInfo, error) { return api.HealthInfo{Name: "n1"}, nil }
	st := threeMembers()
	now := time.Now()
	for i := range maxFailedTransfers {
		if got := term.askPrimary(context.Background(), st); got != decide.OldPrimaryAlive {
			t.Fatalf("after %d failed transfers: %v, want alive", i, got)
		}
		if err := term.transfer("n1", "test", now.Add(time.Duration(i)*transferEvery)); err == nil {
			t.Fatal("the failing transfer reported success")
		}
	}
	if got := term.askPrimary(context.Background(), st); got != decide.OldPrimarySilent {
		t.Fatalf("after %d failed transfers: %v, want the holder treated as lost", maxFailedTransfers, got)
	}
	// A transfer that works (to anyone) resets that target's count.
	r.transferErr = nil
	if err := term.transfer("n1", "test", now.Add(10*transferEvery)); err != nil {
		t.Fatal(err)
	}
	if got := term.askPrimary(context.Background(), st); got != decide.OldPrimaryAlive {
		t.Fatalf("after a transfer that worked: %v, want alive", got)
	}
}

// TestSyncStandbyAddedOnlyWhenItHoldsEveryCommit: a standby enters the
// committed synchronous set only after it showed 'sync' and then flushed
// up to the primary's position at that moment, not the position when it
// was picked.
func TestSyncStandbyAddedOnlyWhenItHoldsEveryCommit(t *testing.T) {
	st := threeMembers()
	st.Config.SynchronousMode = true
	r := newFakeRaft(st, []string{"n1", "n2", "n3"})
	term := testTerm(r, allowAll)
	g := byName(gossipMember("n2", nil))
	rep := func(state string, flush uint64) []pgnode.ReplicaInfo {
		return []pgnode.ReplicaInfo{{ApplicationName: "n2", State: "streaming", SyncState: state, FlushLSN: flush}}
	}
	now := time.Now()
	step := func(replicas []pgnode.ReplicaInfo, wal uint64) {
		t.Helper()
		if err := term.manageSync(r.ClusterState(), g, replicas, wal, now); err != nil {
			t.Fatal(err)
		}
	}
	step(rep("async", 900), 1000) // picked; synchronous_standby_names changes next round
	if term.sync.name != "n2" || len(r.ClusterState().SyncSet) != 0 {
		t.Fatalf("after picking: %+v, set %v", term.sync, r.ClusterState().SyncSet)
	}
	step(rep("async", 1500), 2000) // not sync yet, though past the picking position
	step(rep("sync", 2500), 3000)  // sync now: commits after 3000 wait for it
	if len(r.ClusterState().SyncSet) != 0 || term.sync.target != 3000 {
		t.Fatalf("committed before it flushed what was acknowledged without it: %+v, set %v", term.sync, r.ClusterState().SyncSet)
	}
	step(rep("sync", 2900), 3100)
	if len(r.ClusterState().SyncSet) != 0 {
		t.Fatal("committed before reaching the target")
	}
	step(rep("sync", 3000), 3200)
	if got := r.ClusterState().SyncSet; !slices.Equal(got, []string{"n2"}) {
		t.Fatalf("set %v, want [n2]", got)
	}
}

// TestUnresponsiveSyncStandbyLeavesTheSet: a synchronous standby whose
// agent reports its PostgreSQL unresponsive (hung: the walreceiver's
// connection stays open, pg_stat_replication still says streaming while
// every commit waits) is dropped from the committed set.
func TestUnresponsiveSyncStandbyLeavesTheSet(t *testing.T) {
	st := threeMembers()
	st.Config.SynchronousMode = true
	st.SyncSet = []string{"n2"}
	r := newFakeRaft(st, []string{"n1", "n2", "n3"})
	term := testTerm(r, allowAll)
	hung := gossipMember("n2", nil)
	hung.Meta.PGState = cluster.StateUnresponsive
	replicas := []pgnode.ReplicaInfo{{ApplicationName: "n2", State: "streaming", SyncState: "sync", FlushLSN: 10}}
	if err := term.manageSync(r.ClusterState(), byName(hung), replicas, 10, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := r.ClusterState().SyncSet; len(got) != 0 {
		t.Fatalf("set %v: the hung standby is still in it", got)
	}
}
