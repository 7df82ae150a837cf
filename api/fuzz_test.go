package api

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// nopBackend accepts everything: the fuzz target checks the server's own
// handling of request bodies and queries, not an agent.
type nopBackend struct{}

func (nopBackend) Cluster() ClusterInfo { return ClusterInfo{} }
func (nopBackend) Health() HealthInfo {
	return HealthInfo{Role: "replica", PGRunning: true, InRecovery: true}
}
func (nopBackend) Join(context.Context, JoinRequest) error         { return nil }
func (nopBackend) Leave(context.Context) error                     { return nil }
func (nopBackend) Remove(context.Context, RemoveRequest) error     { return nil }
func (nopBackend) CancelSwitchover(context.Context) error          { return nil }
func (nopBackend) SetPaused(context.Context, bool) error           { return nil }
func (nopBackend) History() []HistoryEntry                         { return nil }
func (nopBackend) Config() DynamicConfig                           { return DynamicConfig{} }
func (nopBackend) Restart(context.Context) error                   { return nil }
func (nopBackend) Reload(context.Context) error                    { return nil }
func (nopBackend) Reinitialize(context.Context) error              { return nil }
func (nopBackend) Check(context.Context, CheckOptions) CheckResult { return CheckResult{} }
func (nopBackend) ProxyStats() any                                 { return nil }
func (nopBackend) LeaderAPI() string                               { return "" }
func (nopBackend) Switchover(context.Context, SwitchoverRequest) (SwitchoverResult, error) {
	return SwitchoverResult{}, nil
}
func (nopBackend) Failover(context.Context, SwitchoverRequest) (SwitchoverResult, error) {
	return SwitchoverResult{}, nil
}
func (nopBackend) PatchConfig(context.Context, map[string]json.RawMessage) (DynamicConfig, error) {
	return DynamicConfig{}, nil
}

// FuzzRequest sends arbitrary bodies and queries to every endpoint: the
// server must never panic, never answer 500 for input (only 2xx, 4xx, or
// 503 when a request would need a leader it does not know), and always
// answer JSON errors with a reason.
func FuzzRequest(f *testing.F) {
	s, err := New(Options{Addr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Auth: Credentials{Basic: "a:b"}}, nopBackend{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.ln.Close() })
	routes := []string{"POST /switchover", "POST /failover", "POST /v1/join", "POST /v1/remove", "POST /v1/pause",
		"PATCH /config", "DELETE /switchover", "GET /replica", "GET /check", "GET /readiness", "GET /async"}
	for i := range routes {
		f.Add(uint8(i), `{}`, "")
	}
	f.Add(uint8(0), `{"candidate":"n2","scheduled_at":"2026-11-27T22:00:00Z"}`, "")
	f.Add(uint8(1), `{"candidate":""}`, "")
	f.Add(uint8(2), `{"addr":"127.0.0.1:0"}`, "")
	f.Add(uint8(2), `{"addr":"[::1]:99999"}`, "")
	f.Add(uint8(5), `{"synchronous_mode":true,"postgresql":{"parameters":{"work_mem":"8MB"}}}`, "")
	f.Add(uint8(5), `[1,2,3]`, "")
	f.Add(uint8(4), `{"paused":"yes"}`, "")
	f.Add(uint8(7), ``, "lag=16MB&tag_nofailover=false")
	f.Add(uint8(8), ``, "warn_lag=1GB&crit_lag=1kB&warn_conn=101")
	f.Add(uint8(7), ``, "lag=99999999999999999999TB")
	f.Fuzz(func(t *testing.T, route uint8, body, query string) {
		method, path, _ := strings.Cut(routes[int(route)%len(routes)], " ")
		target := path
		if query != "" {
			target += "?" + query
		}
		req, err := http.NewRequest(method, "http://x"+path, strings.NewReader(body))
		if err != nil {
			return
		}
		if u, err := req.URL.Parse(target); err == nil {
			req.URL = u
		}
		req.SetBasicAuth("a", "b")
		rec := httptest.NewRecorder()
		s.srv.Handler.ServeHTTP(rec, req)
		switch {
		case rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable:
			t.Fatalf("%s %s %q: %d %s", method, target, body, rec.Code, rec.Body)
		case rec.Code >= 400 && rec.Code != http.StatusServiceUnavailable:
			var eb ErrorBody
			if json.Unmarshal(rec.Body.Bytes(), &eb) != nil || eb.Error == "" {
				t.Fatalf("%s %s %q: %d without a JSON reason: %s", method, target, body, rec.Code, rec.Body)
			}
		}
	})
}
