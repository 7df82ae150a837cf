// Package api is pgha's REST API: health endpoints for load balancers and
// monitoring, and the control endpoints the CLI drives. Leader-only
// requests are forwarded to the Raft leader, so any member accepts them.
package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pgha/pgha/cluster"
)

// ErrNotLeader is returned by a Backend for leader-only requests on a
// follower; the server then forwards the request to the leader. It is
// the cluster's own sentinel: the backend speaks domain errors (package
// cluster) and this package alone turns them into HTTP (statusOf).
var ErrNotLeader = cluster.ErrNotLeader

// StatusError is an error of the API layer itself (a malformed request,
// a forwarding failure) with the HTTP status it maps to.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return e.Msg }

// Errorf builds a StatusError.
func Errorf(code int, format string, args ...any) error {
	return &StatusError{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// Backend is what the agent provides to the API. Small on purpose.
type Backend interface {
	Cluster() ClusterInfo
	// Health is this node's status; the health endpoints decide from it.
	Health() HealthInfo
	Join(ctx context.Context, req JoinRequest) error
	Leave(ctx context.Context) error
	Remove(ctx context.Context, req RemoveRequest) error
	// Switchover and Failover run on the leader (ErrNotLeader forwards).
	Switchover(ctx context.Context, req SwitchoverRequest) (SwitchoverResult, error)
	Failover(ctx context.Context, req SwitchoverRequest) (SwitchoverResult, error)
	// CancelSwitchover drops a scheduled switchover. Leader only.
	CancelSwitchover(ctx context.Context) error
	SetPaused(ctx context.Context, paused bool) error
	History() []HistoryEntry
	Config() DynamicConfig
	// PatchConfig applies a JSON merge patch (RFC 7386) to the dynamic
	// configuration. Leader only.
	PatchConfig(ctx context.Context, patch map[string]json.RawMessage) (DynamicConfig, error)
	// Restart and Reload act on this member's PostgreSQL.
	Restart(ctx context.Context) error
	Reload(ctx context.Context) error
	// Reinitialize throws this replica's data away and clones it again
	// from the primary. Refused on the primary.
	Reinitialize(ctx context.Context) error
	// Check runs the operator's health check (GET /check, `pgha check`).
	Check(ctx context.Context, o CheckOptions) CheckResult
	// ProxyStats is the body of GET /proxy (the proxy's counters).
	ProxyStats() any
	// LeaderAPI returns the leader's API address, "" when unknown.
	LeaderAPI() string
}

// Options configures the server.
type Options struct {
	Addr   string
	Logger *slog.Logger
	// TLS, when set, serves https. Client certificates are verified when
	// presented but not required: operators' CLIs have none.
	TLS *tls.Config
	// ClientTLS is used to forward requests to the leader's https API.
	ClientTLS *tls.Config
	// Auth, when enabled, guards the mutating endpoints (401 without).
	Auth Credentials
	// ProtectReads guards the read endpoints too; health endpoints stay
	// open for load balancers.
	ProtectReads bool
	// Metrics serves GET /metrics (Prometheus text format); nil: 404.
	Metrics http.Handler
}

// Server is the HTTP server.
type Server struct {
	ln      net.Listener
	srv     *http.Server
	backend Backend
	log     *slog.Logger
	client  *http.Client
	scheme  string // of the leader's API when forwarding
	auth    *authenticator
}

// AuthStats returns the failed-login counters.
func (s *Server) AuthStats() AuthStats {
	return AuthStats{Failures: s.auth.guard.failures.Load(), Throttled: s.auth.guard.throttled.Load()}
}

// maxBody bounds request bodies: every request we accept is tiny.
const maxBody = 64 << 10

const forwardedHeader = "X-Pgha-Forwarded"

// New listens on o.Addr; Serve starts answering.
func New(o Options, b Backend) (*Server, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("api listen on %s: %w", o.Addr, err)
	}
	scheme := "http"
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if o.ClientTLS != nil {
		scheme = "https"
		transport.TLSClientConfig = o.ClientTLS.Clone()
	}
	if o.TLS != nil {
		tc := o.TLS.Clone()
		tc.ClientAuth = tls.VerifyClientCertIfGiven
		ln = tls.NewListener(ln, tc)
	}
	s := &Server{ln: ln, backend: b, log: o.Logger, scheme: scheme,
		client: &http.Client{Timeout: 90 * time.Second, Transport: transport}}
	auth := newAuthenticator(o.Auth, o.Logger)
	s.auth = auth
	write := auth.require
	read := func(h http.HandlerFunc) http.HandlerFunc { return h }
	if o.ProtectReads {
		read = auth.require
	}
	mux := http.NewServeMux()
	for path := range healthRoutes {
		pattern := path
		if path == "/" {
			pattern = "/{$}" // only the root itself, not every unknown path
		}
		for _, m := range []string{"GET", "HEAD", "OPTIONS"} {
			mux.HandleFunc(m+" "+pattern, s.handleHealthCheck)
		}
	}
	mux.HandleFunc("GET /cluster", read(s.handleCluster))
	mux.HandleFunc("GET /history", read(s.handleHistory))
	mux.HandleFunc("GET /config", read(s.handleConfig))
	mux.HandleFunc("GET /check", read(s.handleCheck))
	mux.HandleFunc("GET /proxy", read(func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.backend.ProxyStats()) }))
	if o.Metrics != nil {
		mux.Handle("GET /metrics", read(o.Metrics.ServeHTTP))
	}
	mux.HandleFunc("POST /v1/join", write(s.handleJoin))
	mux.HandleFunc("POST /v1/leave", write(s.handleLeave))
	mux.HandleFunc("POST /v1/remove", write(s.handleRemove))
	mux.HandleFunc("POST /switchover", write(s.handleSwitchover))
	mux.HandleFunc("DELETE /switchover", write(s.handleCancelSwitchover))
	mux.HandleFunc("POST /failover", write(s.handleFailover))
	mux.HandleFunc("POST /v1/pause", write(s.handlePause))
	mux.HandleFunc("PATCH /config", write(s.handlePatchConfig))
	mux.HandleFunc("POST /restart", write(s.handleRestart))
	mux.HandleFunc("POST /reload", write(s.handleReload))
	mux.HandleFunc("POST /reinitialize", write(s.handleReinitialize))
	s.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      120 * time.Second, // join/leave wait for Raft
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		// Load balancers often hang up before reading the reply; that is
		// normal and must not reach our log.
		ErrorLog: slog.NewLogLogger(slog.NewTextHandler(io.Discard, nil), slog.LevelError),
	}
	return s, nil
}

