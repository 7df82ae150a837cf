package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/internal/testutil"
	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind
// (servers not stopped, client connections left open).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeBackend is an api.Backend made of function fields; a nil field
// answers as an agent with nothing to say would.
type fakeBackend struct {
	ClusterFn   func() api.ClusterInfo
	HealthFn    func() api.HealthInfo
	JoinFn      func(ctx context.Context, req api.JoinRequest) error
	LeaveFn     func(ctx context.Context) error
	RemoveFn    func(ctx context.Context, req api.RemoveRequest) error
	SwitchFn    func(ctx context.Context, req api.SwitchoverRequest) (api.SwitchoverResult, error)
	FailoverFn  func(ctx context.Context, req api.SwitchoverRequest) (api.SwitchoverResult, error)
	PausedFn    func(ctx context.Context, paused bool) error
	HistoryFn   func() []api.HistoryEntry
	LeaderAPIFn func() string
	PatchFn     func(ctx context.Context, patch map[string]json.RawMessage) (api.DynamicConfig, error)
}

var _ api.Backend = (*fakeBackend)(nil)

func (b *fakeBackend) Cluster() api.ClusterInfo {
	if b.ClusterFn == nil {
		return api.ClusterInfo{}
	}
	return b.ClusterFn()
}

func (b *fakeBackend) Health() api.HealthInfo {
	if b.HealthFn == nil {
		return api.HealthInfo{}
	}
	return b.HealthFn()
}

func (b *fakeBackend) Join(ctx context.Context, req api.JoinRequest) error {
	if b.JoinFn == nil {
		return errors.New("fake: Join not expected")
	}
	return b.JoinFn(ctx, req)
}

func (b *fakeBackend) Leave(ctx context.Context) error {
	if b.LeaveFn == nil {
		return errors.New("fake: Leave not expected")
	}
	return b.LeaveFn(ctx)
}

func (b *fakeBackend) Remove(ctx context.Context, req api.RemoveRequest) error {
	if b.RemoveFn == nil {
		return errors.New("fake: Remove not expected")
	}
	return b.RemoveFn(ctx, req)
}

func (b *fakeBackend) Switchover(ctx context.Context, req api.SwitchoverRequest) (api.SwitchoverResult, error) {
	if b.SwitchFn == nil {
		return api.SwitchoverResult{}, errors.New("fake: Switchover not expected")
	}
	return b.SwitchFn(ctx, req)
}

func (b *fakeBackend) Failover(ctx context.Context, req api.SwitchoverRequest) (api.SwitchoverResult, error) {
	if b.FailoverFn == nil {
		return api.SwitchoverResult{}, errors.New("fake: Failover not expected")
	}
	return b.FailoverFn(ctx, req)
}

func (b *fakeBackend) SetPaused(ctx context.Context, paused bool) error {
	if b.PausedFn == nil {
		return errors.New("fake: SetPaused not expected")
	}
	return b.PausedFn(ctx, paused)
}

func (b *fakeBackend) History() []api.HistoryEntry {
	if b.HistoryFn == nil {
		return nil
	}
	return b.HistoryFn()
}

func (b *fakeBackend) Config() api.DynamicConfig { return api.DynamicConfig{SynchronousNodeCount: 1} }

func (b *fakeBackend) PatchConfig(ctx context.Context, patch map[string]json.RawMessage) (api.DynamicConfig, error) {
	if b.PatchFn == nil {
		return api.DynamicConfig{}, errors.New("fake: PatchConfig not expected")
	}
	return b.PatchFn(ctx, patch)
}

func (b *fakeBackend) CancelSwitchover(ctx context.Context) error {
	return errors.New("fake: CancelSwitchover not expected")
}

func (b *fakeBackend) ProxyStats() any { return map[string]any{} }

func (b *fakeBackend) Restart(ctx context.Context) error {
	return errors.New("fake: Restart not expected")
}
func (b *fakeBackend) Reload(ctx context.Context) error {
	return errors.New("fake: Reload not expected")
}
func (b *fakeBackend) Check(ctx context.Context, o api.CheckOptions) api.CheckResult {
	return api.CheckResult{Name: "fake", Status: api.CheckOK}
}
func (b *fakeBackend) Reinitialize(ctx context.Context) error {
	return errors.New("fake: Reinitialize not expected")
}

