package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLoginGuardBacksOff(t *testing.T) {
	g := newLoginGuard()
	now := time.Unix(1000, 0)
	for i := 1; i < throttleAfter; i++ {
		g.failed("10.0.0.1", now)
		if d := g.blocked("10.0.0.1", now); d != 0 {
			t.Fatalf("blocked after %d failures", i)
		}
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}
	for _, w := range want {
		g.failed("10.0.0.1", now)
		if d := g.blocked("10.0.0.1", now); d != w {
			t.Fatalf("blocked for %v, want %v", d, w)
		}
	}
	for range 20 {
		g.failed("10.0.0.1", now)
	}
	if d := g.blocked("10.0.0.1", now); d != maxThrottle {
		t.Fatalf("blocked for %v, want the cap %v", d, maxThrottle)
	}
	if d := g.blocked("10.0.0.1", now.Add(maxThrottle)); d != 0 {
		t.Fatalf("still blocked after the wait: %v", d)
	}
	// Other addresses are not affected; a success clears an address.
	if d := g.blocked("10.0.0.2", now); d != 0 {
		t.Fatalf("an innocent address is blocked for %v", d)
	}
	g.succeeded("10.0.0.1")
	if d := g.blocked("10.0.0.1", now); d != 0 {
		t.Fatalf("blocked after a success: %v", d)
	}
}

func TestLoginGuardLogsSparingly(t *testing.T) {
	g := newLoginGuard()
	now := time.Unix(1000, 0)
	logged := 0
	for i := range 100 {
		if _, l := g.failed("10.0.0.1", now.Add(time.Duration(i)*100*time.Millisecond)); l {
			logged++
		}
	}
	// 10 s of failures: the first is logged, the next only after logEvery.
	if logged != 1 {
		t.Fatalf("logged %d times in 10 s, want 1", logged)
	}
	if _, l := g.failed("10.0.0.1", now.Add(logEvery+10*time.Second)); !l {
		t.Fatal("not logged again after logEvery")
	}
}

func TestLoginGuardBounded(t *testing.T) {
	g := newLoginGuard()
	now := time.Unix(1000, 0)
	for i := range maxTracked + 100 {
		g.failed(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), now.Add(time.Duration(i)*time.Millisecond))
	}
	if n := len(g.addrs); n > maxTracked {
		t.Fatalf("%d addresses tracked, want at most %d", n, maxTracked)
	}
}

// TestFailedLoginsThrottledAndLogged drives the real server: wrong
// passwords are logged (address, endpoint, user) and, after a few, the
// address gets 429 even with the right password, until it has waited.
func TestFailedLoginsThrottledAndLogged(t *testing.T) {
	var mu sync.Mutex
	var logBuf bytes.Buffer
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return logBuf.Write(p) })
	srv, err := New(Options{Addr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(w, nil)),
		Auth: Credentials{Basic: "admin:s3cret"}}, nopBackend{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	post := func(up string) *http.Response {
		req, _ := http.NewRequest("POST", "http://"+srv.Addr()+"/v1/pause", strings.NewReader(`{"paused":false}`))
		req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(up)))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	for i := range throttleAfter {
		if r := post("admin:guess"); r.StatusCode != http.StatusUnauthorized {
			t.Fatalf("wrong password %d: %d, want 401", i, r.StatusCode)
		}
	}
	r := post("admin:s3cret")
	if r.StatusCode != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" {
		t.Fatalf("after %d failures: %d (Retry-After %q), want 429 with Retry-After", throttleAfter, r.StatusCode, r.Header.Get("Retry-After"))
	}
	if st := srv.AuthStats(); st.Failures != throttleAfter || st.Throttled != 1 {
		t.Fatalf("stats = %+v", st)
	}
	mu.Lock()
	out := logBuf.String()
	mu.Unlock()
	for _, want := range []string{"API login failed", "from=127.0.0.1", `endpoint="POST /v1/pause"`, "user=admin"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "API login failed") != 1 {
		t.Errorf("every failure logged, want once per %v:\n%s", logEvery, out)
	}
	if strings.Contains(out, "guess") {
		t.Error("the wrong password reached the log")
	}
	time.Sleep(1100 * time.Millisecond) // the first wait is 1 s
	if r := post("admin:s3cret"); r.StatusCode != http.StatusOK {
		t.Fatalf("right password after the wait: %d", r.StatusCode)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