// Addr returns the listening address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve answers requests until ctx ends, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("api server", "err", err)
		}
	}()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(sctx)
	<-done
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	writeJSON(w, statusOf(err), ErrorBody{Error: err.Error()})
}

// statusOf maps an error to its HTTP status: the API's own StatusError
// carries it, a domain error of package cluster says it by its kind, and
// anything else is an internal error.
func statusOf(err error) int {
	var se *StatusError
	switch {
	case errors.As(err, &se):
		return se.Code
	case errors.Is(err, cluster.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, cluster.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, cluster.ErrNotInitialised), errors.Is(err, cluster.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, cluster.ErrNotLeader):
		// Only reached when forwarding is not possible (see forward).
		return http.StatusServiceUnavailable
	case errors.Is(err, cluster.ErrUnreachable):
		return http.StatusBadGateway
	case errors.Is(err, cluster.ErrTimeout):
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

// decode reads a JSON body strictly: at most maxBody bytes in all (so
// padding after the value counts too), one JSON value, no unknown field.
// Errors are 400s with the reason.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		return Errorf(http.StatusBadRequest, "bad request body: %v", err)
	}
	// Every request body is an object: null, a list or a bare value
	// would decode into the zero request and act on defaults nobody
	// asked for (a null once ran a real switchover).
	if t := bytes.TrimSpace(data); len(t) == 0 || t[0] != '{' {
		return Errorf(http.StatusBadRequest, "bad request body: want a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Errorf(http.StatusBadRequest, "bad request body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Errorf(http.StatusBadRequest, "bad request body: data after the JSON value")
	}
	return nil
}

func (s *Server) handleCluster(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.backend.Cluster())
}