func (b *fakeBackend) LeaderAPI() string {
	if b.LeaderAPIFn == nil {
		return ""
	}
	return b.LeaderAPIFn()
}

// calls records what a backend function was called with; handlers run
// on the server's goroutines, so it is locked.
type calls[T any] struct {
	mu  sync.Mutex
	got []T
}

func (c *calls[T]) add(v T) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, v)
}

func (c *calls[T]) list() []T {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]T(nil), c.got...)
}

// startServer serves b on a free loopback port until the test ends, and
// checks at the end that Serve returned once its context was cancelled.
func startServer(tb testing.TB, b api.Backend) string {
	tb.Helper()
	srv, err := api.New(api.Options{Addr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, b)
	if err != nil {
		tb.Fatalf("api.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ctx)
	}()
	tb.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			tb.Errorf("Serve on %s did not return after cancel", srv.Addr())
		}
		// api.Client and the server's forwarder use the default
		// transport; drop its idle connections so no reader goroutine
		// outlives the test.
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	})
	return srv.Addr()
}

// rawClient is a plain HTTP client with its own transport, closed when
// the test ends, for checks api.Client cannot express (status codes,
// headers, malformed bodies).
func rawClient(tb testing.TB) *http.Client {
	tb.Helper()
	tr := &http.Transport{}
	tb.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

type response struct {
	code   int
	header http.Header
	body   string
}

func do(tb testing.TB, c *http.Client, method, url, body string) response {
	tb.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		tb.Fatalf("new request: %v", err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return response{code: resp.StatusCode, header: resp.Header, body: string(b)}
}

// errorText decodes an {"error": ...} body and fails if there is none:
// every error answer must say why.
func errorText(tb testing.TB, r response) string {
	tb.Helper()
	var eb api.ErrorBody
	if err := json.Unmarshal([]byte(r.body), &eb); err != nil || eb.Error == "" {
		tb.Fatalf("status %d: body %q is not {\"error\": reason}", r.code, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		tb.Errorf("Content-Type = %q, want application/json", ct)
	}
	return eb.Error
}

func statusOf(tb testing.TB, err error) *api.StatusError {
	tb.Helper()
	var se *api.StatusError
	if !errors.As(err, &se) {
		tb.Fatalf("error %v (%T) is not an *api.StatusError", err, err)
	}
	return se
}

func ctxFor(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

func lag(n int64) *int64 { return &n }

func TestCluster(t *testing.T) {
	want := api.ClusterInfo{
		Cluster:     "prod",
		ClusterID:   "c-1",
		SystemID:    7301234567890123456, // above 2^53: must travel as a string
		Initialized: true,
		Leader:      "pg1",
		Primary:     "pg1",
		Epoch:       4,
		Timeline:    3,
		PrimaryLSN:  "0/3000060",
		Observer:    "pg2",
		Members: []api.MemberInfo{
			{Name: "pg1", Host: "10.0.0.1:5432", Role: "leader", State: "running", Timeline: 3, LagBytes: lag(0), Raft: "leader", Tags: map[string]any{"nofailover": true}},
			{Name: "pg2", Host: "10.0.0.2:5432", Role: "replica", State: "streaming", Timeline: 3, LagBytes: lag(1 << 20), Raft: "voter"},
		},
	}
	addr := startServer(t, &fakeBackend{ClusterFn: func() api.ClusterInfo { return want }})

	got, err := api.NewClient(addr).Cluster(ctxFor(t))
	if err != nil {
		t.Fatalf("Cluster: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Cluster:\n got  %+v\n want %+v", got, want)
	}

	r := do(t, rawClient(t), http.MethodGet, "http://"+addr+"/cluster", "")
	if r.code != http.StatusOK {
		t.Fatalf("GET /cluster: %d %s", r.code, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	if !strings.Contains(r.body, `"system_id": "7301234567890123456"`) {
		t.Errorf("system_id is not a JSON string in %s", r.body)
	}
}

func TestHealth(t *testing.T) {
	var mu sync.Mutex
	info := api.HealthInfo{Name: "pg1", Role: "primary", State: "running", Raft: "leader", PGRunning: true}
	set := func(_ bool, h api.HealthInfo) {
		mu.Lock()
		defer mu.Unlock()
		info = h
	}
	addr := startServer(t, &fakeBackend{HealthFn: func() api.HealthInfo {
		mu.Lock()
		defer mu.Unlock()
		return info
	}})
	cl, hc, base := api.NewClient(addr), rawClient(t), "http://"+addr+"/health"

	// Healthy: 200 on every method a load balancer may use.
	h, healthy, err := cl.Health(ctxFor(t))
	if err != nil || !healthy || h.Name != "pg1" || !h.PGRunning {
		t.Fatalf("Health = %+v, %v, %v; want pg1, true, nil", h, healthy, err)
	}
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodOptions} {
		if r := do(t, hc, m, base, ""); r.code != http.StatusOK {
			t.Errorf("%s /health = %d, want 200", m, r.code)
		}
	}
	if r := do(t, hc, http.MethodHead, base, ""); r.body != "" {
		t.Errorf("HEAD /health has a body: %q", r.body)
	}

	// Unhealthy: 503, which the client reports as an answer, not an
	// error, with the details still decoded (with or without an error
	// text, which the client could mistake for an error body).
	for _, unhealthy := range []api.HealthInfo{
		{Name: "pg1", Role: "replica", State: "stopped", Raft: "follower"},
		{Name: "pg1", Role: "replica", State: "stopped", Raft: "follower", Error: "pg_ctl start failed"},
	} {
		set(false, unhealthy)
		h, healthy, err := cl.Health(ctxFor(t))
		if err != nil || healthy {
			t.Fatalf("Health = %v, %v; want false, nil", healthy, err)
		}
		if h.Name != unhealthy.Name || h.State != unhealthy.State || h.Error != unhealthy.Error {
			t.Errorf("Health details = %+v, want %+v", h, unhealthy)
		}
		for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodOptions} {
			if r := do(t, hc, m, base, ""); r.code != http.StatusServiceUnavailable {
				t.Errorf("%s /health = %d, want 503", m, r.code)
			}
		}
	}

	// Writes are not health checks.
	if r := do(t, hc, http.MethodPost, base, "{}"); r.code != http.StatusMethodNotAllowed {
		t.Errorf("POST /health = %d, want 405", r.code)
	}
}

func TestJoin(t *testing.T) {
	var got calls[api.JoinRequest]
	addr := startServer(t, &fakeBackend{JoinFn: func(ctx context.Context, req api.JoinRequest) error {
		got.add(req)
		return nil
	}})
	want := api.JoinRequest{Addr: "10.0.0.1:7946", TimeoutSeconds: 30}
	if err := api.NewClient(addr).Join(ctxFor(t), want); err != nil {
		t.Fatalf("Join: %v", err)
	}
	if g := got.list(); len(g) != 1 || g[0] != want {
		t.Fatalf("backend got %+v, want [%+v]", g, want)
	}
}

func TestJoin_BadRequests(t *testing.T) {
	var got calls[api.JoinRequest]
	addr := startServer(t, &fakeBackend{JoinFn: func(ctx context.Context, req api.JoinRequest) error {
		got.add(req)
		return nil
	}})
	hc := rawClient(t)
	for _, tt := range []struct {
		name, body, reason string
	}{
		{"malformed", `{"addr":`, "bad request body"},
		{"not an object", `["10.0.0.1:7946"]`, "bad request body"},
		{"wrong type", `{"addr":7946}`, "bad request body"},
		{"unknown field", `{"addr":"10.0.0.1:7946","adress":"x"}`, `unknown field "adress"`},
		{"empty body", ``, "bad request body"},
		{"missing addr", `{}`, "addr is required"},
		{"no port", `{"addr":"10.0.0.1"}`, "missing port"},
		{"too many colons", `{"addr":"fe80::1:7946"}`, "too many colons"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, hc, http.MethodPost, "http://"+addr+"/v1/join", tt.body)
			if r.code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400 (body %s)", r.code, r.body)
			}
			if msg := errorText(t, r); !strings.Contains(msg, tt.reason) {
				t.Errorf("error %q does not contain %q", msg, tt.reason)
			}
		})
	}
	if g := got.list(); len(g) != 0 {
		t.Fatalf("backend was called with %+v; bad requests must stop at the API", g)
	}
}

// An address whose port is empty or not a number can never be joined;
// the API should refuse it with a 400 like the other malformed addresses
// instead of handing it to the backend (which then fails with a 502
// "cannot reach" after a gossip attempt).
func TestJoin_BadPortIsRejected(t *testing.T) {
	var got calls[api.JoinRequest]
	addr := startServer(t, &fakeBackend{JoinFn: func(ctx context.Context, req api.JoinRequest) error {
		got.add(req)
		return nil
	}})
	hc := rawClient(t)
	for _, a := range []string{"10.0.0.1:", "db1:gossip", "10.0.0.1:99999"} {
		r := do(t, hc, http.MethodPost, "http://"+addr+"/v1/join", fmt.Sprintf(`{"addr":%q}`, a))
		if r.code != http.StatusBadRequest {
			t.Errorf("addr %q: status %d, want 400", a, r.code)
		}
	}
	if g := got.list(); len(g) != 0 {
		t.Errorf("backend was called with %+v", g)
	}
}

func TestBackendErrorsMapToStatus(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		code int
		msg  string
	}{
		{"status error", api.Errorf(http.StatusConflict, "this node is leaving"), http.StatusConflict, "this node is leaving"},
		{"wrapped status error", fmt.Errorf("join: %w", api.Errorf(http.StatusGatewayTimeout, "no answer")), http.StatusGatewayTimeout, "join: no answer"},
		{"plain error", errors.New("disk full"), http.StatusInternalServerError, "disk full"},
		// The backend speaks domain errors; the API alone picks the status.
		{"invalid", cluster.Invalidf("no member named %q", "n9"), http.StatusBadRequest, `no member named "n9"`},
		{"not found", cluster.NotFoundf("no switchover is scheduled"), http.StatusNotFound, "no switchover is scheduled"},
		{"conflict", cluster.Conflictf("this node is leaving"), http.StatusConflict, "this node is leaving"},
		{"ineligible", &cluster.IneligibleError{Member: "n3", Reason: "is not a Raft voter"}, http.StatusConflict, "n3 is not a Raft voter"},
		{"not initialised", cluster.NotInitialisedf("the cluster is not initialised"), http.StatusConflict, "the cluster is not initialised"},
		{"unreachable", cluster.Unreachablef("cannot reach 10.0.0.1:7946"), http.StatusBadGateway, "cannot reach 10.0.0.1:7946"},
		{"timeout", fmt.Errorf("join: %w", cluster.Timeoutf("no answer")), http.StatusGatewayTimeout, "join: no answer"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr := startServer(t, &fakeBackend{
				JoinFn:  func(context.Context, api.JoinRequest) error { return tt.err },
				LeaveFn: func(context.Context) error { return tt.err },
			})
			cl := api.NewClient(addr)
			for what, err := range map[string]error{
				"join":  cl.Join(ctxFor(t), api.JoinRequest{Addr: "10.0.0.1:7946"}),
				"leave": cl.Leave(ctxFor(t)),
			} {
				se := statusOf(t, err)
				if se.Code != tt.code || se.Msg != tt.msg {
					t.Errorf("%s: got %d %q, want %d %q", what, se.Code, se.Msg, tt.code, tt.msg)
				}
			}
		})
	}
}

