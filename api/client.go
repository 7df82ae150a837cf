package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Client talks to one agent's REST API. The CLI is a client of exactly
// the endpoints the server exposes.
type Client struct {
	base  string
	http  *http.Client
	creds Credentials
	opts  ClientOptions
}

// NewClient returns a client for the plain-http API at addr (host:port or
// a URL), without credentials.
func NewClient(addr string) *Client { return NewClientWith(addr, ClientOptions{}) }

// NewClientWith returns a client for the API at addr: https when o.TLS is
// set (or addr says https://), with o's credentials on every request.
func NewClientWith(addr string, o ClientOptions) *Client {
	base := addr
	if !strings.Contains(base, "://") {
		scheme := "http://"
		if o.TLS != nil {
			scheme = "https://"
		}
		base = scheme + base
	}
	transport := o.Transport
	if transport == nil {
		transport = NewTransport(o.TLS)
	}
	return &Client{
		base:  strings.TrimRight(base, "/"),
		http:  &http.Client{Timeout: 150 * time.Second, Transport: transport},
		creds: Credentials{Basic: o.Auth, Token: o.Token},
		opts:  o,
	}
}

// NewTransport returns an HTTP transport for the API: the default one
// when tc is nil, else a transport with tc.
func NewTransport(tc *tls.Config) http.RoundTripper {
	if tc == nil {
		return http.DefaultTransport
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = tc.Clone()
	return t
}

// WithAddr returns a client for another agent with the same TLS settings
// and credentials (the CLI fans out to members this way).
func (c *Client) WithAddr(addr string) *Client {
	o := c.opts
	o.Transport = c.http.Transport // one connection pool for the whole fan-out
	return NewClientWith(addr, o)
}

// Addr returns the API base URL.
func (c *Client) Addr() string { return c.base }

// Cluster fetches GET /cluster.
func (c *Client) Cluster(ctx context.Context) (ClusterInfo, error) {
	var ci ClusterInfo
	_, err := c.do(ctx, http.MethodGet, "/cluster", nil, &ci)
	return ci, err
}

// Health fetches GET /health; a 503 is not an error, it is the answer.
func (c *Client) Health(ctx context.Context) (HealthInfo, bool, error) {
	return c.Probe(ctx, "/health")
}

// Probe fetches a health endpoint (path with its query, e.g.
// "/replica?lag=16MB"): ok is the 200/503 answer; err means no answer.
func (c *Client) Probe(ctx context.Context, path string) (HealthInfo, bool, error) {
	// Health endpoints are open: no credentials on the wire for them
	// (they may be plain http, and agents probe each other every second).
	anon := *c
	anon.creds = Credentials{}
	var h HealthInfo
	code, err := anon.do(ctx, http.MethodGet, path, nil, &h)
	if code == http.StatusServiceUnavailable {
		return h, false, nil
	}
	return h, err == nil, err
}

// Reinitialize asks the agent to re-clone its replica from the primary.
func (c *Client) Reinitialize(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodPost, "/reinitialize", struct{}{}, nil)
	return err
}

// Metrics fetches GET /metrics as text.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/metrics", nil)
	if err != nil {
		return "", err
	}
	c.creds.setAuth(req)
	resp, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("cannot reach the pgha agent at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", &StatusError{Code: resp.StatusCode, Msg: fmt.Sprintf("GET /metrics: %s", strings.TrimSpace(string(data)))}
	}
	return string(data), nil
}

// Join asks the local agent to join the cluster of req.Addr.
func (c *Client) Join(ctx context.Context, req JoinRequest) error {
	_, err := c.do(ctx, http.MethodPost, "/v1/join", req, nil)
	return err
}

// Leave asks the agent to leave the cluster.
func (c *Client) Leave(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodPost, "/v1/leave", struct{}{}, nil)
	return err
}

// Remove asks the cluster to remove a member.
func (c *Client) Remove(ctx context.Context, req RemoveRequest) error {
	_, err := c.do(ctx, http.MethodPost, "/v1/remove", req, nil)
	return err
}

