package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// The two copy engines (the event loop, Linux only, and a goroutine per
// direction) must behave the same way; each test here runs on both.

type engine struct {
	name string
	// copy carries client <-> server (after writing first to server)
	// until both directions end or ctx ends.
	copy func(ctx context.Context, client, server *net.TCPConn, first header) (up, down int64, err error)
}

// engines returns the engines available here; a loop is stopped at the
// end of the test and its goroutine must have ended by then.
func engines(t *testing.T) []engine {
	t.Helper()
	es := []engine{{name: "goroutines", copy: copyWithGoroutines}}
	if l := startLoop(t); l != nil {
		es = append(es, loopEngine(l))
	}
	return es
}

// startLoop runs an event loop until the end of the test, which fails if
// the loop's goroutine does not end when stopped. nil: no event loop
// on this platform.
func startLoop(t *testing.T) *evloop {
	t.Helper()
	l, err := newEvloop(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Logf("no event loop: %v", err)
		return nil
	}
	ran := make(chan struct{})
	go func() { defer close(ran); l.run() }()
	t.Cleanup(func() {
		l.stop()
		select {
		case <-ran:
		case <-time.After(5 * time.Second):
			t.Error("event loop did not stop")
		}
	})
	return l
}

func loopEngine(l *evloop) engine {
	return engine{
		name: "loop",
		copy: func(ctx context.Context, client, server *net.TCPConn, first header) (int64, int64, error) {
			return copyInLoop(l, ctx, client, server, first)
		},
	}
}

// copied is one session through engine e: app is the application's end,
// pg the server's end (its first 8 bytes, "12345678", already read). The
// channel yields the engine's byte counts once the session ends.
type copied struct {
	app, pg *net.TCPConn
	done    <-chan result
	cancel  context.CancelFunc
}

var testFirst = header{'1', '2', '3', '4', '5', '6', '7', '8'}

func startCopy(t *testing.T, e engine) copied {
	t.Helper()
	return startCopyWith(t, e, nil)
}

// startCopyWith is startCopy that first applies prep to the engine's
// client-side socket (e.g. a small send buffer).
func startCopyWith(t *testing.T, e engine, prep func(client *net.TCPConn)) copied {
	t.Helper()
	app, client := tcpPair(t)
	server, pg := tcpPair(t)
	if prep != nil {
		prep(client)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan result, 1)
	go func() {
		up, down, err := e.copy(ctx, client, server, testFirst)
		done <- result{[2]int64{up, down}, err}
	}()
	var got [8]byte
	pg.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(pg, got[:]); err != nil || got != testFirst {
		t.Fatalf("%s: first bytes %q, %v", e.name, got, err)
	}
	pg.SetReadDeadline(time.Time{})
	return copied{app: app, pg: pg, done: done, cancel: cancel}
}

// result is how a session ended: bytes (up, down) and the error.
type result struct {
	n   [2]int64
	err error
}

func (c copied) wait(t *testing.T, what string) [2]int64 {
	t.Helper()
	return c.end(t, what).n
}

func (c copied) end(t *testing.T, what string) result {
	t.Helper()
	select {
	case r := <-c.done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the session did not end", what)
		return result{}
	}
}

func pattern(n, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + seed)
	}
	return b
}

// TestEnginePingPong: small messages each way stay intact and in order,
// never go through splice, and a clean close on both sides ends the
// session with exact byte counts.
func TestEnginePingPong(t *testing.T) {
	for _, e := range engines(t) {
		t.Run(e.name, func(t *testing.T) {
			c := startCopy(t, e)
			before := splicedBytes.Load()
			q, a := make([]byte, 60), make([]byte, 300)
			got := make([]byte, 300)
			for i := range 500 {
				copy(q, pattern(len(q), i))
				copy(a, pattern(len(a), i+1))
				if _, err := c.app.Write(q); err != nil {
					t.Fatal(err)
				}
				c.pg.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(c.pg, got[:len(q)]); err != nil || !bytes.Equal(got[:len(q)], q) {
					t.Fatalf("query %d: %v", i, err)
				}
				if _, err := c.pg.Write(a); err != nil {
					t.Fatal(err)
				}
				c.app.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(c.app, got); err != nil || !bytes.Equal(got, a) {
					t.Fatalf("answer %d: %v", i, err)
				}
			}
			c.app.CloseWrite()
			c.pg.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := c.pg.Read(got); n != 0 || err != io.EOF {
				t.Fatalf("server read %d, %v after the client's close; want EOF", n, err)
			}
			c.pg.CloseWrite()
			r := c.end(t, e.name)
			if want := [2]int64{8 + 500*60, 500 * 300}; r.n != want {
				t.Errorf("bytes (up, down) = %v, want %v", r.n, want)
			}
			if r.err != nil {
				t.Errorf("a clean close on both sides ended with %v", r.err)
			}
			if s := splicedBytes.Load() - before; s != 0 {
				t.Errorf("small messages spliced %d bytes, want 0", s)
			}
		})
	}
}

