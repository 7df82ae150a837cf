package proxy_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgha/pgha/internal/testutil"
	"github.com/pgha/pgha/proxy"
)

// checkLeaks registers, before anything else of the test, a cleanup that
// runs last and fails the test if any goroutine outlived it.
func checkLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// startProxy builds a proxy on two free loopback ports, runs Serve and
// closes it at the end of the test (before the leak check).
// goroutineCopy asks startProxy for the goroutine copy (Loops 0), since a
// zero Loops there means the configuration's default of one event loop.
const goroutineCopy = -1

func startProxy(t *testing.T, cfg proxy.Config) (*proxy.Proxy, *testutil.LogBuffer) {
	t.Helper()
	if cfg.WriteAddr == "" {
		cfg.WriteAddr = "127.0.0.1:0"
	}
	if cfg.ReadAddr == "" {
		cfg.ReadAddr = "127.0.0.1:0"
	}
	switch cfg.Loops {
	case 0:
		cfg.Loops = 1 // the configuration's default: the event loop
	case goroutineCopy:
		cfg.Loops = 0
	}
	logs := &testutil.LogBuffer{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	p, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Serve(t.Context())
	}()
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Close")
		}
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs)
		}
	})
	return p, logs
}

// fake is a stand-in PostgreSQL server: for a session it reads the
// 8-byte header, answers its own name and a newline, then echoes; a
// cancel request is recorded and closed, as PostgreSQL does.
type fake struct {
	name     string
	ln       *net.TCPListener
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]bool
	sessions atomic.Int64
	cancels  chan []byte
}

func newFake(t *testing.T, name string) *fake {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{name: name, ln: ln, conns: map[net.Conn]bool{}, cancels: make(chan []byte, 16)}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(f.close)
	return f
}

func (f *fake) backend() proxy.Backend {
	return proxy.Backend{Name: f.name, Addr: f.ln.Addr().String()}
}

func (f *fake) ptr() *proxy.Backend {
	b := f.backend()
	return &b
}

func (f *fake) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns[c] = true
		f.mu.Unlock()
		f.wg.Add(1)
		go f.serve(c)
	}
}

func (f *fake) serve(c net.Conn) {
	defer f.wg.Done()
	defer func() {
		f.mu.Lock()
		delete(f.conns, c)
		f.mu.Unlock()
		c.Close()
	}()
	var h [8]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return
	}
	if binary.BigEndian.Uint32(h[4:]) == 80877102 {
		pkt := make([]byte, 16)
		copy(pkt, h[:])
		if _, err := io.ReadFull(c, pkt[8:]); err == nil {
			f.cancels <- pkt
		}
		return
	}
	f.sessions.Add(1)
	if _, err := c.Write([]byte(f.name + "\n")); err != nil {
		return
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// active is the number of connections the fake holds open.
func (f *fake) active() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

func (f *fake) close() {
	f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// startupHeader is the first 8 bytes of a protocol 3.0 startup message
// that carries no parameters: all the fake needs.
func startupHeader() []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b[0:], 8)
	binary.BigEndian.PutUint32(b[4:], 196608)
	return b
}

// startupPacket is a complete startup message, as a real client sends.
func startupPacket(user string) []byte {
	var body []byte
	body = binary.BigEndian.AppendUint32(body, 196608)
	for _, s := range []string{"user", user, "database", "postgres", ""} {
		body = append(body, s...)
		body = append(body, 0)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(4+len(body))), body...)
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// session connects through the proxy and returns the client connection
// and the name of the fake it reached.
func session(t *testing.T, addr string) (*net.TCPConn, string) {
	t.Helper()
	c := dial(t, addr)
	if _, err := c.Write(startupHeader()); err != nil {
		t.Fatal(err)
	}
	name, err := readLine(c, 5*time.Second)
	if err != nil {
		t.Fatalf("session through %s: %v", addr, err)
	}
	return c, name
}

func readLine(c net.Conn, timeout time.Duration) (string, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	var line []byte
	var b [1]byte
	for {
		if _, err := c.Read(b[:]); err != nil {
			return string(line), err
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
	}
}

// echo checks the session is alive end to end.
func echo(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo = %q, want %q", got, msg)
	}
	return nil
}

// closedWithin reports whether the peer closed c (EOF or reset, with no
// data) within timeout.
func closedWithin(c net.Conn, timeout time.Duration) error {
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	var b [64]byte
	n, err := c.Read(b[:])
	switch {
	case n > 0:
		return fmt.Errorf("read %q, want a close", b[:n])
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("still open after %s", timeout)
	}
	return nil
}

// readError reads one ErrorResponse and returns its SQLSTATE and message.
func readError(c net.Conn) (code, msg string, err error) {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var h [5]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return "", "", err
	}
	if h[0] != 'E' {
		return "", "", fmt.Errorf("message type %q, want 'E'", h[0])
	}
	body := make([]byte, binary.BigEndian.Uint32(h[1:])-4)
	if _, err := io.ReadFull(c, body); err != nil {
		return "", "", err
	}
	for len(body) > 1 {
		typ := body[0]
		end := bytes.IndexByte(body[1:], 0)
		if end < 0 {
			return "", "", fmt.Errorf("malformed field in %q", body)
		}
		val := string(body[1 : 1+end])
		body = body[2+end:]
		switch typ {
		case 'C':
			code = val
		case 'M':
			msg = val
		}
	}
	return code, msg, nil
}
