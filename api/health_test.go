package api_test

import (
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgha/pgha/api"
)

func healthNodes() map[string]api.HealthInfo {
	now := time.Now()
	tags := func(nolb bool) map[string]any {
		return map[string]any{"nofailover": false, "noloadbalance": nolb, "failover_priority": 1}
	}
	return map[string]api.HealthInfo{
		"primary": {Role: "primary", PGRunning: true, Primary: true, LoopAt: now, Tags: tags(false)},
		// Lost leadership: about to be fenced, must leave the write pool.
		"deposed": {Role: "primary", PGRunning: true, Primary: false, LoopAt: now, Tags: tags(false)},
		"replica": {Role: "replica", PGRunning: true, InRecovery: true, ReplicationState: "streaming",
			LagBytes: lag(1000), LoopAt: now, Tags: tags(false), MaxLagOnFailover: 1 << 20},
		"sync": {Role: "replica", PGRunning: true, InRecovery: true, ReplicationState: "streaming",
			LagBytes: lag(0), SyncStandby: true, LoopAt: now, Tags: tags(false)},
		"lagging": {Role: "replica", PGRunning: true, InRecovery: true, ReplicationState: "streaming",
			LagBytes: lag(64 << 20), LoopAt: now, Tags: tags(false), MaxLagOnFailover: 1 << 20},
		"archive": {Role: "replica", PGRunning: true, InRecovery: true, ReplicationState: "in archive recovery",
			LoopAt: now, Tags: tags(false)},
		"nolb": {Role: "replica", PGRunning: true, InRecovery: true, ReplicationState: "streaming",
			LagBytes: lag(0), LoopAt: now, Tags: tags(true)},
		"stopped": {Role: "", PGRunning: false, LoopAt: now, Tags: tags(false)},
		"stale":   {Role: "replica", PGRunning: true, InRecovery: true, ReplicationState: "streaming", LoopAt: now.Add(-time.Minute)},
		"witness": {Role: "witness", LoopAt: now},
		// Its process exists but it does not answer: out of every pool.
		"hungprimary": {Role: "primary", PGRunning: true, Primary: true, State: "unresponsive", LoopAt: now, Tags: tags(false)},
		"hungreplica": {Role: "replica", PGRunning: true, InRecovery: true, State: "unresponsive", ReplicationState: "streaming",
			LagBytes: lag(0), LoopAt: now, Tags: tags(false)},
	}
}

// TestEvalHealth is the table of Patroni's semantics: which node states
// answer 200 on which endpoint.
func TestEvalHealth(t *testing.T) {
	nodes := healthNodes()
	tests := []struct {
		path, query string
		ok          []string // the nodes that pass; every other fails
	}{
		{"/primary", "", []string{"primary"}},
		{"/master", "", []string{"primary"}},
		{"/leader", "", []string{"primary"}},
		{"/read-write", "", []string{"primary"}},
		{"/", "", []string{"primary"}},
		{"/standby-leader", "", nil},
		{"/replica", "", []string{"replica", "sync", "lagging", "stale"}},
		{"/replica", "lag=16MB", []string{"replica", "sync"}},
		{"/replica", "lag=1000", []string{"replica", "sync"}},
		{"/replica", "lag=999", []string{"sync"}},
		{"/replica", "tag_noloadbalance=false", []string{"replica", "sync", "lagging"}},
		{"/replica", "tag_failover_priority=1&tag_nofailover=False", []string{"replica", "sync", "lagging"}},
		{"/replica", "tag_datacenter=east", nil},
		{"/replica", "replication_state=streaming", []string{"replica", "sync", "lagging", "stale"}},
		{"/read-only", "", []string{"primary", "replica", "sync", "lagging", "stale"}},
		{"/read-only", "lag=1MB", []string{"primary", "replica", "sync"}},
		{"/synchronous", "", []string{"sync"}},
		{"/sync", "", []string{"sync"}},
		{"/read-only-sync", "", []string{"primary", "sync"}},
		{"/asynchronous", "", []string{"replica", "lagging", "archive", "nolb", "stale"}},
		{"/async", "lag=1MB", []string{"replica", "nolb"}},
		{"/health", "", []string{"primary", "deposed", "replica", "sync", "lagging", "archive", "nolb", "stale", "witness"}},
		{"/liveness", "", []string{"primary", "deposed", "replica", "sync", "lagging", "archive", "nolb", "stopped", "witness", "hungprimary", "hungreplica"}},
		{"/readiness", "", []string{"primary", "replica", "sync", "nolb", "stale", "witness"}},
		{"/readiness", "lag=1GB", []string{"primary", "replica", "sync", "lagging", "nolb", "witness"}},
		{"/readiness", "lag=1MB", []string{"primary", "replica", "sync", "nolb", "witness"}},
	}
	for _, tt := range tests {
		q, err := url.ParseQuery(tt.query)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]bool{}
		for _, n := range tt.ok {
			want[n] = true
		}
		for name, h := range nodes {
			ok, reason, err := api.EvalHealth(tt.path, &h, q, time.Now())
			if err != nil {
				t.Fatalf("%s?%s: %v", tt.path, tt.query, err)
			}
			if ok != want[name] {
				t.Errorf("%s?%s on %s = %v (%s), want %v", tt.path, tt.query, name, ok, reason, want[name])
			}
			if !ok && reason == "" {
				t.Errorf("%s?%s on %s fails without a reason", tt.path, tt.query, name)
			}
		}
	}
}

