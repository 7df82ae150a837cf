// Package proxy is pgha's embedded replacement for HAProxy: a write port
// that always reaches the primary and a read port balanced over the
// healthy replicas. The agent feeds it routing tables (SetRoutes); the
// proxy never decides who the primary is. See DESIGN.md.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Backend is one PostgreSQL server the proxy may route to.
type Backend struct {
	Name string // member name; identifies the backend in stats and logs
	Addr string // PostgreSQL host:port
}

// Routes is the routing table the agent hands to SetRoutes.
type Routes struct {
	// Primary receives the write port's connections. nil means there is
	// no primary right now (or the agent is in doubt): new write
	// connections are held, existing ones are closed.
	Primary *Backend
	// Draining, set only when Primary is nil, is a primary about to stop
	// for a switchover: new write connections are held, but connections
	// already open to it (a client half-way through authentication
	// included) are left alone; the server ends them itself when it
	// stops, with a clean error, or they finish their work first.
	Draining *Backend
	// Replicas are the healthy replicas behind the read port.
	Replicas []Backend
}

// Config configures New. Zero durations and counts take the defaults.
type Config struct {
	WriteAddr, ReadAddr string        // listen host:port; "" disables that port
	HoldTimeout         time.Duration // how long a client waits for a backend; default 30s
	ConnectTimeout      time.Duration // dial to the backend; default 3s
	MaxConn             int           // client connections per port; default 1000
	// ReadFallbackPrimary makes the read port use the primary when no
	// replica is routable.
	ReadFallbackPrimary bool
	// KeepAlive is the TCP keepalive period on client and backend
	// sockets; default 15s, negative disables keepalive.
	KeepAlive time.Duration
	// HandshakeTimeout bounds the wait for a client's first 8 bytes;
	// default 10s. A client that sends nothing is closed after it.
	HandshakeTimeout time.Duration
	// Loops is how many event loops copy the proxied bytes (Linux; see
	// DESIGN.md, "The event loop"); 0 copies each connection with two
	// goroutines instead, the only way off Linux. The same meaning as the
	// proxy.event_loops setting, whose default (1) is the configuration's.
	Loops int
	// Allowed are the client networks the proxy relays for; a client
	// from any other address is refused before a byte reaches a backend.
	// PostgreSQL sees the proxy's address, not the client's, so its own
	// pg_hba.conf cannot make this check. Empty allows every address
	// (tests); the agent always passes postgresql.allowed_networks.
	Allowed []netip.Prefix
	Logger  *slog.Logger
}

const (
	defaultHoldTimeout      = 30 * time.Second
	defaultConnectTimeout   = 3 * time.Second
	defaultMaxConn          = 1000
	defaultKeepAlive        = 15 * time.Second
	defaultHandshakeTimeout = 10 * time.Second

	// refuseTimeout bounds how long the proxy reads a startup packet it
	// only needs in order to answer it with an error.
	refuseTimeout = 2 * time.Second
	// maxRefusing caps the refusal handshakes in flight per port, so a
	// connection flood beyond MaxConn cannot cost more than that many
	// goroutines and descriptors; beyond it clients are closed unanswered.
	maxRefusing = 64
)

// finTimeout bounds the half-closed state: once one direction has ended
// cleanly, the other must end within it. PostgreSQL never half-closes on
// purpose, so this only reaps pairs whose peer went quiet (e.g. an idle
// pooled client that never reads the FIN). A variable for tests.
var finTimeout = 10 * time.Second