func TestLeave(t *testing.T) {
	var n calls[struct{}]
	addr := startServer(t, &fakeBackend{LeaveFn: func(context.Context) error { n.add(struct{}{}); return nil }})
	if err := api.NewClient(addr).Leave(ctxFor(t)); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	if len(n.list()) != 1 {
		t.Fatalf("backend Leave called %d times, want 1", len(n.list()))
	}
}

func TestRemove_OnLeader(t *testing.T) {
	var got calls[api.RemoveRequest]
	addr := startServer(t, &fakeBackend{RemoveFn: func(_ context.Context, req api.RemoveRequest) error {
		got.add(req)
		return nil
	}})
	want := api.RemoveRequest{Name: "pg3", Force: true}
	if err := api.NewClient(addr).Remove(ctxFor(t), want); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if g := got.list(); len(g) != 1 || g[0] != want {
		t.Fatalf("backend got %+v, want [%+v]", g, want)
	}
	r := do(t, rawClient(t), http.MethodPost, "http://"+addr+"/v1/remove", `{}`)
	if r.code != http.StatusBadRequest || !strings.Contains(errorText(t, r), "name is required") {
		t.Errorf("remove without name: %d %s, want 400 name is required", r.code, r.body)
	}
}

// follower is a server whose backend is not the leader: Remove says so
// and LeaderAPI points wherever *leader says (set after both exist).
func follower(tb testing.TB, leader *string, mu *sync.Mutex, got *calls[api.RemoveRequest], notLeader error) string {
	return startServer(tb, &fakeBackend{
		RemoveFn: func(_ context.Context, req api.RemoveRequest) error {
			got.add(req)
			return notLeader
		},
		LeaderAPIFn: func() string {
			mu.Lock()
			defer mu.Unlock()
			return *leader
		},
	})
}

