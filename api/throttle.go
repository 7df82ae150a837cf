package api

import (
	"sync"
	"sync/atomic"
	"time"
)

// Failed API logins are throttled per client address, as sshd's
// MaxStartups and fail2ban would: after throttleAfter failures in a row
// an address waits, twice as long after each further failure, up to
// maxThrottle, and a throttled request is answered 429 without its
// credentials being checked. A success clears the address. Guessing a
// password then costs hours, not seconds, while an operator who mistyped
// waits a second or two.
const (
	throttleAfter = 5
	maxThrottle   = 60 * time.Second
	// forgetAfter drops an address that has been quiet this long.
	forgetAfter = 10 * time.Minute
	// maxTracked bounds the table; beyond it the quietest addresses go.
	maxTracked = 4096
	// logEvery bounds the log lines per address.
	logEvery = 30 * time.Second
)

type loginGuard struct {
	mu        sync.Mutex
	addrs     map[string]*loginRecord
	failures  atomic.Int64 // requests with wrong credentials
	throttled atomic.Int64 // requests answered 429
}

type loginRecord struct {
	failures    int
	until, last time.Time
	lastLog     time.Time
}

func newLoginGuard() *loginGuard { return &loginGuard{addrs: map[string]*loginRecord{}} }

// attemptResult is what one authentication attempt came to.
type attemptResult struct {
	ok       bool
	wait     time.Duration // > 0: throttled, credentials not checked
	failures int           // failures in a row from this address
	logIt    bool          // this failure should be logged
}

// attempt checks one request's credentials for src, under the guard's
// lock: the throttle decision, the check and the count are one step, so
// requests sent all at once when a wait ends get one guess between them,
// not one each. check is a constant-time digest comparison (about a
// microsecond); presented says whether the request carried credentials
// at all (a request without is a 401 but no failure).
func (g *loginGuard) attempt(src string, now time.Time, presented bool, check func() bool) attemptResult {
	g.mu.Lock()
	defer g.mu.Unlock()
	r := g.addrs[src]
	if r != nil && now.Before(r.until) {
		g.throttled.Add(1)
		return attemptResult{wait: r.until.Sub(now), failures: r.failures}
	}
	if check() {
		delete(g.addrs, src)
		return attemptResult{ok: true}
	}
	if !presented {
		return attemptResult{}
	}
	g.failures.Add(1)
	if r == nil {
		g.evict(now)
		r = &loginRecord{}
		g.addrs[src] = r
	}
	r.failures++
	r.last = now
	if over := r.failures - throttleAfter; over >= 0 {
		d := maxThrottle
		if over < 6 {
			d = min(time.Second<<over, maxThrottle)
		}
		r.until = now.Add(d)
	}
	res := attemptResult{failures: r.failures}
	if now.Sub(r.lastLog) >= logEvery {
		r.lastLog, res.logIt = now, true
	}
	return res
}

// evict makes room: quiet addresses first, then, if every address is
// active, the one quiet longest. Called with g.mu held.
func (g *loginGuard) evict(now time.Time) {
	if len(g.addrs) < maxTracked {
		return
	}
	var oldest string
	for a, r := range g.addrs {
		if now.Sub(r.last) > forgetAfter && now.After(r.until) {
			delete(g.addrs, a)
			continue
		}
		if oldest == "" || r.last.Before(g.addrs[oldest].last) {
			oldest = a
		}
	}
	if len(g.addrs) >= maxTracked && oldest != "" {
		delete(g.addrs, oldest)
	}
}

// AuthStats are the API's login counters, for /metrics.
type AuthStats struct {
	Failures, Throttled int64
}