func TestHealthEndpointsHTTP(t *testing.T) {
	var mu sync.Mutex
	nodes := healthNodes()
	cur := nodes["primary"]
	set := func(name string) {
		mu.Lock()
		defer mu.Unlock()
		cur = nodes[name]
	}
	addr := startServer(t, &fakeBackend{HealthFn: func() api.HealthInfo {
		mu.Lock()
		defer mu.Unlock()
		return cur
	}})
	hc, base := rawClient(t), "http://"+addr
	for _, tc := range []struct {
		node, path string
		code       int
	}{
		{"primary", "/primary", 200}, {"primary", "/replica", 503}, {"primary", "/", 200},
		{"replica", "/primary", 503}, {"replica", "/replica", 200}, {"replica", "/replica?lag=10MB", 200},
		{"lagging", "/replica?lag=10MB", 503}, {"nolb", "/replica", 503}, {"stopped", "/health", 503},
		{"replica", "/replica?lag=10 parsecs", 400}, {"replica", "/replica?lag=-1", 400},
	} {
		set(tc.node)
		for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodOptions} {
			r := do(t, hc, m, base+tc.path, "")
			if r.code != tc.code {
				t.Errorf("%s %s on %s = %d, want %d (%s)", m, tc.path, tc.node, r.code, tc.code, r.body)
			}
			if m != http.MethodGet && r.body != "" && tc.code != 400 {
				t.Errorf("%s %s has a body: %q", m, tc.path, r.body)
			}
		}
	}
	if r := do(t, hc, http.MethodGet, base+"/no-such-endpoint", ""); r.code != http.StatusNotFound {
		t.Errorf("unknown path = %d, want 404", r.code)
	}
	// The client reads the 503 body too.
	set("lagging")
	h, ok, err := api.NewClient(addr).Probe(ctxFor(t), "/replica?lag=1MB")
	if err != nil || ok || h.LagBytes == nil || *h.LagBytes != 64<<20 {
		t.Errorf("Probe = %+v, %v, %v", h, ok, err)
	}
}

func startAuthServer(tb testing.TB, b api.Backend, creds api.Credentials, protectReads bool) string {
	tb.Helper()
	srv, err := api.New(api.Options{Addr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Auth: creds, ProtectReads: protectReads, Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "m 1\n") })}, b)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx) }()
	tb.Cleanup(func() { cancel(); <-done; http.DefaultTransport.(*http.Transport).CloseIdleConnections() })
	return srv.Addr()
}

