package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// warnInterval rate-limits warnings that a misbehaving backend or a
// connection flood would otherwise repeat once per client.
const warnInterval = 10 * time.Second

// handle owns one accepted client from hold to close. Once the client is
// connected to a backend it waits for the event loop to end the session
// (or, with the goroutine copy, relays the backend-to-client direction).
func (p *Proxy) handle(pt *port, c *net.TCPConn) {
	defer p.wg.Done()
	defer pt.current.Add(-1)
	defer c.Close()
	// Close must reach the client at every stage before the relay (held,
	// handshaking, dialling); the relay has its generation's close.
	defer closeOnDone(p.root, c)()

	// Hold first, reading nothing: the client's startup packet waits in
	// the kernel until there is a backend to hand it to.
	h := hold{deadline: time.Now().Add(p.cfg.HoldTimeout)}
	if !p.waitRoutable(pt, &h) {
		p.refuseNoRoute(pt, c, nil)
		return
	}

	c.SetReadDeadline(time.Now().Add(p.cfg.HandshakeTimeout))
	first, err := readHeader(c)
	if err != nil {
		// A client that goes away is its own business; garbage and
		// silence are worth a debug line.
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && p.root.Err() == nil {
			p.log.Debug("proxy dropped a client before routing", "port", pt.name, "client", c.RemoteAddr().String(), "err", err)
		}
		return
	}
	if first.code() == codeCancel {
		p.forwardCancel(pt, c, first)
		return
	}

	// A session (or an SSL/GSS request, which the backend answers).
	var tried []*target
	var lastErr error
	for {
		t, changed := pt.pick(tried)
		if t == nil {
			if len(tried) > 0 {
				// Every routable backend refused. During a switchover the
				// old primary refuses before the routes say so: hold and
				// try again (on the next table change, or shortly) within
				// the client's hold budget, and only then say which
				// backend failed.
				if time.Now().Before(h.deadline) && p.pause(pt, &h, changed, retryPause) {
					tried = tried[:0]
					continue
				}
				last := tried[len(tried)-1]
				pt.refused.Add(1)
				reply(c, &first, "08006", fmt.Sprintf("pgha proxy could not connect to %s (%s): %v", last.b.Name, last.b.Addr, lastErr))
				return
			}
			// The table emptied between the hold and now: hold again,
			// within the same budget.
			if !p.wait(pt, &h, changed) {
				p.refuseNoRoute(pt, c, &first)
				return
			}
			continue
		}
		server, err := p.dial(t)
		if err != nil {
			t.release()
			if p.root.Err() != nil {
				return
			}
			if t.ctx.Err() != nil {
				continue // it left the routes while we dialled: pick again
			}
			t.st.errors.Add(1)
			p.log.Debug("proxy dial failed", "port", pt.name, "backend", t.b.Name, "addr", t.b.Addr, "err", err)
			warnEvery(&t.st.lastWarn, func() {
				p.log.Warn("proxy cannot reach backend", "port", pt.name, "backend", t.b.Name, "addr", t.b.Addr, "err", err)
			})
			tried = append(tried, t)
			lastErr = err
			continue // the read port tries the next replica
		}
		c.SetReadDeadline(time.Time{})
		p.pipe(pt, t, c, server, first)
		t.release()
		return
	}
}

// dial connects to a backend within the connect timeout. The generation
// context aborts the dial if the backend leaves the routes meanwhile.
func (p *Proxy) dial(t *target) (*net.TCPConn, error) {
	conn, err := p.dialer.DialContext(t.ctx, "tcp", t.b.Addr)
	if err != nil {
		return nil, err
	}
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("dial %s: not a TCP connection", t.b.Addr)
	}
	return tc, nil
}

