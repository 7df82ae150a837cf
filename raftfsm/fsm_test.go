package raftfsm_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/pgha/pgha/raftfsm"
)

var t0 = time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)

// apply encodes payload and applies it as log entry idx.
func apply(tb testing.TB, f *raftfsm.FSM, idx uint64, payload any) error {
	tb.Helper()
	data, err := raftfsm.Encode(payload)
	if err != nil {
		tb.Fatalf("encode %T: %v", payload, err)
	}
	res, ok := f.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: data}).(raftfsm.ApplyResult)
	if !ok {
		tb.Fatalf("apply returned %T", res)
	}
	return res.Err
}

func mustApply(tb testing.TB, f *raftfsm.FSM, idx uint64, payload any) {
	tb.Helper()
	if err := apply(tb, f, idx, payload); err != nil {
		tb.Fatalf("apply %T: %v", payload, err)
	}
}

func member(name string) raftfsm.Member {
	return raftfsm.Member{Name: name, RaftAddr: "127.0.0.1:83" + name[1:], PGAddr: "127.0.0.1:54" + name[1:], JoinedAt: t0}
}

// initialised returns an FSM with three members and n1 as primary.
func initialised(t *testing.T) *raftfsm.FSM {
	t.Helper()
	f := raftfsm.NewFSM()
	mustApply(t, f, 1, raftfsm.UpsertMember{Member: member("n1")})
	mustApply(t, f, 2, raftfsm.UpsertMember{Member: member("n2")})
	mustApply(t, f, 3, raftfsm.UpsertMember{Member: member("n3")})
	mustApply(t, f, 4, raftfsm.InitCluster{ClusterID: "abc", Member: "n1", At: t0})
	mustApply(t, f, 5, raftfsm.SetSystemID{SystemID: 7312345678901234567, Member: "n1", Timeline: 1})
	return f
}

func TestInitialisationFlow(t *testing.T) {
	f := initialised(t)
	s := f.State()
	if s.Primary == nil || s.Primary.Member != "n1" || s.Primary.Epoch != 1 || s.Primary.Initializing {
		t.Fatalf("primary = %+v, want n1 epoch 1 initialised", s.Primary)
	}
	if got, want := s.SystemID, uint64(7312345678901234567); got != want {
		t.Fatalf("system id = %d, want %d", got, want)
	}
	if len(s.History) != 1 || s.History[0].Reason != "bootstrap" {
		t.Fatalf("history = %+v, want one bootstrap entry", s.History)
	}
	// A second claim must fail: exactly one node initialises.
	err := apply(t, f, 6, raftfsm.InitCluster{ClusterID: "def", Member: "n2", At: t0})
	if !errors.Is(err, raftfsm.ErrRejected) {
		t.Fatalf("second init: err = %v, want ErrRejected", err)
	}
	// Another system id must be refused.
	err = apply(t, f, 7, raftfsm.SetSystemID{SystemID: 1, Member: "n1"})
	if !errors.Is(err, raftfsm.ErrRejected) {
		t.Fatalf("other system id: err = %v, want ErrRejected", err)
	}
	if f.State().SystemID != 7312345678901234567 {
		t.Fatal("rejected command changed the state")
	}
}

func TestInitClaimNeedsMember(t *testing.T) {
	f := raftfsm.NewFSM()
	err := apply(t, f, 1, raftfsm.InitCluster{ClusterID: "abc", Member: "n1", At: t0})
	if !errors.Is(err, raftfsm.ErrRejected) {
		t.Fatalf("init by non-member: err = %v, want ErrRejected", err)
	}
}

func TestSetPrimaryIsCompareAndSwap(t *testing.T) {
	f := initialised(t)
	mustApply(t, f, 10, raftfsm.SetPrimary{Member: "n2", ExpectEpoch: 1, Timeline: 2, Reason: "failover", At: t0})
	s := f.State()
	if s.Primary.Member != "n2" || s.Primary.Epoch != 2 || s.Primary.Timeline != 2 {
		t.Fatalf("primary = %+v", s.Primary)
	}
	// A stale proposer (still thinks epoch 1) must lose.
	err := apply(t, f, 11, raftfsm.SetPrimary{Member: "n3", ExpectEpoch: 1, Reason: "failover", At: t0})
	if !errors.Is(err, raftfsm.ErrRejected) {
		t.Fatalf("stale set_primary: err = %v, want ErrRejected", err)
	}
	if h := f.State().History; len(h) != 2 || h[1].Old != "n1" || h[1].New != "n2" {
		t.Fatalf("history = %+v", h)
	}
}

func TestPrimaryLSNOnlyFromPrimaryAndMonotonic(t *testing.T) {
	f := initialised(t)
	mustApply(t, f, 10, raftfsm.SetPrimaryLSN{Member: "n1", Epoch: 1, LSN: 1000, Timeline: 1, At: t0})
	if err := apply(t, f, 11, raftfsm.SetPrimaryLSN{Member: "n2", Epoch: 1, LSN: 2000, Timeline: 1, At: t0}); !errors.Is(err, raftfsm.ErrRejected) {
		t.Fatalf("lsn from non-primary: err = %v", err)
	}
	if err := apply(t, f, 12, raftfsm.SetPrimaryLSN{Member: "n1", Epoch: 1, LSN: 500, Timeline: 1, At: t0}); !errors.Is(err, raftfsm.ErrRejected) {
		t.Fatalf("lsn going backwards: err = %v", err)
	}
	if got := f.State().PrimaryLSN.LSN; got != 1000 {
		t.Fatalf("lsn = %d, want 1000", got)
	}
}