func (c Config) withDefaults() (Config, error) {
	if c.HoldTimeout == 0 {
		c.HoldTimeout = defaultHoldTimeout
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = defaultConnectTimeout
	}
	if c.MaxConn == 0 {
		c.MaxConn = defaultMaxConn
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = defaultKeepAlive
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = defaultHandshakeTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.HoldTimeout < 0:
		return c, fmt.Errorf("proxy: hold timeout %s is negative", c.HoldTimeout)
	case c.ConnectTimeout < 0:
		return c, fmt.Errorf("proxy: connect timeout %s is negative", c.ConnectTimeout)
	case c.HandshakeTimeout < 0:
		return c, fmt.Errorf("proxy: handshake timeout %s is negative", c.HandshakeTimeout)
	case c.MaxConn < 0:
		return c, fmt.Errorf("proxy: max connections %d is negative", c.MaxConn)
	case c.Loops < 0:
		return c, fmt.Errorf("proxy: event loops %d is negative", c.Loops)
	}
	return c, nil
}

// Proxy owns the two listeners, the routing table and every proxied
// connection.
type Proxy struct {
	cfg    Config
	log    *slog.Logger
	dialer net.Dialer

	// root is cancelled by Close (or when Serve's context ends). Every
	// routing generation's context is a child of it, so cancelling it
	// closes every proxied connection at once.
	root     context.Context
	shutdown context.CancelFunc

	write, read *port // nil when disabled

	// loops copy the bytes of proxied connections (none when the
	// platform has no event loop or Config.Loops is 0); next picks one
	// round-robin.
	loops []*evloop
	next  atomic.Uint32

	mu      sync.Mutex
	routes  Routes // normalised, see SetRoutes
	closed  bool
	serving bool
	wg      sync.WaitGroup // accept loops, handlers, refusals
}

// New listens on the configured ports. Serve must run for connections
// to be accepted; until then they wait in the kernel's backlog.
func New(cfg Config) (*Proxy, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg, log: cfg.Logger}
	p.root, p.shutdown = context.WithCancel(context.Background())
	ka := cfg.KeepAlive
	if ka < 0 {
		ka = -1 // net's spelling of "off"
	}
	p.dialer = net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: ka}
	lc := net.ListenConfig{KeepAlive: ka}

	listen := func(name, addr string) (*port, error) {
		if addr == "" {
			return nil, nil
		}
		ln, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("proxy: listen %s port on %s: %w", name, addr, err)
		}
		tl, ok := ln.(*net.TCPListener)
		if !ok { // cannot happen for "tcp", but never proxy through a wrapper
			ln.Close()
			return nil, fmt.Errorf("proxy: listen %s port on %s: not a TCP listener", name, addr)
		}
		return newPort(name, tl), nil
	}
	if p.write, err = listen("write", cfg.WriteAddr); err != nil {
		p.shutdown()
		return nil, err
	}
	if p.read, err = listen("read", cfg.ReadAddr); err != nil {
		if p.write != nil {
			p.write.ln.Close()
		}
		p.shutdown()
		return nil, err
	}
	for range cfg.Loops {
		l, err := newEvloop(p.log)
		if err != nil {
			// No event loop here (not Linux, or out of descriptors):
			// the goroutine copy works everywhere.
			log := p.log.Debug
			if runtime.GOOS == "linux" {
				log = p.log.Warn
			}
			log("proxy event loops unavailable; copying with goroutines", "err", err)
			p.closeLoops()
			break
		}
		p.loops = append(p.loops, l)
	}
	return p, nil
}

// closeLoops stops loops that never ran (run closes its own otherwise).
func (p *Proxy) closeLoops() {
	for _, l := range p.loops {
		l.stop()
		l.run() // returns at once: stopped, with no session
	}
	p.loops = nil
}

// pickLoop returns the event loop for a new connection (round-robin,
// skipping loops that failed), nil for the goroutine copy.
func (p *Proxy) pickLoop() *evloop {
	n := len(p.loops)
	start := int(p.next.Add(1))
	for k := range n {
		if l := p.loops[(start+k)%n]; !l.failed.Load() {
			return l
		}
	}
	return nil
}

