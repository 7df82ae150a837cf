package raftfsm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// handshakeTimeout bounds a TLS handshake on either side. Members are on
// a LAN and answer in milliseconds; the bound is for a peer that connects
// and says nothing.
const handshakeTimeout = 5 * time.Second

// maxPendingHandshakes bounds the accepted connections whose handshake is
// still running: beyond it new ones are closed at once, so a flood of
// silent connections cannot pile up goroutines.
const maxPendingHandshakes = 64

// refusalLogInterval is how often a refused peer (per remote host) is
// logged: a misconfigured node retries several times a second.
const refusalLogInterval = time.Minute

// TLSStreamLayer is a raft.StreamLayer over mutual TLS. Accept hands Raft
// only connections whose handshake succeeded, so Raft never reads a byte
// from a peer that has not shown a certificate of the cluster CA; a
// refused handshake is logged here, once a minute per remote host at
// warn level, with the reason, instead of as Raft's "failed to decode
// incoming command" for every attempt.
type TLSStreamLayer struct {
	ln        net.Listener
	advertise net.Addr
	server    *tls.Config
	client    *tls.Config
	logger    hclog.Logger

	conns   chan net.Conn
	closed  chan struct{}
	ctx     context.Context // ends at Close
	cancel  context.CancelFunc
	once    sync.Once
	pending chan struct{} // semaphore of running handshakes
	wg      sync.WaitGroup

	mu      sync.Mutex
	refused map[string]*refusal // remote host -> last log
}

type refusal struct {
	logged     time.Time
	suppressed int
}

var _ raft.StreamLayer = (*TLSStreamLayer)(nil)

// NewTLSStreamLayer listens on bind. server must require and verify client
// certificates; client must present one (tlsconf's Server and PeerClient).
// advertise is the address peers dial; nil means the listener's address.
func NewTLSStreamLayer(bind string, advertise net.Addr, server, client *tls.Config, logger hclog.Logger) (*TLSStreamLayer, error) {
	if server == nil || client == nil {
		return nil, errors.New("raft tls: both a server and a client configuration are needed")
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	if advertise == nil {
		advertise = ln.Addr()
	}
	if a, ok := advertise.(*net.TCPAddr); !ok || a.IP == nil || a.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("raft advertise address %s is not one peers can dial (set raft.advertise)", advertise)
	}
	s := &TLSStreamLayer{ln: ln, advertise: advertise, server: server, client: client, logger: logger,
		conns: make(chan net.Conn), closed: make(chan struct{}), pending: make(chan struct{}, maxPendingHandshakes),
		refused: map[string]*refusal{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// acceptLoop accepts TCP connections and handshakes each in its own
// goroutine, so one slow peer never delays the others.
func (s *TLSStreamLayer) acceptLoop() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.closed:
				return
			default:
			}
			// Out of file descriptors and the like: back off as Raft's
			// own loop would, rather than spin.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.logger.Error("raft tls: accept", "error", err)
			select {
			case <-s.closed:
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		select {
		case s.pending <- struct{}{}:
		default:
			s.logger.Warn("raft tls: too many handshakes in progress; closing connection", "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.pending }()
			s.handshake(c)
		}()
	}
}

func (s *TLSStreamLayer) handshake(raw net.Conn) {
	tc := tls.Server(raw, s.server)
	// s.ctx ends at Close, which so aborts a handshake stuck on a silent
	// peer.
	ctx, cancel := context.WithTimeout(s.ctx, handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		select {
		case <-s.closed:
		default:
			s.logRefusal(raw.RemoteAddr(), err)
		}
		return
	}
	select {
	case s.conns <- tc:
	case <-s.closed:
		tc.Close()
	}
}

// logRefusal reports a failed handshake with a hint at the usual cause,
// at most once per refusalLogInterval per remote host.
func (s *TLSStreamLayer) logRefusal(remote net.Addr, err error) {
	host := remote.String()
	if h, _, serr := net.SplitHostPort(host); serr == nil {
		host = h
	}
	now := time.Now()
	s.mu.Lock()
	r := s.refused[host]
	if r == nil {
		r = &refusal{}
		s.refused[host] = r
	}
	if !r.logged.IsZero() && now.Sub(r.logged) < refusalLogInterval {
		r.suppressed++
		s.mu.Unlock()
		return
	}
	suppressed := r.suppressed
	r.logged, r.suppressed = now, 0
	if len(s.refused) > 1024 {
		// Forget old entries so scanners cannot grow the map forever.
		for h, v := range s.refused {
			if now.Sub(v.logged) > refusalLogInterval {
				delete(s.refused, h)
			}
		}
	}
	s.mu.Unlock()
	s.logger.Warn("raft tls: refused connection: "+handshakeHint(err), "remote", remote.String(), "error", err.Error(), "refused_since_last_log", suppressed)
}

// handshakeHint turns a server-side handshake error into the likely
// misconfiguration.
func handshakeHint(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "didn't provide a certificate"):
		return "the peer presented no client certificate (is tls configured on that node?)"
	case strings.Contains(msg, "unknown authority"):
		return "the peer's certificate is not signed by this cluster's CA (tls.ca_file)"
	case strings.Contains(msg, "does not look like a TLS handshake"):
		return "the peer does not speak TLS (tls must be configured on every node or none)"
	case strings.Contains(msg, "expired") || strings.Contains(msg, "not yet valid"):
		return "the peer's certificate is expired or not yet valid (check its dates and the clocks)"
	case strings.Contains(msg, "bad certificate") || strings.Contains(msg, "unknown certificate authority"):
		return "the peer does not accept this node's certificate (is its tls.ca_file the same CA?)"
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "i/o timeout"):
		return "the peer did not complete a TLS handshake in time"
	}
	return "TLS handshake failed"
}

// Accept returns the next connection that completed its handshake.
func (s *TLSStreamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.closed:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; handshakes in progress are aborted. Connections
// already handed to Raft are Raft's to close.
func (s *TLSStreamLayer) Close() error {
	var err error
	s.once.Do(func() {
		close(s.closed)
		s.cancel()
		err = s.ln.Close()
		s.wg.Wait()
	})
	return err
}

// Addr is the advertised address (what Raft stores as ours).
func (s *TLSStreamLayer) Addr() net.Addr { return s.advertise }

// Dial connects to a peer and completes the handshake within timeout.
func (s *TLSStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if timeout <= 0 || timeout > handshakeTimeout {
		timeout = handshakeTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: s.client}
	c, err := d.DialContext(ctx, "tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("raft tls dial %s: %w", address, err)
	}
	return c, nil
}

// Probe checks that a TLS connection to address completes and that the
// peer accepts this node's certificate. TLS 1.3 tells a client that its
// certificate was refused only on the first read, so Probe waits briefly
// for one: the peer's Raft sends nothing unasked, so a timeout means
// accepted and an alert means refused.
func (s *TLSStreamLayer) Probe(address string, timeout time.Duration) error {
	c, err := s.Dial(raft.ServerAddress(address), timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		return nil
	}
	return fmt.Errorf("raft tls %s: %w", address, err)
}