func TestRemoveMember(t *testing.T) {
	f := initialised(t)
	if err := apply(t, f, 10, raftfsm.RemoveMember{Name: "n1"}); !errors.Is(err, raftfsm.ErrRejected) {
		t.Fatalf("removing the primary: err = %v, want ErrRejected", err)
	}
	mustApply(t, f, 11, raftfsm.RemoveMember{Name: "n3"})
	mustApply(t, f, 12, raftfsm.RemoveMember{Name: "n3"}) // idempotent
	if got, want := f.State().MemberNames(), []string{"n1", "n2"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("members = %v, want %v", got, want)
	}
}

func TestUpsertKeepsJoinTime(t *testing.T) {
	f := initialised(t)
	m := member("n2")
	m.JoinedAt = t0.Add(time.Hour)
	m.APIAddr = "127.0.0.1:8009"
	mustApply(t, f, 10, raftfsm.UpsertMember{Member: m})
	got := f.State().Members["n2"]
	if !got.JoinedAt.Equal(t0) || got.APIAddr != "127.0.0.1:8009" {
		t.Fatalf("member = %+v", got)
	}
}

func TestMalformedAndUnknownCommandsRejected(t *testing.T) {
	f := initialised(t)
	before := f.State()
	cases := map[string][]byte{
		"not json":         []byte("{"),
		"empty":            nil,
		"no type":          []byte(`{"version":1}`),
		"unknown type":     []byte(`{"type":"make_coffee","version":1,"payload":{}}`),
		"future version":   []byte(`{"type":"set_paused","version":99,"payload":{"paused":true}}`),
		"unknown field":    []byte(`{"type":"set_paused","version":1,"payload":{"paused":true,"extra":1}}`),
		"missing payload":  []byte(`{"type":"set_paused","version":1}`),
		"wrong field type": []byte(`{"type":"set_paused","version":1,"payload":{"paused":"yes"}}`),
		"trailing data":    []byte(`{"type":"noop","version":1} {}`),
		"bad member name":  []byte(`{"type":"upsert_member","version":1,"payload":{"member":{"name":"Bad Name","raft_addr":"x:1"}}}`),
		"negative lag":     []byte(`{"type":"set_config","version":1,"payload":{"config":{"maximum_lag_on_failover":-1}}}`),
	}
	idx := uint64(100)
	for name, data := range cases {
		idx++
		res := f.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: data}).(raftfsm.ApplyResult)
		if res.Err == nil {
			t.Errorf("%s: accepted, want an error", name)
		}
	}
	if !reflect.DeepEqual(before, f.State()) {
		t.Fatal("rejected commands changed the state")
	}
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	f := initialised(t)
	mustApply(t, f, 10, raftfsm.SetPrimaryLSN{Member: "n1", Epoch: 1, LSN: 1 << 40, Timeline: 1, At: t0})
	mustApply(t, f, 11, raftfsm.SetConfig{Config: raftfsm.DynamicConfig{MaximumLagOnFailover: 42, SynchronousNodeCount: 1, Parameters: map[string]string{"work_mem": "8MB"}}})
	mustApply(t, f, 12, raftfsm.SetPaused{Paused: true})
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	g := raftfsm.NewFSM()
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	want, got := f.State(), g.State()
	wj, _ := json.Marshal(want)
	gj, _ := json.Marshal(got)
	if !bytes.Equal(wj, gj) {
		t.Fatalf("restored state differs:\n got %s\nwant %s", gj, wj)
	}
	if err := g.Restore(io.NopCloser(bytes.NewReader([]byte("garbage")))); err == nil {
		t.Fatal("restore of garbage succeeded")
	}
}

func TestStateIsACopy(t *testing.T) {
	f := initialised(t)
	s := f.State()
	s.Members["n9"] = member("n9")
	s.Primary.Member = "n9"
	if _, ok := f.State().Members["n9"]; ok || f.State().Primary.Member != "n1" {
		t.Fatal("modifying a returned state changed the FSM")
	}
}

func TestChangedIsCoalescedAndNonBlocking(t *testing.T) {
	f := raftfsm.NewFSM()
	for i := uint64(1); i <= 50; i++ {
		mustApply(t, f, i, raftfsm.SetPaused{Paused: i%2 == 0})
	}
	select {
	case <-f.Changed():
	default:
		t.Fatal("no change notification")
	}
	select {
	case <-f.Changed():
		t.Fatal("notifications were not coalesced")
	default:
	}
}

func FuzzApplyCommand(f *testing.F) {
	for _, p := range []any{
		raftfsm.UpsertMember{Member: member("n1")},
		raftfsm.InitCluster{ClusterID: "x", Member: "n1", At: t0},
		raftfsm.SetSystemID{SystemID: 5, Member: "n1"},
		raftfsm.SetPrimary{Member: "n2", ExpectEpoch: 1, At: t0},
		raftfsm.SetPrimaryLSN{Member: "n1", Epoch: 1, LSN: 9},
		raftfsm.SetConfig{Config: raftfsm.DefaultDynamicConfig()},
		raftfsm.SetPaused{Paused: true},
		raftfsm.RemoveMember{Name: "n2"},
	} {
		b, _ := raftfsm.Encode(p)
		f.Add(b)
	}
	f.Add([]byte(`{"type":"noop","version":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := raftfsm.State{}
		s.Members = map[string]raftfsm.Member{"n1": member("n1"), "n2": member("n2")}
		before, _ := json.Marshal(s)
		if err := raftfsm.ApplyCommand(&s, data); err != nil {
			after, _ := json.Marshal(s)
			if !bytes.Equal(before, after) {
				t.Fatalf("failed command %q changed the state", data)
			}
		}
	})
}

type memSink struct{ bytes.Buffer }

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Cancel() error { return nil }
func (m *memSink) Close() error  { return nil }