func TestRemove_ForwardedToLeader(t *testing.T) {
	for _, tt := range []struct {
		name      string
		notLeader error // what the follower's backend returns
		leaderErr error // what the leader's backend returns
		wantCode  int   // 0: success
		wantMsg   string
	}{
		{"success relayed", api.ErrNotLeader, nil, 0, ""},
		{"wrapped not-leader", fmt.Errorf("remove pg3: %w", api.ErrNotLeader), nil, 0, ""},
		{"leader's refusal relayed", api.ErrNotLeader, api.Errorf(http.StatusConflict, "pg3 looks alive; use force"), http.StatusConflict, "pg3 looks alive; use force"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var onLeader, onFollower calls[api.RemoveRequest]
			leaderAddr := startServer(t, &fakeBackend{
				RemoveFn: func(_ context.Context, req api.RemoveRequest) error {
					onLeader.add(req)
					return tt.leaderErr
				},
				// A leader that gets ErrNotLeader forwarding wrong would
				// point at itself; it must never be asked.
				LeaderAPIFn: func() string { t.Error("leader asked for the leader"); return "" },
			})
			var mu sync.Mutex
			followerAddr := follower(t, &leaderAddr, &mu, &onFollower, tt.notLeader)

			want := api.RemoveRequest{Name: "pg3", Force: true}
			err := api.NewClient(followerAddr).Remove(ctxFor(t), want)
			if tt.wantCode == 0 {
				if err != nil {
					t.Fatalf("Remove via follower: %v", err)
				}
			} else {
				se := statusOf(t, err)
				if se.Code != tt.wantCode || se.Msg != tt.wantMsg {
					t.Fatalf("Remove via follower: %d %q, want %d %q", se.Code, se.Msg, tt.wantCode, tt.wantMsg)
				}
			}
			if g := onFollower.list(); len(g) != 1 || g[0] != want {
				t.Errorf("follower backend got %+v, want [%+v]", g, want)
			}
			if g := onLeader.list(); len(g) != 1 || g[0] != want {
				t.Errorf("leader backend got %+v, want exactly one %+v", g, want)
			}
		})
	}
}