// TestEngineBulkSplices: a bulk result goes through splice (nearly every
// byte), arrives intact, and small messages after it still flow.
func TestEngineBulkSplices(t *testing.T) {
	for _, e := range engines(t) {
		t.Run(e.name, func(t *testing.T) {
			c := startCopy(t, e)
			const size = 8 << 20
			data := make([]byte, size)
			for i := range data {
				data[i] = byte(rand.Uint32())
			}
			before := splicedBytes.Load()
			werr := make(chan error, 1)
			go func() {
				_, err := c.pg.Write(data)
				if err == nil {
					_, err = c.pg.Write([]byte("tail"))
				}
				werr <- err
			}()
			h := sha256.New()
			c.app.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.CopyN(h, c.app, size); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(h.Sum(nil), sha256Sum(data)) {
				t.Fatal("bulk data corrupted")
			}
			tail := make([]byte, 4)
			if _, err := io.ReadFull(c.app, tail); err != nil || string(tail) != "tail" {
				t.Fatalf("after the bulk read %q, %v", tail, err)
			}
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
			if s := splicedBytes.Load() - before; s < size*7/8 {
				t.Errorf("spliced %d of %d bytes, want nearly all", s, size)
			}
			// A query after the bulk reaches the server: the direction
			// went back from splice to buffered reads cleanly.
			if _, err := c.app.Write([]byte("next")); err != nil {
				t.Fatal(err)
			}
			c.pg.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c.pg, tail); err != nil || string(tail) != "next" {
				t.Fatalf("query after the bulk: %q, %v", tail, err)
			}
			c.app.Close()
			c.pg.Close()
			c.wait(t, e.name)
		})
	}
}

// TestEngineBoundaries: transfers of sizes around the buffer and the
// splice chunk, in both directions at once, arrive intact; each side's
// half-close is passed on, and the counts are exact.
func TestEngineBoundaries(t *testing.T) {
	sizes := []int{0, 1, relayBufSize - 1, relayBufSize, relayBufSize + 1,
		2 * relayBufSize, relayBufSize + spliceChunk, 3*spliceChunk + 7}
	for _, e := range engines(t) {
		t.Run(e.name, func(t *testing.T) {
			for _, size := range sizes {
				c := startCopy(t, e)
				up, down := pattern(size, 1), pattern(size, 2)
				var wg sync.WaitGroup
				var gotUp, gotDown []byte
				var errUp, errDown error
				// Each end sends its part, half-closes, and reads
				// what the other sent, both at once.
				sendThenRead := func(conn *net.TCPConn, out []byte, got *[]byte, err *error) {
					defer wg.Done()
					conn.Write(out)
					conn.CloseWrite()
					conn.SetReadDeadline(time.Now().Add(20 * time.Second))
					*got, *err = io.ReadAll(conn)
				}
				wg.Add(2)
				go sendThenRead(c.app, up, &gotDown, &errDown)
				go sendThenRead(c.pg, down, &gotUp, &errUp)
				wg.Wait()
				if errUp != nil || !bytes.Equal(gotUp, up) {
					t.Fatalf("size %d up: read %d bytes, %v", size, len(gotUp), errUp)
				}
				if errDown != nil || !bytes.Equal(gotDown, down) {
					t.Fatalf("size %d down: read %d bytes, %v", size, len(gotDown), errDown)
				}
				if n := c.wait(t, fmt.Sprint(size)); n != [2]int64{int64(size) + 8, int64(size)} {
					t.Fatalf("size %d: counts %v", size, n)
				}
			}
		})
	}
}

