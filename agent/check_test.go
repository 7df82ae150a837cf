package agent

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/pgnode"
)

func TestEvaluateCheck(t *testing.T) {
	now := time.Now()
	lag := func(n int64) *int64 { return &n }
	primary := func() checkInput {
		return checkInput{
			Now:         now,
			Health:      api.HealthInfo{Name: "n1", Role: "primary", PGRunning: true, Primary: true, Raft: "Leader", Leader: "n1", LoopAt: now, Timeline: 2},
			Initialized: true,
			Writable:    []string{"n1"},
			Replicas:    []string{"n2", "n3"},
			Inspect: &pgnode.Inspection{MaxConnections: 100, Connections: 10,
				Slots:   []pgnode.SlotInfo{{Name: "pgha_n2", Active: true}, {Name: "pgha_n3", Active: true}},
				Senders: []pgnode.SenderInfo{{Name: "n2", State: "streaming"}, {Name: "n3", State: "streaming"}}},
		}
	}
	replica := func() checkInput {
		return checkInput{
			Now:         now,
			Health:      api.HealthInfo{Name: "n2", Role: "replica", PGRunning: true, InRecovery: true, Raft: "Follower", Leader: "n1", LoopAt: now, LagBytes: lag(1000)},
			RaftContact: 50 * time.Millisecond,
			Initialized: true,
			Writable:    []string{"n1"},
			Inspect:     &pgnode.Inspection{InRecovery: true, MaxConnections: 100, Connections: 3, Receiver: "streaming", ReceiverHost: "127.0.0.1"},
		}
	}
	tests := []struct {
		name      string
		in        func() checkInput
		status    string
		component string // the component that decides, for non-OK
		contains  string
	}{
		{"healthy primary", primary, api.CheckOK, "", ""},
		{"healthy replica", replica, api.CheckOK, "", ""},
		{"split brain", func() checkInput { in := primary(); in.Writable = []string{"n1", "n2"}; return in },
			api.CheckCritical, "writable", "n1, n2"},
		{"no writable member", func() checkInput { in := replica(); in.Writable = nil; return in },
			api.CheckCritical, "writable", "no member"},
		{"inactive slot", func() checkInput {
			in := primary()
			in.Inspect.Slots[1] = pgnode.SlotInfo{Name: "pgha_n3", RetainedBytes: 5 << 20}
			in.Inspect.Senders = in.Inspect.Senders[:1]
			return in
		}, api.CheckWarning, "slots", "pgha_n3 (retains 5.0 MB)"},
		{"lost slot", func() checkInput { in := primary(); in.Inspect.Slots[0].WALStatus = "lost"; return in },
			api.CheckCritical, "slots", "pgha_n2"},
		{"no replica streams", func() checkInput { in := primary(); in.Inspect.Senders = nil; return in },
			api.CheckCritical, "wal_senders", "n2, n3"},
		{"sync standby missing", func() checkInput {
			in := primary()
			in.SyncMode, in.SyncSet = true, []string{"n3"}
			in.Inspect.Senders = in.Inspect.Senders[:1]
			return in
		}, api.CheckCritical, "synchronous", "n3"},
		{"connections warning", func() checkInput { in := primary(); in.Inspect.Connections = 85; return in },
			api.CheckWarning, "connections", "85 of 100"},
		{"connections critical", func() checkInput { in := primary(); in.Inspect.Connections = 95; return in },
			api.CheckCritical, "connections", "95%"},
		{"lag warning", func() checkInput { in := replica(); in.Health.LagBytes = lag(20 << 20); return in },
			api.CheckWarning, "lag", "20.0 MB"},
		{"lag critical", func() checkInput { in := replica(); in.Health.LagBytes = lag(100 << 20); return in },
			api.CheckCritical, "lag", "critical at 64.0 MB"},
		{"not streaming", func() checkInput { in := replica(); in.Inspect.Receiver = ""; return in },
			api.CheckCritical, "wal_receiver", "no WAL receiver"},
		{"postgres down", func() checkInput { in := replica(); in.Health.PGRunning = false; in.Inspect = nil; return in },
			api.CheckCritical, "postgresql", "not running"},
		{"postgres hung", func() checkInput {
			in := primary()
			in.Health.State = cluster.StateUnresponsive
			in.Inspect = nil
			return in
		}, api.CheckCritical, "postgresql", "does not answer"},
		{"stale loop", func() checkInput { in := replica(); in.Health.LoopAt = now.Add(-time.Minute); return in },
			api.CheckCritical, "agent", "last ran 1m0s ago"},
		{"no leader", func() checkInput { in := replica(); in.Health.Leader = ""; return in },
			api.CheckCritical, "raft", "no Raft leader"},
		{"leader silent", func() checkInput { in := replica(); in.RaftContact = 5 * time.Second; return in },
			api.CheckWarning, "raft", "5s ago"},
		{"witness", func() checkInput {
			in := replica()
			in.Witness, in.Inspect = true, nil
			in.Health.Role, in.Health.PGRunning = "witness", false
			return in
		}, api.CheckOK, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := evaluateCheck(tt.in(), api.DefaultCheckOptions())
			if res.Status != tt.status {
				t.Fatalf("status %s, want %s: %+v", res.Status, tt.status, res.Checks)
			}
			if tt.component == "" {
				return
			}
			for _, c := range res.Checks {
				if c.Component == tt.component {
					if c.Status != tt.status || !strings.Contains(c.Message, tt.contains) {
						t.Errorf("%s: %s %q, want %s containing %q", c.Component, c.Status, c.Message, tt.status, tt.contains)
					}
					return
				}
			}
			t.Errorf("no %s check in %+v", tt.component, res.Checks)
		})
	}
}

func TestSettleWritable(t *testing.T) {
	var logged strings.Builder
	a := newHALoop(&Agent{log: slog.New(slog.NewTextHandler(&logged, nil))})
	t0 := time.Now()
	a.settleWritable(t0, []string{"n1"})
	// A failover: the old primary's stale gossip and the new primary
	// overlap for a moment. Not reported.
	a.settleWritable(t0.Add(time.Second), []string{"n1", "n2"})
	a.settleWritable(t0.Add(2*time.Second), []string{"n1", "n2"})
	if got := a.status.get().Writable; len(got) != 1 || got[0] != "n1" {
		t.Fatalf("transient overlap reported: %v", got)
	}
	a.settleWritable(t0.Add(2500*time.Millisecond), []string{"n2"})
	if got := a.status.get().Writable; len(got) != 1 || got[0] != "n2" {
		t.Fatalf("after the overlap: %v", got)
	}
	if strings.Contains(logged.String(), "more than one") {
		t.Fatalf("transient overlap logged as an error: %s", logged.String())
	}
	// Two writable members for longer than the grace: reported, once.
	a.settleWritable(t0.Add(3*time.Second), []string{"n1", "n2"})
	a.settleWritable(t0.Add(6*time.Second), []string{"n1", "n2"})
	a.settleWritable(t0.Add(7*time.Second), []string{"n1", "n2"})
	if got := a.status.get().Writable; len(got) != 2 {
		t.Fatalf("lasting split brain not reported: %v", got)
	}
	if n := strings.Count(logged.String(), "more than one member"); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, logged.String())
	}
}
