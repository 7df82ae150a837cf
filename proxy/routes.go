package proxy

import (
	"cmp"
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// target is one backend in one port's routing table, for one routing
// generation: it lives from the SetRoutes that adds the backend to the
// port until the SetRoutes that removes it (or changes its address).
// Its context's Done channel is the generation's close channel: every
// connection proxied to it registers a close on it, so removing the
// backend is one cancel, with no polling and no watcher goroutine.
type target struct {
	b      Backend
	ctx    context.Context
	cancel context.CancelFunc
	active atomic.Int64 // connections of this generation, for least-connections
	st     *backendStats
}

// backendStats accumulate per port and backend name across generations,
// so counters stay monotonic when a member leaves and comes back.
type backendStats struct {
	addr                                      string // latest, guarded by port.mu
	current, total, bytesIn, bytesOut, errors atomic.Int64
	lastWarn                                  atomic.Int64 // unix nanos of the last dial-failure warning
}

// port is one listener with its own routing table and counters.
type port struct {
	name string // "write" or "read"
	ln   *net.TCPListener
	addr string

	current, total, refused atomic.Int64
	denied                  atomic.Int64 // refused for their address (also in refused)
	lastDeniedWarn          atomic.Int64
	heldNow, heldTotal      atomic.Int64
	holdNanos, refusing     atomic.Int64
	lastWarn                atomic.Int64 // unix nanos of the last "port full" warning

	mu       sync.Mutex
	live     map[string]*target // every backend connections may stay on
	pickable []*target          // where new connections go
	cancelTo []Backend          // where cancel requests go
	changed  chan struct{}      // closed (and replaced) on every table change: wakes held clients
	rr       int                // round-robin cursor among least-loaded ties
	stats    map[string]*backendStats
}

func newPort(name string, ln *net.TCPListener) *port {
	return &port{
		name:    name,
		ln:      ln,
		addr:    ln.Addr().String(),
		live:    map[string]*target{},
		changed: make(chan struct{}),
		stats:   map[string]*backendStats{},
	}
}

func backendKey(b Backend) string { return b.Name + "\x00" + b.Addr }

// SetRoutes atomically replaces the routing table. Calling it again
// with an equal table (replica order does not matter) does nothing.
//
// Connections to a backend that leaves a port's table, or whose address
// changes, are closed at once (HAProxy's shutdown-sessions, Stolon's
// "route nowhere when in doubt"): a nil Primary closes every write
// connection. Read connections that fell back to the primary stay open
// while the same primary remains, even once a replica is back.
func (p *Proxy) SetRoutes(r Routes) {
	nr := normalize(r)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || routesEqual(p.routes, nr) {
		return
	}
	old := p.routes
	p.routes = nr

	var closingW, closingR int64
	if p.write != nil {
		var one []Backend
		switch {
		case nr.Primary != nil:
			one = []Backend{*nr.Primary}
			closingW = p.write.apply(p.root, one, one, one)
		case nr.Draining != nil:
			// Live (its connections stay), not pickable (new ones wait).
			one = []Backend{*nr.Draining}
			closingW = p.write.apply(p.root, one, nil, one)
		default:
			closingW = p.write.apply(p.root, nil, nil, nil)
		}
	}
	if p.read != nil {
		live := slices.Clone(nr.Replicas)
		pick := nr.Replicas
		if nr.Primary != nil && p.cfg.ReadFallbackPrimary {
			if !slices.Contains(live, *nr.Primary) {
				live = append(live, *nr.Primary)
			}
			if len(pick) == 0 {
				pick = []Backend{*nr.Primary}
			}
		}
		closingR = p.read.apply(p.root, live, pick, live)
	}
	p.log.Info("proxy routes changed",
		"primary", describe(old.Primary)+" -> "+describe(nr.Primary),
		"draining", describe(nr.Draining),
		"replicas", describeList(old.Replicas)+" -> "+describeList(nr.Replicas),
		"closing_write", closingW, "closing_read", closingR)
}

// normalize copies r (the caller may reuse its slices), names unnamed
// backends after their address, drops backends without an address and
// sorts and dedupes the replicas so that equality ignores order.
func normalize(r Routes) Routes {
	var out Routes
	if r.Primary != nil && r.Primary.Addr != "" {
		b := *r.Primary
		if b.Name == "" {
			b.Name = b.Addr
		}
		out.Primary = &b
	}
	if r.Draining != nil && r.Draining.Addr != "" && out.Primary == nil {
		b := *r.Draining
		if b.Name == "" {
			b.Name = b.Addr
		}
		out.Draining = &b
	}
	for _, b := range r.Replicas {
		if b.Addr == "" {
			continue
		}
		if b.Name == "" {
			b.Name = b.Addr
		}
		out.Replicas = append(out.Replicas, b)
	}
	slices.SortFunc(out.Replicas, func(a, b Backend) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.Addr, b.Addr))
	})
	out.Replicas = slices.Compact(out.Replicas)
	return out
}

