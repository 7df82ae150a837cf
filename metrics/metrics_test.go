package metrics_test

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/metrics"
	"github.com/pgha/pgha/proxy"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

type fixed metrics.Snapshot

func (f fixed) MetricsSnapshot() metrics.Snapshot { return metrics.Snapshot(f) }

func TestMetricsParse(t *testing.T) {
	lag := int64(4096)
	src := fixed{
		Name: "n2", Cluster: "c", Role: "replica", PGRunning: true, SyncStandby: true, Timeline: 3,
		ReceiveLSN: 0x3000060, ReplayLSN: 0x3000000, LagBytes: &lag, ReplayLagSeconds: 0.5,
		RaftState: "Follower", RaftTerm: 7, RaftLastIndex: 42, RaftCommit: 42, RaftApplied: 41,
		RaftLastContact: 80 * time.Millisecond, RaftVoters: 3,
		PrimaryChanges:  map[string]int{"failover": 2, "switchover": 1},
		WritableMembers: 1, MembersAlive: 2, Members: 3,
		Proxy: proxy.Stats{
			Write: proxy.PortStats{Listen: "127.0.0.1:5000", Current: 2, Total: 10, HeldTotal: 1, HoldSecondsTotal: 0.25,
				Backends: map[string]proxy.BackendStats{"n1": {Addr: "127.0.0.1:5432", Current: 2, Total: 10, BytesIn: 100, BytesOut: 900}}},
			Read:  proxy.PortStats{Backends: map[string]proxy.BackendStats{}}, // disabled port
			Loops: []proxy.LoopStats{{BusySeconds: 1.5, Sessions: 2}, {BusySeconds: 0.5}},
		},
	}
	reg := metrics.New(src)
	reg.LoopDuration.Observe(0.02)
	rec := httptest.NewRecorder()
	reg.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("status %d", rec.Code)
	}
	body, _ := io.ReadAll(rec.Body)
	p := expfmt.NewTextParser(model.LegacyValidation)
	families, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("metrics do not parse: %v\n%s", err, body)
	}
	value := func(name string, labels map[string]string) (float64, bool) {
		mf, ok := families[name]
		if !ok {
			return 0, false
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue next
				}
			}
			switch {
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
		return 0, false
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"pgha_replica", nil, 1},
		{"pgha_primary", nil, 0},
		{"pgha_role", map[string]string{"role": "replica"}, 1},
		{"pgha_role", map[string]string{"role": "primary"}, 0},
		{"pgha_sync_standby", nil, 1},
		{"pgha_postgres_up", nil, 1},
		{"pgha_timeline", nil, 3},
		{"pgha_wal_received_lsn_bytes", nil, 0x3000060},
		{"pgha_replication_lag_bytes", nil, 4096},
		{"pgha_replication_lag_seconds", nil, 0.5},
		{"pgha_raft_state", map[string]string{"state": "Follower"}, 1},
		{"pgha_raft_term", nil, 7},
		{"pgha_raft_last_contact_seconds", nil, 0.08},
		{"pgha_history_primary_changes", map[string]string{"reason": "failover"}, 2},
		{"pgha_writable_members", nil, 1},
		{"pgha_members", map[string]string{"state": "unreachable"}, 1},
		{"pgha_proxy_connections_total", map[string]string{"port": "write"}, 10},
		{"pgha_proxy_hold_seconds_total", map[string]string{"port": "write"}, 0.25},
		{"pgha_proxy_backend_bytes_total", map[string]string{"port": "write", "backend": "n1", "direction": "out"}, 900},
		{"pgha_ha_loop_duration_seconds", nil, 1},
		{"pgha_proxy_loop_busy_seconds_total", map[string]string{"loop": "0"}, 1.5},
		{"pgha_proxy_loop_busy_seconds_total", map[string]string{"loop": "1"}, 0.5},
		{"pgha_proxy_loop_sessions", map[string]string{"loop": "0"}, 2},
	}
	for _, c := range checks {
		got, ok := value(c.name, c.labels)
		if !ok {
			t.Errorf("%s%v missing", c.name, c.labels)
			continue
		}
		if got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if _, ok := value("pgha_proxy_connections", map[string]string{"port": "read"}); ok {
		t.Error("a disabled port must not be exported")
	}
	if _, ok := families["go_goroutines"]; !ok {
		t.Error("Go runtime metrics missing")
	}
	for name := range families {
		if !model.LegacyValidation.IsValidMetricName(name) {
			t.Errorf("invalid metric name %q", name)
		}
	}
}