// TestEngineSlowReader: answers toward a client that stalls fill its
// socket; they all arrive, in order, once it reads again, while the
// other direction still works.
func TestEngineSlowReader(t *testing.T) {
	for _, e := range engines(t) {
		t.Run(e.name, func(t *testing.T) {
			// A small send buffer toward the client makes the engine
			// hold unsent bytes as soon as the client stops reading.
			c := startCopyWith(t, e, func(client *net.TCPConn) { client.SetWriteBuffer(4 << 10) })
			const n, size = 6000, 1000
			sent := sha256.New()
			wrote := make(chan struct{})
			msgs := make([][]byte, 251)
			for i := range msgs {
				msgs[i] = pattern(size, i)
			}
			go func() {
				defer close(wrote)
				for i := range n {
					msg := msgs[i%len(msgs)]
					sent.Write(msg)
					if _, err := c.pg.Write(msg); err != nil {
						return
					}
				}
				c.pg.CloseWrite()
			}()
			time.Sleep(300 * time.Millisecond) // everything in flight is stuck
			// The other direction is not blocked by the full one.
			if _, err := c.app.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			c.pg.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c.pg, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("upstream while downstream is full: %q, %v", buf, err)
			}
			got := sha256.New()
			c.app.SetReadDeadline(time.Now().Add(20 * time.Second))
			m, err := io.Copy(got, c.app)
			if err != nil || m != n*size {
				t.Fatalf("read %d of %d bytes: %v", m, n*size, err)
			}
			<-wrote
			if !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
				t.Fatal("data corrupted")
			}
			c.app.CloseWrite()
			c.wait(t, e.name)
		})
	}
}

// TestEngineCancelWhileFull: ending the context (a routing change)
// ends a session whose destination is full, closing both ends.
func TestEngineCancelWhileFull(t *testing.T) {
	for _, e := range engines(t) {
		t.Run(e.name, func(t *testing.T) {
			c := startCopyWith(t, e, func(client *net.TCPConn) { client.SetWriteBuffer(4 << 10) })
			go func() {
				msg := make([]byte, 1000)
				for {
					if _, err := c.pg.Write(msg); err != nil {
						return
					}
				}
			}()
			time.Sleep(300 * time.Millisecond) // the app never reads: full
			c.cancel()
			c.wait(t, e.name)
			if err := closedWithin(c.app, 5*time.Second); err != nil {
				t.Errorf("client end: %v", err)
			}
		})
	}
}

// TestEngineReset: a client that resets ends the session and the
// server sees its connection closed.
func TestEngineReset(t *testing.T) {
	for _, e := range engines(t) {
		t.Run(e.name, func(t *testing.T) {
			c := startCopy(t, e)
			c.app.Write([]byte("half a message"))
			c.app.SetLinger(0)
			c.app.Close() // RST
			if r := c.end(t, e.name); r.err == nil {
				t.Error("a reset ended the session without an error")
			}
			if err := closedWithin(c.pg, 5*time.Second); err != nil {
				t.Errorf("server end: %v", err)
			}
		})
	}
}

// closedWithin drains c until EOF or a reset, failing after timeout.
func closedWithin(c *net.TCPConn, timeout time.Duration) error {
	c.SetReadDeadline(time.Now().Add(timeout))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("still open after %s", timeout)
	}
	return nil
}

// TestEngineManySessions: 64 concurrent sessions (descriptor numbers
// reused as they come and go) each see only their own bytes.
func TestEngineManySessions(t *testing.T) {
	for _, e := range engines(t) {
		t.Run(e.name, func(t *testing.T) {
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for i := range 64 {
				c := startCopy(t, e)
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, 100)
					for j := range 50 {
						msg := pattern(100, i*1000+j)
						c.app.Write(msg)
						c.pg.SetReadDeadline(time.Now().Add(5 * time.Second))
						if _, err := io.ReadFull(c.pg, buf); err != nil || !bytes.Equal(buf, msg) {
							errs <- fmt.Errorf("session %d message %d: %v", i, j, err)
							return
						}
						c.pg.Write(buf)
						c.app.SetReadDeadline(time.Now().Add(5 * time.Second))
						if _, err := io.ReadFull(c.app, buf); err != nil || !bytes.Equal(buf, msg) {
							errs <- fmt.Errorf("session %d echo %d: %v", i, j, err)
							return
						}
					}
					c.app.Close()
					c.pg.Close()
				}()
				if i%8 == 7 {
					wg.Wait() // let some end while others start
				}
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
		})
	}
}