// Two followers that each believe the other leads (leadership is moving)
// must not bounce a request between them.
func TestRemove_ForwardedToAnotherFollower(t *testing.T) {
	var mu sync.Mutex
	var addr1, addr2 string
	var got1, got2 calls[api.RemoveRequest]
	mu.Lock()
	addr1 = follower(t, &addr2, &mu, &got1, api.ErrNotLeader)
	addr2 = follower(t, &addr1, &mu, &got2, api.ErrNotLeader)
	mu.Unlock()

	r := do(t, rawClient(t), http.MethodPost, "http://"+addr1+"/v1/remove", `{"name":"pg3"}`)
	if r.code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503 (body %s)", r.code, r.body)
	}
	if msg := errorText(t, r); !strings.Contains(msg, "not the leader") {
		t.Errorf("error %q does not say the target was not the leader", msg)
	}
	if n1, n2 := len(got1.list()), len(got2.list()); n1 != 1 || n2 != 1 {
		t.Errorf("backends called %d and %d times, want once each (forwarded once, no loop)", n1, n2)
	}
}

func TestRemove_NoLeaderKnown(t *testing.T) {
	var mu sync.Mutex
	none := ""
	var got calls[api.RemoveRequest]
	addr := follower(t, &none, &mu, &got, api.ErrNotLeader)
	err := api.NewClient(addr).Remove(ctxFor(t), api.RemoveRequest{Name: "pg3"})
	se := statusOf(t, err)
	if se.Code != http.StatusServiceUnavailable || !strings.Contains(se.Msg, "no Raft leader") {
		t.Fatalf("got %d %q, want 503 no Raft leader", se.Code, se.Msg)
	}
}