// Addrs returns the addresses actually listened on ("" for a disabled
// port), useful when the configuration asked for port 0.
func (p *Proxy) Addrs() (write, read string) {
	if p.write != nil {
		write = p.write.addr
	}
	if p.read != nil {
		read = p.read.addr
	}
	return write, read
}

// Serve accepts connections until ctx ends or Close is called. Either
// way the proxy is shut down (listeners and every proxied connection
// closed), and Serve returns once all its goroutines have ended. It may
// be called once; later calls return at once.
func (p *Proxy) Serve(ctx context.Context) {
	p.mu.Lock()
	if p.closed || p.serving {
		p.mu.Unlock()
		return
	}
	p.serving = true
	// Added under mu while not closed: Close's Wait never races an Add
	// from zero.
	for _, l := range p.loops {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			l.run()
		}()
	}
	for _, pt := range p.ports() {
		p.wg.Add(1)
		go p.acceptLoop(pt)
	}
	p.mu.Unlock()

	stopped := make(chan struct{})
	cancelStop := context.AfterFunc(ctx, func() {
		defer close(stopped)
		p.stop()
	})
	<-p.root.Done()
	if !cancelStop() {
		<-stopped
	}
	p.wg.Wait()
}

// Close closes the listeners and every proxied connection and waits for
// all the proxy's goroutines. It is idempotent.
func (p *Proxy) Close() error {
	p.stop()
	p.wg.Wait()
	return nil
}

// stop marks the proxy closed, cancels root (which closes every proxied
// connection through the generation contexts) and closes the listeners
// (which ends the accept loops). It does not wait.
func (p *Proxy) stop() {
	p.mu.Lock()
	already, serving := p.closed, p.serving
	p.closed = true
	p.mu.Unlock()
	if already {
		return
	}
	p.shutdown()
	for _, pt := range p.ports() {
		pt.ln.Close()
	}
	// The loops end every session they still carry (the generation
	// contexts above have asked them to already); loops that never
	// ran are closed here.
	if serving {
		for _, l := range p.loops {
			l.stop()
		}
	} else {
		p.closeLoops()
	}
}

func (p *Proxy) ports() []*port {
	var ps []*port
	if p.write != nil {
		ps = append(ps, p.write)
	}
	if p.read != nil {
		ps = append(ps, p.read)
	}
	return ps
}

// allowed reports whether c's client address is in cfg.Allowed.
func (p *Proxy) allowed(c *net.TCPConn) bool {
	if len(p.cfg.Allowed) == 0 {
		return true
	}
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return false
	}
	a := ta.AddrPort().Addr().Unmap()
	for _, n := range p.cfg.Allowed {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// refuse answers c with answer in a goroutine of its own, unless
// maxRefusing answers are already under way: then c is just closed.
func (p *Proxy) refuse(pt *port, c *net.TCPConn, answer func(*port, *net.TCPConn)) {
	pt.refused.Add(1)
	if pt.refusing.Add(1) > maxRefusing {
		pt.refusing.Add(-1)
		c.Close()
		return
	}
	p.wg.Add(1)
	go answer(pt, c)
}

func (p *Proxy) acceptLoop(pt *port) {
	defer p.wg.Done()
	var backoff time.Duration
	for {
		c, err := pt.ln.AcceptTCP()
		if err != nil {
			if p.root.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors and the like: back off as net/http does
			// rather than spin, and say so once per episode.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
				p.log.Warn("proxy accept failed; backing off", "port", pt.name, "err", err)
			} else if backoff < time.Second {
				backoff *= 2
			}
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-p.root.Done():
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		pt.total.Add(1)
		if !p.allowed(c) {
			pt.denied.Add(1)
			p.refuse(pt, c, p.refuseDenied)
			continue
		}
		if pt.current.Add(1) > int64(p.cfg.MaxConn) {
			pt.current.Add(-1)
			p.refuse(pt, c, p.refuseFull)
			continue
		}
		p.wg.Add(1)
		go p.handle(pt, c)
	}
}