func (s *Server) handleJoin(w http.ResponseWriter, r *http.Request) {
	var req JoinRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Addr == "" {
		writeError(w, Errorf(http.StatusBadRequest, "addr is required (the gossip host:port of any member)"))
		return
	}
	if err := checkHostPort(req.Addr); err != nil {
		writeError(w, Errorf(http.StatusBadRequest, "addr %q: %v", req.Addr, err))
		return
	}
	if err := s.backend.Join(r.Context(), req); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "joined"})
}

func (s *Server) handleLeave(w http.ResponseWriter, r *http.Request) {
	if err := s.backend.Leave(r.Context()); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "left"})
}

// leaderOnly decodes a JSON body into req, checks it, runs do, and
// forwards the request to the leader when do says this node is not it.
// bodyRequired marks request types whose endpoint acts only on an
// explicit JSON object, never on an empty body.
type bodyRequired interface{ bodyRequired() }

func (*SwitchoverRequest) bodyRequired() {}

func leaderOnly[T any](s *Server, w http.ResponseWriter, r *http.Request, check func(*T) error, do func(*T) (any, error)) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeError(w, Errorf(http.StatusBadRequest, "read body: %v", err))
		return
	}
	var req T
	if _, need := any(&req).(bodyRequired); need && len(bytes.TrimSpace(body)) == 0 {
		writeError(w, Errorf(http.StatusBadRequest, `a JSON object is required, e.g. {} or {"candidate": "node2"}`))
		return
	}
	if len(bytes.TrimSpace(body)) > 0 {
		r.Body = io.NopCloser(bytes.NewReader(body))
		if err := decode(w, r, &req); err != nil {
			writeError(w, err)
			return
		}
	}
	if err := check(&req); err != nil {
		writeError(w, err)
		return
	}
	out, err := do(&req)
	if errors.Is(err, ErrNotLeader) {
		s.forward(w, r, body)
		return
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleRemove(w http.ResponseWriter, r *http.Request) {
	leaderOnly(s, w, r, func(req *RemoveRequest) error {
		if req.Name == "" {
			return Errorf(http.StatusBadRequest, "name is required")
		}
		return nil
	}, func(req *RemoveRequest) (any, error) {
		return map[string]string{"status": "removed"}, s.backend.Remove(r.Context(), *req)
	})
}

func (s *Server) handleSwitchover(w http.ResponseWriter, r *http.Request) {
	leaderOnly(s, w, r, func(req *SwitchoverRequest) error {
		if req.ScheduledAt != "" {
			if _, err := time.Parse(time.RFC3339, req.ScheduledAt); err != nil {
				return Errorf(http.StatusBadRequest, "scheduled_at %q: want RFC 3339, e.g. 2026-11-27T22:00:00Z", req.ScheduledAt)
			}
		}
		return nil
	}, func(req *SwitchoverRequest) (any, error) {
		return s.backend.Switchover(r.Context(), *req)
	})
}

func (s *Server) handleCancelSwitchover(w http.ResponseWriter, r *http.Request) {
	leaderOnly(s, w, r, func(*struct{}) error { return nil }, func(*struct{}) (any, error) {
		return map[string]string{"status": "cancelled"}, s.backend.CancelSwitchover(r.Context())
	})
}

func (s *Server) handleFailover(w http.ResponseWriter, r *http.Request) {
	leaderOnly(s, w, r, func(req *SwitchoverRequest) error {
		if req.Candidate == "" {
			return Errorf(http.StatusBadRequest, "candidate is required for a failover")
		}
		if req.ScheduledAt != "" {
			return Errorf(http.StatusBadRequest, "a failover cannot be scheduled; schedule a switchover")
		}
		return nil
	}, func(req *SwitchoverRequest) (any, error) {
		return s.backend.Failover(r.Context(), *req)
	})
}

func (s *Server) handlePause(w http.ResponseWriter, r *http.Request) {
	leaderOnly(s, w, r, func(*PauseRequest) error { return nil }, func(req *PauseRequest) (any, error) {
		return map[string]bool{"paused": req.Paused}, s.backend.SetPaused(r.Context(), req.Paused)
	})
}

func (s *Server) handleConfig(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.backend.Config())
}