func TestRemove_LeaderUnreachable(t *testing.T) {
	var mu sync.Mutex
	dead := testutil.FreeAddr(t)
	var got calls[api.RemoveRequest]
	addr := follower(t, &dead, &mu, &got, api.ErrNotLeader)
	err := api.NewClient(addr).Remove(ctxFor(t), api.RemoveRequest{Name: "pg3"})
	se := statusOf(t, err)
	if se.Code != http.StatusBadGateway || !strings.Contains(se.Msg, dead) {
		t.Fatalf("got %d %q, want 502 naming %s", se.Code, se.Msg, dead)
	}
}

func TestBodyLimit(t *testing.T) {
	var joins calls[api.JoinRequest]
	var removes calls[api.RemoveRequest]
	addr := startServer(t, &fakeBackend{
		JoinFn:   func(_ context.Context, req api.JoinRequest) error { joins.add(req); return nil },
		RemoveFn: func(_ context.Context, req api.RemoveRequest) error { removes.add(req); return nil },
	})
	hc := rawClient(t)
	const limit = 64 << 10

	// Just over the limit, as one long string value: refused with a
	// reason, before the backend is called.
	for _, tt := range []struct{ path, body string }{
		{"/v1/join", `{"addr":"` + strings.Repeat("a", limit) + `:1"}`},
		{"/v1/remove", `{"name":"` + strings.Repeat("a", limit) + `"}`},
	} {
		r := do(t, hc, http.MethodPost, "http://"+addr+tt.path, tt.body)
		if r.code != http.StatusBadRequest {
			t.Errorf("%s with %d bytes: status %d, want 400", tt.path, len(tt.body), r.code)
			continue
		}
		if msg := errorText(t, r); !strings.Contains(msg, "too large") {
			t.Errorf("%s: error %q does not say the body is too large", tt.path, msg)
		}
	}
	if len(joins.list()) != 0 || len(removes.list()) != 0 {
		t.Fatalf("backend called for an oversized body")
	}

	// Exactly at the limit is still accepted (JSON allows the padding).
	body := `{"name":"pg3"}`
	body += strings.Repeat(" ", limit-len(body))
	if r := do(t, hc, http.MethodPost, "http://"+addr+"/v1/remove", body); r.code != http.StatusOK {
		t.Errorf("remove with a %d-byte body: %d %s, want 200", len(body), r.code, r.body)
	}
}

func TestClient_ConnectionRefused(t *testing.T) {
	addr := testutil.FreeAddr(t)
	cl := api.NewClient(addr)
	_, err := cl.Cluster(ctxFor(t))
	if err == nil {
		t.Fatalf("Cluster against %s: want an error", addr)
	}
	if !strings.Contains(err.Error(), addr) {
		t.Errorf("error %q does not mention %s", err, addr)
	}
	if _, ok, err := cl.Health(ctxFor(t)); err == nil || ok {
		t.Errorf("Health against %s = %v, %v; want false and an error", addr, ok, err)
	}
}

func TestClient_Addr(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:8008":         "http://127.0.0.1:8008",
		"http://10.0.0.1:8008/":  "http://10.0.0.1:8008",
		"https://db.example:443": "https://db.example:443",
	} {
		if got := api.NewClient(in).Addr(); got != want {
			t.Errorf("NewClient(%q).Addr() = %q, want %q", in, got, want)
		}
	}
}