// pipe forwards the bytes already read, then copies both directions
// until both have ended: in an event loop (Linux), or with a goroutine
// per direction. Both copy small messages through a buffer and hand bulk
// to splice(2), so bulk bytes never enter user space; nothing may wrap
// the sockets on this path (see relay and evloop).
func (p *Proxy) pipe(pt *port, t *target, client, server *net.TCPConn, first header) {
	start := time.Now()
	p.log.Debug("proxy connection opened", "port", pt.name, "client", client.RemoteAddr().String(), "backend", t.b.Name, "addr", t.b.Addr)

	// t.ctx is the generation's close channel: a routing change that
	// removes t, or Close, ends both directions at once.
	var up, down int64
	var err error
	if l := p.pickLoop(); l != nil {
		up, down, err = copyInLoop(l, t.ctx, client, server, first)
	} else {
		up, down, err = copyWithGoroutines(t.ctx, client, server, first)
	}
	t.st.bytesIn.Add(up)
	t.st.bytesOut.Add(down)
	args := []any{"port", pt.name, "client", client.RemoteAddr().String(), "backend", t.b.Name,
		"bytes_in", up, "bytes_out", down, "duration", time.Since(start).Round(time.Millisecond)}
	switch {
	case t.ctx.Err() != nil && p.root.Err() == nil:
		args = append(args, "reason", "backend left the routes")
	case err != nil && p.root.Err() == nil:
		args = append(args, "err", err)
	}
	p.log.Debug("proxy connection closed", args...)
}

// copyInLoop writes first to the server, hands both sockets to the
// event loop l and waits until the loop has ended the session: both
// directions finished, an error, or ctx ended (which asks the loop to
// close both sockets). It returns the bytes delivered each way and why
// the session ended (nil: both sides closed cleanly).
func copyInLoop(l *evloop, ctx context.Context, client, server *net.TCPConn, first header) (up, down int64, err error) {
	n, err := server.Write(first[:])
	if err != nil {
		client.Close()
		server.Close()
		return int64(n), 0, err
	}
	s, err := l.newSession(client, server)
	if err != nil {
		return int64(n), 0, err
	}
	if err := l.add(s); err != nil {
		s.closeFDs() // the loop stopped: the proxy is closing
		return int64(n), 0, err
	}
	defer closeOnDone(ctx, s)()
	<-s.done
	return int64(n) + s.dir[0].n, s.dir[1].n, s.err
}

// copyWithGoroutines relays each direction in its own goroutine (the
// calling one and one more) until both have ended; ctx ending closes
// both sockets, which ends both at once. The error is the first
// direction's that ended on one.
func copyWithGoroutines(ctx context.Context, client, server *net.TCPConn, first header) (up, down int64, err error) {
	defer closeOnDone(ctx, client, server)()
	done := make(chan struct{})
	var upErr error
	go func() {
		defer close(done)
		n, err := server.Write(first[:])
		up = int64(n)
		if err == nil {
			var m int64
			m, err = relay(server, client)
			up += m
		}
		upErr = err
		finish(server, client, err)
	}()
	down, err = relay(client, server)
	finish(client, server, err)
	<-done
	client.Close()
	server.Close()
	if err == nil {
		err = upErr
	}
	return up, down, err
}

// finish ends one direction after relay(dst, src) returned. A clean
// EOF is passed on as a half-close, and the other direction (which reads
// dst) gets finTimeout to end too. An error means the pair is broken:
// close both sockets, which also ends the other copy.
func finish(dst, src *net.TCPConn, err error) {
	if err != nil {
		dst.Close()
		src.Close()
		return
	}
	dst.CloseWrite()
	dst.SetReadDeadline(time.Now().Add(finTimeout))
}

// forwardCancel sends a cancel request to every backend behind the port.
// The key names one backend process on one server, but the proxy cannot
// know which server without tracking sessions, and every other server
// ignores a key it does not own, so fanning out is both simple and safe.
func (p *Proxy) forwardCancel(pt *port, c *net.TCPConn, first header) {
	pkt := make([]byte, first.length())
	copy(pkt, first[:])
	if _, err := io.ReadFull(c, pkt[8:]); err != nil {
		return
	}
	targets := pt.cancelTargets()
	var wg sync.WaitGroup
	for _, b := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.sendCancel(b, pkt); err != nil && p.root.Err() == nil {
				p.log.Debug("proxy could not forward a cancel request", "port", pt.name, "backend", b.Name, "addr", b.Addr, "err", err)
			}
		}()
	}
	// Only now close the client: libpq treats the server's close as "the
	// cancel was delivered", so the close must not come before that.
	wg.Wait()
	p.log.Debug("proxy forwarded a cancel request", "port", pt.name, "client", c.RemoteAddr().String(), "backends", len(targets))
}