// TestEngineFinTimeout: a session whose client half-closed but whose
// server never does ends after finTimeout.
func TestEngineFinTimeout(t *testing.T) {
	old := finTimeout
	finTimeout = 200 * time.Millisecond
	t.Cleanup(func() { finTimeout = old })
	for _, e := range engines(t) {
		t.Run(e.name, func(t *testing.T) {
			c := startCopy(t, e)
			c.app.CloseWrite()
			start := time.Now()
			c.wait(t, e.name)
			if d := time.Since(start); d < finTimeout {
				t.Errorf("ended after %s, before the fin timeout", d)
			}
			if err := closedWithin(c.pg, 5*time.Second); err != nil {
				t.Errorf("server end: %v", err)
			}
		})
	}
}

// TestLoopStopEndsSessions: stopping a loop ends the sessions it
// carries, and a loop that stopped refuses new ones (the caller keeps
// and closes their sockets).
func TestLoopStopEndsSessions(t *testing.T) {
	l := startLoop(t)
	if l == nil {
		t.Skip("no event loop")
	}
	e := loopEngine(l)
	c1, c2 := startCopy(t, e), startCopy(t, e)
	l.stop()
	c1.wait(t, "first session")
	c2.wait(t, "second session")
	if err := closedWithin(c1.app, 5*time.Second); err != nil {
		t.Errorf("client end: %v", err)
	}
	client, server := tcpPair(t)
	s, err := l.newSession(client, server)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.add(s); err == nil {
		t.Fatal("a stopped loop accepted a session")
	}
	s.closeFDs()
}

// TestEngineUploadAfterServerFIN: once the server has half-closed (and
// the engine passed it on), the client may still send; everything it
// sends before its own FIN reaches the server. With epoll the client's
// socket then reports EPOLLHUP while data is still queued in it.
func TestEngineUploadAfterServerFIN(t *testing.T) {
	for _, e := range engines(t) {
		t.Run(e.name, func(t *testing.T) {
			c := startCopy(t, e)
			c.pg.CloseWrite()
			c.app.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := c.app.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("client read %d, %v after the server's FIN; want EOF", n, err)
			}
			data := pattern(3<<20, 5)
			go func() {
				c.app.Write(data)
				c.app.CloseWrite()
			}()
			c.pg.SetReadDeadline(time.Now().Add(20 * time.Second))
			got, err := io.ReadAll(c.pg)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("server read %d of %d bytes: %v", len(got), len(data), err)
			}
			c.wait(t, e.name)
		})
	}
}

// TestLoopDeliversBytesBeforeReset: a server that sends an error and
// then closes with unread input (which resets the connection, as
// PostgreSQL does when it ends a session mid-COPY) still gets its error
// to the client, even when the loop sees the bytes and the reset in the
// same event. The session is handed to the loop only after both arrived.
func TestLoopDeliversBytesBeforeReset(t *testing.T) {
	l := startLoop(t)
	if l == nil {
		t.Skip("no event loop")
	}

	app, client := tcpPair(t)
	server, pg := tcpPair(t)
	if _, err := server.Write([]byte("data the server never reads")); err != nil {
		t.Fatal(err)
	}
	msg := []byte("FATAL: terminating connection due to administrator command")
	if _, err := pg.Write(msg); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // both reached the other ends
	pg.SetLinger(0)
	pg.Close() // unread input: RST
	time.Sleep(50 * time.Millisecond)

	s, err := l.newSession(client, server)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.add(s); err != nil {
		t.Fatal(err)
	}
	app.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(app)
	if !bytes.Equal(got, msg) {
		t.Fatalf("client got %q, want %q", got, msg)
	}
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the session did not end")
	}
}