// Serve must return soon after its context ends, closing the listener
// and every goroutine it started, even with a client connection open.
func TestServe_ReturnsAfterCancel(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	srv, err := api.New(api.Options{Addr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))},
		&fakeBackend{HealthFn: func() api.HealthInfo { return api.HealthInfo{Name: "pg1", PGRunning: true} }})
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ctx)
	}()

	// Leave a keep-alive connection open, as a load balancer would.
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	if r := do(t, hc, http.MethodGet, "http://"+addr+"/health", ""); r.code != http.StatusOK {
		t.Fatalf("GET /health = %d", r.code)
	}

	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return within 10s of cancel")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after Serve returned", addr)
	}
	tr.CloseIdleConnections()
}

func TestNew_ListenError(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = api.New(api.Options{Addr: l.Addr().String()}, &fakeBackend{})
	if err == nil || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Fatalf("New on a taken port: %v; want an error naming %s", err, l.Addr())
	}
}

// PATCH /config: an empty patch is a 400; a follower forwards the patch
// to the leader, which answers with the merged configuration.
func TestPatchConfig(t *testing.T) {
	leader := &fakeBackend{PatchFn: func(ctx context.Context, p map[string]json.RawMessage) (api.DynamicConfig, error) {
		if string(p["synchronous_mode"]) != "true" {
			return api.DynamicConfig{}, api.Errorf(http.StatusBadRequest, "unexpected patch %v", p)
		}
		return api.DynamicConfig{SynchronousMode: true, SynchronousNodeCount: 1}, nil
	}}
	leaderAddr := startServer(t, leader)
	follower := &fakeBackend{
		PatchFn: func(context.Context, map[string]json.RawMessage) (api.DynamicConfig, error) {
			return api.DynamicConfig{}, api.ErrNotLeader
		},
		LeaderAPIFn: func() string { return leaderAddr },
	}
	addr := startServer(t, follower)
	dc, err := api.NewClient(addr).PatchConfig(context.Background(), map[string]any{"synchronous_mode": true})
	if err != nil || !dc.SynchronousMode {
		t.Fatalf("patch through a follower: %+v, %v", dc, err)
	}
	_, err = api.NewClient(addr).PatchConfig(context.Background(), map[string]any{})
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusBadRequest {
		t.Fatalf("empty patch: err = %v, want a 400", err)
	}
}

// TestRequestBodiesMustBeObjects: a null, a list or a bare value decodes
// into the zero request; none may act (a null once ran a switchover).
// A switchover also needs a body at all.
func TestRequestBodiesMustBeObjects(t *testing.T) {
	var switched calls[api.SwitchoverRequest]
	b := &fakeBackend{SwitchFn: func(_ context.Context, req api.SwitchoverRequest) (api.SwitchoverResult, error) {
		switched.add(req)
		return api.SwitchoverResult{}, nil
	}}
	addr := startServer(t, b)
	hc := rawClient(t)
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/switchover", "null"},
		{"POST", "/switchover", ""},
		{"POST", "/switchover", "[]"},
		{"POST", "/switchover", `"node2"`},
		{"POST", "/failover", "null"},
		{"POST", "/v1/pause", "null"},
		{"PATCH", "/config", "null"},
		{"POST", "/v1/join", "[1]"},
	} {
		req, _ := http.NewRequest(c.method, "http://"+addr+c.path, strings.NewReader(c.body))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(data), "JSON object") {
			t.Errorf("%s %s %q = %d %s, want 400 asking for a JSON object", c.method, c.path, c.body, resp.StatusCode, data)
		}
	}
	if n := len(switched.list()); n != 0 {
		t.Fatalf("%d switchovers ran on bodies that were not objects", n)
	}
	req, _ := http.NewRequest("POST", "http://"+addr+"/switchover", strings.NewReader("{}"))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(switched.list()) != 1 {
		t.Fatalf("switchover with {} = %d, %d calls; want it to run", resp.StatusCode, len(switched.list()))
	}
}