func routesEqual(a, b Routes) bool {
	if (a.Primary == nil) != (b.Primary == nil) {
		return false
	}
	if a.Primary != nil && *a.Primary != *b.Primary {
		return false
	}
	if (a.Draining == nil) != (b.Draining == nil) || (a.Draining != nil && *a.Draining != *b.Draining) {
		return false
	}
	return slices.Equal(a.Replicas, b.Replicas)
}

func describe(b *Backend) string {
	if b == nil {
		return "none"
	}
	return b.Name + "@" + b.Addr
}

func describeList(bs []Backend) string {
	if len(bs) == 0 {
		return "[]"
	}
	s := make([]string, len(bs))
	for i := range bs {
		s[i] = describe(&bs[i])
	}
	return "[" + strings.Join(s, " ") + "]"
}

// apply installs a new table on the port. Backends that stay keep their
// generation (their connections live on); removed ones have their
// generation cancelled, which closes their connections. It returns how
// many connections are being closed.
func (pt *port) apply(root context.Context, live, pick, cancelTo []Backend) (closing int64) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	next := make(map[string]*target, len(live))
	for _, b := range live {
		k := backendKey(b)
		if t, ok := pt.live[k]; ok {
			next[k] = t
			continue
		}
		st := pt.stats[b.Name]
		if st == nil {
			st = &backendStats{}
			pt.stats[b.Name] = st
		}
		st.addr = b.Addr
		// A child of root: Close cancels every generation at once. After
		// Close, root is done and a new generation is born closed.
		ctx, cancel := context.WithCancel(root)
		next[k] = &target{b: b, ctx: ctx, cancel: cancel, st: st}
	}
	for k, t := range pt.live {
		if _, ok := next[k]; !ok {
			closing += t.active.Load()
			t.cancel()
		}
	}
	pt.live = next
	pt.pickable = pt.pickable[:0:0]
	for _, b := range pick {
		pt.pickable = append(pt.pickable, next[backendKey(b)])
	}
	pt.cancelTo = slices.Clone(cancelTo)
	close(pt.changed)
	pt.changed = make(chan struct{})
	return closing
}

// pick chooses the routable backend with the fewest connections of its
// generation, breaking ties round-robin, skipping those already tried
// for this client, and counts the connection against it at once so
// concurrent picks see it. nil, ch: nothing routable; ch closes on the
// next table change.
func (pt *port) pick(skip []*target) (*target, <-chan struct{}) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	var ties []*target
	least := int64(-1)
	for _, t := range pt.pickable {
		if slices.Contains(skip, t) {
			continue
		}
		n := t.active.Load()
		switch {
		case least < 0 || n < least:
			least = n
			ties = append(ties[:0], t)
		case n == least:
			ties = append(ties, t)
		}
	}
	if len(ties) == 0 {
		return nil, pt.changed
	}
	t := ties[pt.rr%len(ties)]
	pt.rr++
	t.active.Add(1)
	t.st.current.Add(1)
	t.st.total.Add(1)
	return t, nil
}

// routable reports whether a new connection could be routed now;
// otherwise it returns the channel closed on the next table change.
func (pt *port) routable() (bool, <-chan struct{}) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return len(pt.pickable) > 0, pt.changed
}

func (pt *port) cancelTargets() []Backend {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return pt.cancelTo
}

func (t *target) release() {
	t.active.Add(-1)
	t.st.current.Add(-1)
}

// hold tracks one client's time spent waiting for a route.
type hold struct {
	deadline time.Time
	counted  bool
}

// wait blocks until ch closes (the table changed), the hold deadline
// passes or the proxy shuts down. It reports whether to look again.
func (p *Proxy) wait(pt *port, h *hold, ch <-chan struct{}) bool {
	if !h.counted {
		h.counted = true
		pt.heldTotal.Add(1)
	}
	wait := time.Until(h.deadline)
	if wait <= 0 {
		return false
	}
	pt.heldNow.Add(1)
	start := time.Now()
	defer func() {
		pt.heldNow.Add(-1)
		pt.holdNanos.Add(int64(time.Since(start)))
	}()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	case <-p.root.Done():
		return false
	}
}

// waitRoutable holds the client, reading nothing and dialling nothing,
// until its port has somewhere to route or the hold deadline passes.
func (p *Proxy) waitRoutable(pt *port, h *hold) bool {
	for {
		ok, ch := pt.routable()
		if ok {
			return true
		}
		if !p.wait(pt, h, ch) {
			return false
		}
	}
}

// retryPause is how long a client whose backends all refused waits before
// trying them again, when the routing table does not change first.
const retryPause = 100 * time.Millisecond

// pause waits for a table change, d, the hold deadline or shutdown, and
// reports whether to try again (false only on shutdown or a spent hold).
func (p *Proxy) pause(pt *port, h *hold, ch <-chan struct{}, d time.Duration) bool {
	if !h.counted {
		h.counted = true
		pt.heldTotal.Add(1)
	}
	left := time.Until(h.deadline)
	if left <= 0 {
		return false
	}
	if d > left {
		d = left
	}
	pt.heldNow.Add(1)
	start := time.Now()
	defer func() {
		pt.heldNow.Add(-1)
		pt.holdNanos.Add(int64(time.Since(start)))
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-p.root.Done():
		return false
	}
	return true
}