// do sends a request and decodes a JSON answer into out. Non-2xx answers
// become errors carrying the server's reason.
func (c *Client) do(ctx context.Context, method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return 0, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	c.creds.setAuth(req)
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return 0, fmt.Errorf("pgha agent at %s did not answer in time: %w", c.base, err)
		}
		var verr *tls.CertificateVerificationError
		var rerr tls.RecordHeaderError
		switch {
		case errors.As(err, &verr):
			return 0, fmt.Errorf("cannot verify the certificate of the pgha agent at %s (pass --ca-file with the cluster CA, or -c with a node's configuration): %w", c.base, err)
		case errors.As(err, &rerr) || strings.Contains(err.Error(), "HTTP response to HTTPS client"):
			return 0, fmt.Errorf("the pgha agent at %s does not speak https (no tls configured there? drop --ca-file): %w", c.base, err)
		}
		return 0, fmt.Errorf("cannot reach the pgha agent at %s (is `pgha run` running there? set --api or PGHA_API): %w", c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("read answer from %s: %w", c.base, err)
	}
	if resp.StatusCode == http.StatusBadRequest && bytes.Contains(data, []byte("HTTP request to an HTTPS server")) {
		return resp.StatusCode, fmt.Errorf("the pgha agent at %s serves https: pass --ca-file with the cluster CA (or -c with a node's configuration)", c.base)
	}
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
			if out != nil && resp.StatusCode == http.StatusServiceUnavailable {
				_ = json.Unmarshal(data, out)
			}
			return resp.StatusCode, &StatusError{Code: resp.StatusCode, Msg: eb.Error}
		}
		if out != nil && resp.StatusCode == http.StatusServiceUnavailable && json.Unmarshal(data, out) == nil {
			return resp.StatusCode, &StatusError{Code: resp.StatusCode, Msg: "service unavailable"}
		}
		return resp.StatusCode, &StatusError{Code: resp.StatusCode, Msg: fmt.Sprintf("%s %s: %s", method, path, strings.TrimSpace(string(data)))}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode answer from %s%s: %w", c.base, path, err)
		}
	}
	return resp.StatusCode, nil
}

// Switchover asks the cluster for a planned switchover.
func (c *Client) Switchover(ctx context.Context, req SwitchoverRequest) (SwitchoverResult, error) {
	var res SwitchoverResult
	_, err := c.do(ctx, http.MethodPost, "/switchover", req, &res)
	return res, err
}

// Failover asks the cluster to promote req.Candidate.
func (c *Client) Failover(ctx context.Context, req SwitchoverRequest) (SwitchoverResult, error) {
	var res SwitchoverResult
	_, err := c.do(ctx, http.MethodPost, "/failover", req, &res)
	return res, err
}

// SetPaused turns maintenance mode on or off.
func (c *Client) SetPaused(ctx context.Context, paused bool) error {
	_, err := c.do(ctx, http.MethodPost, "/v1/pause", PauseRequest{Paused: paused}, nil)
	return err
}

// History fetches GET /history.
func (c *Client) History(ctx context.Context) ([]HistoryEntry, error) {
	var h []HistoryEntry
	_, err := c.do(ctx, http.MethodGet, "/history", nil, &h)
	return h, err
}

// Config fetches GET /config.
func (c *Client) Config(ctx context.Context) (DynamicConfig, error) {
	var dc DynamicConfig
	_, err := c.do(ctx, http.MethodGet, "/config", nil, &dc)
	return dc, err
}

// PatchConfig sends PATCH /config with a JSON merge patch.
func (c *Client) PatchConfig(ctx context.Context, patch map[string]any) (DynamicConfig, error) {
	var dc DynamicConfig
	_, err := c.do(ctx, http.MethodPatch, "/config", patch, &dc)
	return dc, err
}

// Restart restarts this member's PostgreSQL.
func (c *Client) Restart(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodPost, "/restart", struct{}{}, nil)
	return err
}

// Reload reloads this member's PostgreSQL configuration.
func (c *Client) Reload(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodPost, "/reload", struct{}{}, nil)
	return err
}

// CancelSwitchover drops a scheduled switchover.
func (c *Client) CancelSwitchover(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodDelete, "/switchover", nil, nil)
	return err
}

// Check runs GET /check with the given thresholds.
func (c *Client) Check(ctx context.Context, o CheckOptions) (CheckResult, error) {
	var res CheckResult
	q := fmt.Sprintf("/check?warn_lag=%d&crit_lag=%d&warn_conn=%d&crit_conn=%d", o.WarnLag, o.CritLag, o.WarnConnPct, o.CritConnPct)
	_, err := c.do(ctx, http.MethodGet, q, nil, &res)
	return res, err
}