func TestAuth(t *testing.T) {
	paused := calls[bool]{}
	b := &fakeBackend{
		HealthFn: func() api.HealthInfo {
			return api.HealthInfo{Name: "n1", Role: "primary", Primary: true, PGRunning: true}
		},
		PausedFn: func(_ context.Context, p bool) error { paused.add(p); return nil },
	}
	creds := api.Credentials{Basic: "admin:s3cret", Token: "tok-123"}
	addr := startAuthServer(t, b, creds, false)
	hc, base := rawClient(t), "http://"+addr
	send := func(method, path, body string, hdr map[string]string) response {
		req, err := http.NewRequest(method, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if body != "" {
			req, _ = http.NewRequest(method, base+path, strings.NewReader(body))
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return response{code: resp.StatusCode, header: resp.Header, body: string(data)}
	}
	basic := func(up string) map[string]string {
		return map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(up))}
	}
	// Mutating endpoints: 401 without or with wrong credentials, with a
	// challenge; nothing reaches the backend.
	for _, hdr := range []map[string]string{nil, basic("admin:wrong"), basic("admin:s3cret "), {"Authorization": "Bearer tok-12"}} {
		r := send("POST", "/v1/pause", `{"paused":true}`, hdr)
		if r.code != http.StatusUnauthorized || r.header.Get("WWW-Authenticate") == "" {
			t.Errorf("pause with %v = %d %q, want 401 with a challenge", hdr, r.code, r.body)
		}
	}
	for _, path := range []string{"/switchover", "/failover", "/restart", "/reload", "/reinitialize", "/v1/join", "/v1/leave", "/v1/remove"} {
		if r := send("POST", path, `{}`, nil); r.code != http.StatusUnauthorized {
			t.Errorf("POST %s without credentials = %d, want 401", path, r.code)
		}
	}
	if r := send("PATCH", "/config", `{"synchronous_mode":true}`, nil); r.code != http.StatusUnauthorized {
		t.Errorf("PATCH /config without credentials = %d", r.code)
	}
	if n := len(paused.list()); n != 0 {
		t.Fatalf("backend called %d times without credentials", n)
	}
	// With credentials: accepted (basic and bearer).
	if r := send("POST", "/v1/pause", `{"paused":true}`, basic("admin:s3cret")); r.code != 200 {
		t.Errorf("pause with basic auth = %d %s", r.code, r.body)
	}
	if r := send("POST", "/v1/pause", `{"paused":false}`, map[string]string{"Authorization": "Bearer tok-123"}); r.code != 200 {
		t.Errorf("pause with bearer token = %d %s", r.code, r.body)
	}
	// A malformed body with credentials is a 400, not a 401.
	if r := send("POST", "/v1/pause", `{"paused":`, basic("admin:s3cret")); r.code != http.StatusBadRequest {
		t.Errorf("malformed body = %d, want 400", r.code)
	}
	// Reads and health checks stay open.
	for _, path := range []string{"/primary", "/health", "/cluster", "/config", "/history", "/metrics"} {
		if r := send("GET", path, "", nil); r.code != 200 {
			t.Errorf("GET %s without credentials = %d, want 200", path, r.code)
		}
	}
	// The client sends its credentials.
	cl := api.NewClientWith(addr, api.ClientOptions{Auth: "admin:s3cret"})
	if err := cl.SetPaused(ctxFor(t), true); err != nil {
		t.Errorf("client with credentials: %v", err)
	}
	err := api.NewClient(addr).SetPaused(ctxFor(t), true)
	if se := statusOf(t, err); se.Code != http.StatusUnauthorized {
		t.Errorf("client without credentials: %v", err)
	}
	if got := paused.list(); len(got) != 3 {
		t.Errorf("pause calls = %v, want 3", got)
	}

	// protect_reads: reads need credentials, health checks do not.
	addr2 := startAuthServer(t, b, creds, true)
	base = "http://" + addr2
	for _, path := range []string{"/cluster", "/config", "/history", "/proxy", "/metrics"} {
		if r := send("GET", path, "", nil); r.code != http.StatusUnauthorized {
			t.Errorf("protected GET %s = %d, want 401", path, r.code)
		}
		if r := send("GET", path, "", basic("admin:s3cret")); r.code != 200 {
			t.Errorf("protected GET %s with credentials = %d", path, r.code)
		}
	}
	for _, path := range []string{"/primary", "/replica", "/health", "/liveness", "/readiness"} {
		if r := send("GET", path, "", nil); r.code == http.StatusUnauthorized {
			t.Errorf("health endpoint %s asks for credentials", path)
		}
	}
}