func (p *Proxy) sendCancel(b Backend, pkt []byte) error {
	conn, err := p.dialer.DialContext(p.root, "tcp", b.Addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	defer closeOnDone(p.root, conn)()
	conn.SetDeadline(time.Now().Add(p.cfg.ConnectTimeout))
	if _, err := conn.Write(pkt); err != nil {
		return err
	}
	// The server closes once it has acted on the request.
	_, err = io.Copy(io.Discard, conn)
	return err
}

// refuseNoRoute answers a client whose hold expired (nothing to route
// to) with 57P03, as a server that is not accepting connections would.
func (p *Proxy) refuseNoRoute(pt *port, c *net.TCPConn, first *header) {
	if p.root.Err() != nil {
		return // shutting down: just close
	}
	pt.refused.Add(1)
	msg := "no primary available"
	if pt.name == "read" {
		msg = "no replica available"
	}
	p.log.Debug("proxy hold timed out", "port", pt.name, "client", c.RemoteAddr().String())
	reply(c, first, "57P03", msg)
}

// refuseFull answers a client beyond MaxConn with 53300, as PostgreSQL
// does beyond max_connections.
func (p *Proxy) refuseFull(pt *port, c *net.TCPConn) {
	defer p.wg.Done()
	defer pt.refusing.Add(-1)
	defer c.Close()
	defer closeOnDone(p.root, c)()
	warnEvery(&pt.lastWarn, func() {
		p.log.Warn("proxy port is full; refusing clients", "port", pt.name, "max_conn", p.cfg.MaxConn)
	})
	reply(c, nil, "53300", "too many connections through the pgha proxy")
}

// refuseDenied answers a client from outside the allowed networks with
// 28000, the code PostgreSQL gives when no pg_hba.conf line matches.
func (p *Proxy) refuseDenied(pt *port, c *net.TCPConn) {
	defer p.wg.Done()
	defer pt.refusing.Add(-1)
	defer c.Close()
	defer closeOnDone(p.root, c)()
	client := c.RemoteAddr().String()
	warnEvery(&pt.lastDeniedWarn, func() {
		p.log.Warn("proxy refused a client outside postgresql.allowed_networks", "port", pt.name, "client", client)
	})
	host, _, _ := net.SplitHostPort(client)
	reply(c, nil, "28000", fmt.Sprintf("pgha proxy: no access for host %q: not in postgresql.allowed_networks", host))
}

// reply reads the client's startup packet (briefly), sends a FATAL
// ErrorResponse and half-closes so that the client reads it before the
// caller closes the socket.
func reply(c *net.TCPConn, first *header, sqlstate, msg string) {
	c.SetDeadline(time.Now().Add(refuseTimeout))
	if readStartup(c, first) != nil {
		return
	}
	if _, err := c.Write(errorResponse(sqlstate, msg)); err != nil {
		return
	}
	c.CloseWrite()
}

// warnEvery runs warn unless it ran less than warnInterval ago.
func warnEvery(last *atomic.Int64, warn func()) {
	now := time.Now().UnixNano()
	prev := last.Load()
	if now-prev < int64(warnInterval) || !last.CompareAndSwap(prev, now) {
		return
	}
	warn()
}

// closeOnDone closes conns when ctx ends (a routing generation ends, or
// Close), without a watcher goroutine: context.AfterFunc only starts one
// at that moment. The returned release undoes it, or waits for a close
// already under way, so no goroutine outlives the connection.
func closeOnDone(ctx context.Context, conns ...io.Closer) (release func()) {
	closed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(closed)
		for _, c := range conns {
			c.Close()
		}
	})
	return func() {
		if !stop() {
			<-closed
		}
	}
}
