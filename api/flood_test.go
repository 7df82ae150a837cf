package api_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgha/pgha/api"
)

// TestFloodLeavesAPIResponsive: many slow clients that never finish their
// headers, and many concurrent requests with huge bodies, must not keep a
// load balancer's health check from being answered, and must not reach
// the backend.
func TestFloodLeavesAPIResponsive(t *testing.T) {
	var joins calls[api.JoinRequest]
	addr := startServer(t, &fakeBackend{
		HealthFn: func() api.HealthInfo {
			return api.HealthInfo{Name: "n1", Role: "primary", Primary: true, PGRunning: true}
		},
		JoinFn: func(_ context.Context, req api.JoinRequest) error { joins.add(req); return nil },
	})

	// Slow clients: a connection each, half a request line, then silence.
	var slow []net.Conn
	defer func() {
		for _, c := range slow {
			c.Close()
		}
	}()
	for range 200 {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", len(slow), err)
		}
		fmt.Fprintf(c, "GET /cluster HTTP/1.1\r\nHost: x\r\nX-Slow: ")
		slow = append(slow, c)
	}

	// Huge bodies, in parallel: each refused after the 64 kB limit.
	hc := rawClient(t)
	// Valid JSON (trailing spaces): only the size limit refuses it.
	big := append([]byte(`{"addr":"127.0.0.1:1"}`), bytes.Repeat([]byte(" "), 8<<20)...)
	var wg sync.WaitGroup
	codes := make(chan int, 40)
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/join", bytes.NewReader(big))
			resp, err := hc.Do(req)
			if err != nil {
				codes <- 0 // the server may close on us once it has refused: fine
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}

	// Meanwhile the health check is answered (a generous bound: this is
	// a liveness property, not a benchmark).
	start := time.Now()
	for range 20 {
		r := do(t, hc, http.MethodGet, "http://"+addr+"/primary", "")
		if r.code != http.StatusOK {
			t.Fatalf("/primary under flood = %d", r.code)
		}
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("20 health checks under flood took %s", took)
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 0 && c != http.StatusBadRequest && c != http.StatusRequestEntityTooLarge {
			t.Errorf("huge body answered %d, want 400/413 or a closed connection", c)
		}
	}
	if n := len(joins.list()); n != 0 {
		t.Errorf("backend called %d times with huge bodies", n)
	}
}

// TestClientTLSHints: the usual TLS mistakes get a message that says what
// to pass, not "is pgha running?".
func TestClientTLSHints(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	hostport := strings.TrimPrefix(srv.URL, "https://")
	_, err := api.NewClient(hostport).Cluster(ctxFor(t))
	if err == nil || !strings.Contains(err.Error(), "serves https: pass --ca-file") {
		t.Errorf("http to an https agent: %v", err)
	}
	_, err = api.NewClient(srv.URL).Cluster(ctxFor(t))
	if err == nil || !strings.Contains(err.Error(), "cannot verify the certificate") {
		t.Errorf("https without the CA: %v", err)
	}
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer plain.Close()
	_, err = api.NewClient("https://" + strings.TrimPrefix(plain.URL, "http://")).Cluster(ctxFor(t))
	if err == nil || !strings.Contains(err.Error(), "does not speak https") {
		t.Errorf("https to a plain agent: %v", err)
	}
}