func (s *Server) handlePatchConfig(w http.ResponseWriter, r *http.Request) {
	leaderOnly(s, w, r, func(p *map[string]json.RawMessage) error {
		if len(*p) == 0 {
			return Errorf(http.StatusBadRequest, "empty patch: send a JSON object such as {\"synchronous_mode\": true}")
		}
		return nil
	}, func(p *map[string]json.RawMessage) (any, error) {
		return s.backend.PatchConfig(r.Context(), *p)
	})
}

func (s *Server) handleRestart(w http.ResponseWriter, r *http.Request) {
	if err := s.backend.Restart(r.Context()); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "restarted"})
}

func (s *Server) handleReload(w http.ResponseWriter, r *http.Request) {
	if err := s.backend.Reload(r.Context()); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "reloaded"})
}

func (s *Server) handleCheck(w http.ResponseWriter, r *http.Request) {
	o := DefaultCheckOptions()
	q := r.URL.Query()
	for _, p := range []struct {
		name string
		dst  *int64
	}{{"warn_lag", &o.WarnLag}, {"crit_lag", &o.CritLag}} {
		if v := q.Get(p.name); v != "" {
			n, err := parseLag(v)
			if err != nil {
				writeError(w, Errorf(http.StatusBadRequest, "%s=%q: %v", p.name, v, err))
				return
			}
			*p.dst = n
		}
	}
	for _, p := range []struct {
		name string
		dst  *int
	}{{"warn_conn", &o.WarnConnPct}, {"crit_conn", &o.CritConnPct}} {
		if v := q.Get(p.name); v != "" {
			n, err := strconv.Atoi(strings.TrimSuffix(v, "%"))
			if err != nil || n < 1 || n > 100 {
				writeError(w, Errorf(http.StatusBadRequest, "%s=%q: want a percentage of max_connections, 1-100", p.name, v))
				return
			}
			*p.dst = n
		}
	}
	if o.WarnLag > o.CritLag || o.WarnConnPct > o.CritConnPct {
		writeError(w, Errorf(http.StatusBadRequest, "a warning threshold is above its critical one"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	writeJSON(w, http.StatusOK, s.backend.Check(ctx, o))
}

func (s *Server) handleReinitialize(w http.ResponseWriter, r *http.Request) {
	if err := s.backend.Reinitialize(r.Context()); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "reinitialized"})
}

func (s *Server) handleHistory(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.backend.History())
}

// forward replays a leader-only request on the leader and relays its
// answer. A request is forwarded once at most, so two nodes that disagree
// on who leads cannot bounce it forever.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, body []byte) {
	if r.Header.Get(forwardedHeader) != "" {
		writeError(w, Errorf(http.StatusServiceUnavailable, "forwarded to a node that is not the leader; leadership is changing, retry"))
		return
	}
	leader := s.backend.LeaderAPI()
	if leader == "" {
		writeError(w, Errorf(http.StatusServiceUnavailable, "no Raft leader known; is a quorum of members up?"))
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, s.scheme+"://"+leader+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		writeError(w, err)
		return
	}
	req.Header = r.Header.Clone()
	req.Header.Set(forwardedHeader, "1")
	resp, err := s.client.Do(req)
	if err != nil {
		writeError(w, Errorf(http.StatusBadGateway, "forward to leader at %s: %v", leader, err))
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// checkHostPort accepts host:port with a non-empty host and a numeric
// port in 1..65535.
func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("missing host")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not a number in 1..65535", port)
	}
	return nil
}
