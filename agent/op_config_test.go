package agent

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/pgha/pgha/raftfsm"
)

func TestMergeConfig(t *testing.T) {
	base := raftfsm.State{Config: raftfsm.DynamicConfig{MaximumLagOnFailover: 1 << 20, SynchronousNodeCount: 1, Parameters: map[string]string{"work_mem": "4MB", "keep": "1"}}}
	patch := func(s string) map[string]json.RawMessage {
		var p map[string]json.RawMessage
		if err := json.Unmarshal([]byte(s), &p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg, paused, err := mergeConfig(base, patch(`{"synchronous_mode": true, "maximum_lag_on_failover": "16MB", "pause": true,
		"postgresql": {"parameters": {"work_mem": "8MB", "keep": null, "max_connections": 50, "hot_standby_feedback": true}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.SynchronousMode || cfg.MaximumLagOnFailover != 16<<20 || !paused {
		t.Fatalf("merged = %+v paused=%v", cfg, paused)
	}
	want := map[string]string{"work_mem": "8MB", "max_connections": "50", "hot_standby_feedback": "on"}
	if len(cfg.Parameters) != len(want) {
		t.Fatalf("parameters = %v, want %v", cfg.Parameters, want)
	}
	for k, v := range want {
		if cfg.Parameters[k] != v {
			t.Fatalf("parameters = %v, want %v", cfg.Parameters, want)
		}
	}
	if base.Config.Parameters["work_mem"] != "4MB" {
		t.Fatal("merge modified the input state")
	}
	for _, bad := range []struct{ patch, says string }{
		{`{"synchronous_mod": true}`, "unknown key"},
		{`{"synchronous_mode": "yes"}`, "synchronous_mode"},
		{`{"synchronous_node_count": 0}`, "at least 1"},
		{`{"maximum_lag_on_failover": "lots"}`, "maximum_lag_on_failover"},
		{`{"postgresql": {"listen": "x"}}`, "postgresql.listen"},
		{`{"postgresql": {"parameters": {"work_mem": [1]}}}`, "postgresql.parameters.work_mem"},
		// What the renderer would skip is refused, not stored for nothing.
		{`{"postgresql": {"parameters": {"ssl": "off"}}}`, `"ssl": TLS is set per node`},
		{`{"postgresql": {"parameters": {"hba_file": "/tmp/x"}}}`, `"hba_file": managed by pgha`},
		{`{"postgresql": {"parameters": {"listen_addresses": "*"}}}`, `"listen_addresses": managed by pgha`},
		{`{"postgresql": {"parameters": {"Port": "5433"}}}`, `"Port"`},
		{`{"postgresql": {"parameters": {"work_mem": "4MB\nssl = off"}}}`, `"work_mem": value must not contain line breaks`},
		{`{"postgresql": {"parameters": {"work_mem\nssl": "off"}}}`, "invalid name"},
		{`{"postgresql": {"parameters": {"synchronous_standby_names": "*"}}}`, "use synchronous_mode"},
		{`{"postgresql": {"parameters": {"wal_level": "minimal"}}}`, "replica or logical"},
		{`{"postgresql": {"parameters": {"ssl": "off", "hba_file": "x"}}}`, `"hba_file": managed by pgha and cannot be set; "ssl"`},
	} {
		if _, _, err := mergeConfig(base, patch(bad.patch)); err == nil || !strings.Contains(err.Error(), bad.says) {
			t.Errorf("patch %s: err = %v, want one mentioning %q", bad.patch, err, bad.says)
		}
	}
}

func TestSyncNames(t *testing.T) {
	cfg := raftfsm.DynamicConfig{SynchronousMode: true}
	for _, c := range []struct {
		set    []string
		adding string
		strict bool
		want   string
	}{
		{nil, "", false, ""},
		{nil, "", true, "*"},
		{nil, "n2", false, `FIRST 1 ("n2")`},
		{[]string{"n2"}, "n3", false, `FIRST 2 ("n2","n3")`},
		{[]string{"n2"}, "", true, `FIRST 1 ("n2")`},
	} {
		cfg.SynchronousModeStrict = c.strict
		if got := syncNamesFor(cfg, c.set, c.adding); got != c.want {
			t.Errorf("syncNamesFor(%v, %q, strict=%v) = %q, want %q", c.set, c.adding, c.strict, got, c.want)
		}
	}
}
