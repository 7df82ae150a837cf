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

func wrong() bool { return false }
func right() bool { return true }

func TestLoginGuardBacksOff(t *testing.T) {
	g := newLoginGuard()
	now := time.Unix(1000, 0)
	for i := 1; i < throttleAfter; i++ {
		if r := g.attempt("10.0.0.1", now, true, wrong); r.ok || r.wait != 0 {
			t.Fatalf("failure %d: %+v", i, r)
		}
	}
	// Each further failure sets a longer wait; while it runs, the
	// credentials are not even checked (a right password is refused too).
	for _, w := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		g.attempt("10.0.0.1", now, true, wrong)
		checked := false
		r := g.attempt("10.0.0.1", now, true, func() bool { checked = true; return true })
		if r.wait != w || r.ok || checked {
			t.Fatalf("throttled attempt = %+v (checked %v), want a %v wait, unchecked", r, checked, w)
		}
		now = now.Add(w)
	}
	for range 20 {
		g.attempt("10.0.0.1", now, true, wrong)
		now = now.Add(maxThrottle)
	}
	g.attempt("10.0.0.1", now, true, wrong)
	if r := g.attempt("10.0.0.1", now, true, right); r.wait != maxThrottle {
		t.Fatalf("wait %v, want the cap %v", r.wait, maxThrottle)
	}
	// Other addresses are not affected; a success clears an address.
	if r := g.attempt("10.0.0.2", now, true, right); !r.ok {
		t.Fatalf("an innocent address: %+v", r)
	}
	now = now.Add(maxThrottle)
	if r := g.attempt("10.0.0.1", now, true, right); !r.ok {
		t.Fatalf("right password after the wait: %+v", r)
	}
	if r := g.attempt("10.0.0.1", now, true, wrong); r.wait != 0 || r.failures != 1 {
		t.Fatalf("after a success the count starts again: %+v", r)
	}
	// No credentials at all is no failure.
	for range 10 {
		g.attempt("10.0.0.3", now, false, wrong)
	}
	if r := g.attempt("10.0.0.3", now, true, right); !r.ok {
		t.Fatalf("requests without credentials throttled an address: %+v", r)
	}
}

func TestLoginGuardLogsSparingly(t *testing.T) {
	g := newLoginGuard()
	now := time.Unix(1000, 0)
	logged := 0
	for i := range 100 {
		// Step past the throttle so that every attempt is a failure.
		at := now.Add(time.Duration(i) * maxThrottle / 100)
		g.addrs["10.0.0.1"] = withoutWait(g.addrs["10.0.0.1"])
		if r := g.attempt("10.0.0.1", at, true, wrong); r.logIt {
			logged++
		}
	}
	// 60 s of failures, logged at most every logEvery.
	if logged != 2 {
		t.Fatalf("logged %d times in %v, want 2", logged, maxThrottle)
	}
}

func withoutWait(r *loginRecord) *loginRecord {
	if r != nil {
		r.until = time.Time{}
	}
	return r
}

func TestLoginGuardBounded(t *testing.T) {
	g := newLoginGuard()
	now := time.Unix(1000, 0)
	for i := range maxTracked + 100 {
		g.attempt(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), now.Add(time.Duration(i)*time.Millisecond), true, wrong)
	}
	if n := len(g.addrs); n > maxTracked {
		t.Fatalf("%d addresses tracked, want at most %d", n, maxTracked)
	}
}

func TestClientKeyIPv6Prefix(t *testing.T) {
	for addr, want := range map[string]string{
		"10.1.2.3:5555":               "10.1.2.3",
		"[2001:db8:1:2:3:4:5:6]:5555": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:80":   "2001:db8:1:2::/64",
		"[::ffff:10.1.2.3]:5555":      "::ffff:10.1.2.3",
		"not-an-address":              "not-an-address",
	} {
		r := &http.Request{RemoteAddr: addr}
		if got := clientKey(r); got != want {
			t.Errorf("clientKey(%s) = %s, want %s", addr, got, want)
		}
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
