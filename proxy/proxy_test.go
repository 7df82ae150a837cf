package proxy_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgha/pgha/internal/testutil"
	"github.com/pgha/pgha/proxy"
)

func TestNewErrorNamesAddress(t *testing.T) {
	checkLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	busy := ln.Addr().String()
	_, err = proxy.New(proxy.Config{WriteAddr: "127.0.0.1:0", ReadAddr: busy})
	if err == nil || !strings.Contains(err.Error(), busy) {
		t.Fatalf("New on a busy read address = %v, want an error naming %s", err, busy)
	}
	// The write listener opened first must have been released: reuse it.
	p, err := proxy.New(proxy.Config{WriteAddr: "127.0.0.1:0", ReadAddr: ""})
	if err != nil {
		t.Fatal(err)
	}
	if w, r := p.Addrs(); w == "" || r != "" {
		t.Errorf("Addrs = %q, %q; want a write address and no read address", w, r)
	}
	p.Close()
	p.Serve(context.Background()) // after Close: returns at once
}

func TestWritePortRoutesToPrimary(t *testing.T) {
	checkLeaks(t)
	a, b := newFake(t, "a"), newFake(t, "b")
	p, logs := startProxy(t, proxy.Config{})
	w, _ := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: a.ptr(), Replicas: []proxy.Backend{b.backend()}})

	c, name := session(t, w)
	if name != "a" {
		t.Fatalf("write port reached %q, want the primary a", name)
	}
	if err := echo(c, "hello"); err != nil {
		t.Fatal(err)
	}
	st := p.Stats().Write
	if got := st.Backends["a"]; got.Current != 1 || got.Total != 1 || got.Addr != a.backend().Addr {
		t.Errorf("write stats for a = %+v, want current 1, total 1, addr %s", got, a.backend().Addr)
	}
	if st.Current != 1 || st.Total != 1 {
		t.Errorf("write port stats = %+v, want current 1, total 1", st)
	}
	c.Close()
	testutil.WaitUntil(t, 3*time.Second, "the write port to release the connection", func() bool {
		s := p.Stats().Write
		return s.Current == 0 && s.Backends["a"].Current == 0 && a.active() == 0
	})
	got := p.Stats().Write.Backends["a"]
	if got.BytesIn != 8+5 || got.BytesOut != 2+5 {
		t.Errorf("bytes in/out = %d/%d, want 13/7", got.BytesIn, got.BytesOut)
	}
	if n := strings.Count(logs.String(), "proxy routes changed"); n != 1 {
		t.Errorf("%d routing-change log lines, want 1", n)
	}
}

func TestSetRoutesSameValueIsNoop(t *testing.T) {
	checkLeaks(t)
	a, b, c := newFake(t, "a"), newFake(t, "b"), newFake(t, "c")
	p, logs := startProxy(t, proxy.Config{})
	w, r := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: a.ptr(), Replicas: []proxy.Backend{b.backend(), c.backend()}})
	wc, _ := session(t, w)
	rc, _ := session(t, r)
	for range 50 {
		// A fresh but equal value, replicas in another order.
		p.SetRoutes(proxy.Routes{Primary: a.ptr(), Replicas: []proxy.Backend{c.backend(), b.backend()}})
	}
	if err := echo(wc, "still"); err != nil {
		t.Errorf("write connection after equal SetRoutes: %v", err)
	}
	if err := echo(rc, "still"); err != nil {
		t.Errorf("read connection after equal SetRoutes: %v", err)
	}
	if n := strings.Count(logs.String(), "proxy routes changed"); n != 1 {
		t.Errorf("%d routing-change log lines, want 1", n)
	}
}

func TestHeldConnectionProceedsWhenPrimaryIsSet(t *testing.T) {
	checkLeaks(t)
	a := newFake(t, "a")
	p, _ := startProxy(t, proxy.Config{HoldTimeout: 20 * time.Second})
	w, _ := p.Addrs()

	c := dial(t, w)
	if _, err := c.Write(startupHeader()); err != nil {
		t.Fatal(err)
	}
	testutil.WaitUntil(t, 3*time.Second, "the client to be held", func() bool { return p.Stats().Write.HeldNow == 1 })
	if a.sessions.Load() != 0 {
		t.Fatal("a held client reached a backend")
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	p.SetRoutes(proxy.Routes{Primary: a.ptr()})
	name, err := readLine(c, 3*time.Second)
	if err != nil || name != "a" {
		t.Fatalf("held client after SetRoutes read %q, %v; want a", name, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("held client proceeded %s after the primary appeared, want at once", d)
	}
	if err := echo(c, "ok"); err != nil {
		t.Fatal(err)
	}
	st := p.Stats().Write
	if st.HeldNow != 0 || st.HeldTotal != 1 || st.HoldSecondsTotal < 0.1 {
		t.Errorf("hold stats = now %d total %d seconds %.3f; want 0, 1, >= 0.1", st.HeldNow, st.HeldTotal, st.HoldSecondsTotal)
	}
}

func TestHoldTimeoutAnswers57P03(t *testing.T) {
	checkLeaks(t)
	p, _ := startProxy(t, proxy.Config{HoldTimeout: 300 * time.Millisecond})
	w, _ := p.Addrs()

	// A raw client asking for SSL first, as libpq does by default: the
	// proxy declines it ('N') and then answers the startup.
	c := dial(t, w)
	ssl := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877103)
	if _, err := c.Write(ssl); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var resp [1]byte
	if _, err := c.Read(resp[:]); err != nil || resp[0] != 'N' {
		t.Fatalf("SSLRequest answer = %q, %v; want 'N'", resp[:], err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("answered after %s, before the hold timeout", d)
	}
	if _, err := c.Write(startupPacket("app")); err != nil {
		t.Fatal(err)
	}
	code, msg, err := readError(c)
	if err != nil || code != "57P03" || msg != "no primary available" {
		t.Fatalf("error = %s %q, %v; want 57P03 no primary available", code, msg, err)
	}
	if err := closedWithin(c, 2*time.Second); err != nil {
		t.Errorf("after the error: %v", err)
	}

	// pgx sees the SQLSTATE too.
	_, err = pgx.Connect(t.Context(), fmt.Sprintf("postgres://app@%s/postgres?sslmode=disable&connect_timeout=5", w))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P03" {
		t.Fatalf("pgx connect = %v, want SQLSTATE 57P03", err)
	}
	if st := p.Stats().Write; st.Refused != 2 || st.HeldTotal != 2 || st.HeldNow != 0 {
		t.Errorf("write stats = %+v, want 2 refused, 2 held in total", st)
	}
}

func TestPrimaryChangeClosesOldConnections(t *testing.T) {
	checkLeaks(t)
	a, b := newFake(t, "a"), newFake(t, "b")
	p, logs := startProxy(t, proxy.Config{})
	w, _ := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: a.ptr()})

	var old []*net.TCPConn
	for range 5 {
		c, name := session(t, w)
		if name != "a" {
			t.Fatalf("reached %q, want a", name)
		}
		old = append(old, c)
	}
	start := time.Now()
	p.SetRoutes(proxy.Routes{Primary: b.ptr()})
	for i, c := range old {
		if err := closedWithin(c, 2*time.Second); err != nil {
			t.Fatalf("old connection %d: %v", i, err)
		}
	}
	t.Logf("5 old connections closed %s after the change", time.Since(start).Round(time.Millisecond))
	testutil.WaitUntil(t, 3*time.Second, "a to see its connections gone", func() bool { return a.active() == 0 })
	c, name := session(t, w)
	if name != "b" {
		t.Fatalf("new connection reached %q, want b", name)
	}

	// Same name, new address: a different backend, so closed as well.
	moved := newFake(t, "b")
	p.SetRoutes(proxy.Routes{Primary: moved.ptr()})
	if err := closedWithin(c, 2*time.Second); err != nil {
		t.Fatalf("connection to b's old address: %v", err)
	}

	// No primary (the agent is in doubt): route nowhere, close everything.
	c, _ = session(t, w)
	p.SetRoutes(proxy.Routes{})
	if err := closedWithin(c, 2*time.Second); err != nil {
		t.Fatalf("connection after the primary was withdrawn: %v", err)
	}
	if !strings.Contains(logs.String(), "b@"+b.backend().Addr+" -> b@"+moved.backend().Addr) {
		t.Errorf("no old -> new routing line in the log:\n%s", logs)
	}
}

func TestReadPortLeastConnections(t *testing.T) {
	checkLeaks(t)
	a, b := newFake(t, "a"), newFake(t, "b")
	p, _ := startProxy(t, proxy.Config{})
	_, r := p.Addrs()

	// One replica: everything goes to it.
	p.SetRoutes(proxy.Routes{Replicas: []proxy.Backend{a.backend()}})
	var conns []*net.TCPConn
	for range 10 {
		c, name := session(t, r)
		if name != "a" {
			t.Fatalf("reached %q with a alone", name)
		}
		conns = append(conns, c)
	}
	// b joins empty: least-connections sends the next 10 to b only.
	p.SetRoutes(proxy.Routes{Replicas: []proxy.Backend{a.backend(), b.backend()}})
	for i := range 10 {
		c, name := session(t, r)
		if name != "b" {
			t.Fatalf("connection %d after b joined reached %q, want b (a has 10, b %d)", i, name, i)
		}
		conns = append(conns, c)
	}
	// Free 4 on a: the next 4 go to a.
	for _, c := range conns[:4] {
		c.Close()
	}
	testutil.WaitUntil(t, 3*time.Second, "a's 4 connections to end", func() bool {
		return p.Stats().Read.Backends["a"].Current == 6
	})
	for i := range 4 {
		if _, name := session(t, r); name != "a" {
			t.Fatalf("connection %d after a lost 4 reached %q, want a", i, name)
		}
	}
	// Tied now (10 each): 100 more spread evenly.
	count := map[string]int{}
	for range 100 {
		_, name := session(t, r)
		count[name]++
	}
	if count["a"] < 45 || count["b"] < 45 {
		t.Fatalf("100 connections over 2 replicas went %v, want about 50 each", count)
	}
	st := p.Stats().Read
	if got := st.Backends["a"].Current + st.Backends["b"].Current; got != 120 || st.Current != 120 {
		t.Errorf("read stats: %d backend connections, %d clients; want 120", got, st.Current)
	}
}

func TestReplicaRemovalClosesItsReadConnections(t *testing.T) {
	checkLeaks(t)
	a, b, prim := newFake(t, "a"), newFake(t, "b"), newFake(t, "p")
	p, _ := startProxy(t, proxy.Config{ReadFallbackPrimary: true})
	_, r := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: prim.ptr(), Replicas: []proxy.Backend{a.backend(), b.backend()}})

	on := map[string][]*net.TCPConn{}
	for range 6 {
		c, name := session(t, r)
		on[name] = append(on[name], c)
	}
	if len(on["a"]) != 3 || len(on["b"]) != 3 {
		t.Fatalf("6 read connections went a=%d b=%d, want 3 each", len(on["a"]), len(on["b"]))
	}
	p.SetRoutes(proxy.Routes{Primary: prim.ptr(), Replicas: []proxy.Backend{a.backend()}})
	for i, c := range on["b"] {
		if err := closedWithin(c, 2*time.Second); err != nil {
			t.Fatalf("read connection %d to the removed replica: %v", i, err)
		}
	}
	for i, c := range on["a"] {
		if err := echo(c, "alive"); err != nil {
			t.Fatalf("read connection %d to the remaining replica: %v", i, err)
		}
	}

	// No replica left: the read port falls back to the primary, and
	// those connections survive a replica's return.
	p.SetRoutes(proxy.Routes{Primary: prim.ptr()})
	for _, c := range on["a"] {
		if err := closedWithin(c, 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	fc, name := session(t, r)
	if name != "p" {
		t.Fatalf("read port without replicas reached %q, want the primary p", name)
	}
	p.SetRoutes(proxy.Routes{Primary: prim.ptr(), Replicas: []proxy.Backend{b.backend()}})
	if err := echo(fc, "kept"); err != nil {
		t.Errorf("fallback connection after a replica returned: %v", err)
	}
	if _, name := session(t, r); name != "b" {
		t.Errorf("read port with a replica back reached %q, want b", name)
	}
}

func TestReadPortWithoutFallbackHolds(t *testing.T) {
	checkLeaks(t)
	prim, a := newFake(t, "p"), newFake(t, "a")
	p, _ := startProxy(t, proxy.Config{HoldTimeout: 10 * time.Second})
	_, r := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: prim.ptr()})
	c := dial(t, r)
	if _, err := c.Write(startupHeader()); err != nil {
		t.Fatal(err)
	}
	testutil.WaitUntil(t, 3*time.Second, "the read client to be held", func() bool { return p.Stats().Read.HeldNow == 1 })
	p.SetRoutes(proxy.Routes{Primary: prim.ptr(), Replicas: []proxy.Backend{a.backend()}})
	if name, err := readLine(c, 3*time.Second); err != nil || name != "a" {
		t.Fatalf("held read client reached %q, %v; want a", name, err)
	}
}

func TestMaxConnRefuses53300(t *testing.T) {
	checkLeaks(t)
	a := newFake(t, "a")
	p, _ := startProxy(t, proxy.Config{MaxConn: 3})
	w, r := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: a.ptr(), Replicas: []proxy.Backend{a.backend()}})
	var held []*net.TCPConn
	for range 3 {
		c, _ := session(t, w)
		held = append(held, c)
	}
	_, err := pgx.Connect(t.Context(), fmt.Sprintf("postgres://app@%s/postgres?sslmode=disable&connect_timeout=5", w))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" || !strings.Contains(pgErr.Message, "pgha proxy") {
		t.Fatalf("pgx connect beyond MaxConn = %v, want SQLSTATE 53300 from the proxy", err)
	}
	// The limit is per port: the read port still has room.
	if _, name := session(t, r); name != "a" {
		t.Fatal("read port refused while only the write port is full")
	}
	// Room again once one leaves.
	held[0].Close()
	testutil.WaitUntil(t, 3*time.Second, "a free slot", func() bool { return p.Stats().Write.Current == 2 })
	session(t, w)
	if st := p.Stats().Write; st.Refused != 1 || st.Total != 5 {
		t.Errorf("write stats = %+v, want 1 refused out of 5", st)
	}
}

func TestGarbageAndSilentClientsAreClosed(t *testing.T) {
	checkLeaks(t)
	a := newFake(t, "a")
	p, _ := startProxy(t, proxy.Config{HandshakeTimeout: 500 * time.Millisecond})
	w, _ := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: a.ptr()})

	good, _ := session(t, w)
	silent := dial(t, w)
	short := dial(t, w)
	short.Write([]byte{0, 0, 0, 3, 1, 2, 3, 4}) // length 3
	huge := dial(t, w)
	huge.Write([]byte{0, 0, 0x4e, 0x21, 0, 3, 0, 0}) // length 20001
	badCancel := dial(t, w)
	badCancel.Write(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 12), 80877102))
	partial := dial(t, w)
	partial.Write([]byte{0, 0, 0})

	for name, c := range map[string]net.Conn{"short": short, "huge": huge, "bad cancel": badCancel} {
		if err := closedWithin(c, time.Second); err != nil {
			t.Errorf("%s packet: %v", name, err)
		}
	}
	start := time.Now()
	for name, c := range map[string]net.Conn{"silent": silent, "partial": partial} {
		if err := closedWithin(c, 3*time.Second); err != nil {
			t.Errorf("%s client: %v", name, err)
		}
	}
	t.Logf("silent clients closed after %s", time.Since(start).Round(time.Millisecond))
	if err := echo(good, "undisturbed"); err != nil {
		t.Fatalf("good client: %v", err)
	}
	if n := a.sessions.Load(); n != 1 {
		t.Errorf("the backend saw %d sessions, want only the good client's", n)
	}
	testutil.WaitUntil(t, 3*time.Second, "only the good client left", func() bool { return p.Stats().Write.Current == 1 })
}

func TestVanishingClientFreesItsPair(t *testing.T) {
	checkLeaks(t)
	a := newFake(t, "a")
	p, _ := startProxy(t, proxy.Config{})
	w, _ := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: a.ptr()})

	// One resets mid-stream, one closes mid-stream, with unread echo.
	for _, reset := range []bool{true, false} {
		c, _ := session(t, w)
		chunk := make([]byte, 16<<10)
		for range 8 {
			if _, err := c.Write(chunk); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Read(chunk[:1024]); err != nil {
				t.Fatal(err)
			}
		}
		if reset {
			c.SetLinger(0)
		}
		c.Close()
	}
	testutil.WaitUntil(t, 5*time.Second, "both pairs to be freed", func() bool {
		return p.Stats().Write.Current == 0 && a.active() == 0
	})
	if st := p.Stats().Write.Backends["a"]; st.Current != 0 || st.BytesIn < 16<<10 {
		t.Errorf("backend stats after vanishing clients = %+v", st)
	}
}

func TestCancelRequestFanOut(t *testing.T) {
	checkLeaks(t)
	a, b, prim := newFake(t, "a"), newFake(t, "b"), newFake(t, "p")
	p, _ := startProxy(t, proxy.Config{ReadFallbackPrimary: true})
	w, r := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: prim.ptr(), Replicas: []proxy.Backend{a.backend(), b.backend()}})

	cancel := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 16), 80877102)
	cancel = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(cancel, 4242), 0xdeadbeef)
	send := func(addr string) {
		c := dial(t, addr)
		if _, err := c.Write(cancel); err != nil {
			t.Fatal(err)
		}
		if err := closedWithin(c, 3*time.Second); err != nil {
			t.Fatalf("cancel client: %v", err)
		}
	}
	got := func(f *fake) bool {
		select {
		case pkt := <-f.cancels:
			if string(pkt) != string(cancel) {
				t.Errorf("%s got cancel %x, want %x", f.name, pkt, cancel)
			}
			return true
		case <-time.After(2 * time.Second):
			return false
		}
	}
	send(r)
	for _, f := range []*fake{a, b, prim} {
		if !got(f) {
			t.Errorf("read-port cancel did not reach %s", f.name)
		}
	}
	send(w)
	if !got(prim) {
		t.Error("write-port cancel did not reach the primary")
	}
	for _, f := range []*fake{a, b} {
		select {
		case <-f.cancels:
			t.Errorf("write-port cancel reached replica %s", f.name)
		default:
		}
	}
	if a.sessions.Load()+b.sessions.Load()+prim.sessions.Load() != 0 {
		t.Error("a cancel request opened a session")
	}
}

// A backend that refuses is retried within the client's hold budget (a
// switchover's old primary refuses before the routes move on); only when
// the budget is spent does the client get 08006 naming the backend.
func TestDialFailureAnswers08006(t *testing.T) {
	checkLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	good := newFake(t, "good")
	p, _ := startProxy(t, proxy.Config{ConnectTimeout: time.Second, HoldTimeout: 500 * time.Millisecond})
	w, r := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: &proxy.Backend{Name: "gone", Addr: dead},
		Replicas: []proxy.Backend{{Name: "gone", Addr: dead}, good.backend()}})

	c := dial(t, w)
	if _, err := c.Write(startupPacket("app")); err != nil {
		t.Fatal(err)
	}
	code, msg, err := readError(c)
	if err != nil || code != "08006" || !strings.Contains(msg, "gone") || !strings.Contains(msg, dead) {
		t.Fatalf("error = %s %q, %v; want 08006 naming gone (%s)", code, msg, err, dead)
	}
	if st := p.Stats().Write.Backends["gone"]; st.Errors < 1 || st.Current != 0 {
		t.Errorf("write stats for gone = %+v, want errors, none current", st)
	}
	// The read port skips a replica it cannot reach.
	for range 4 {
		if _, name := session(t, r); name != "good" {
			t.Fatalf("read port reached %q, want good", name)
		}
	}
}

// TestNoLeakedDescriptors runs 200 connections through both ports and
// checks the process holds as many descriptors after Close as before,
// with the event loop and with the goroutine copy.
func TestNoLeakedDescriptors(t *testing.T) {
	for _, loops := range []int{1, 0} {
		t.Run(fmt.Sprintf("loops=%d", loops), func(t *testing.T) { testNoLeakedDescriptors(t, loops) })
	}
}

func testNoLeakedDescriptors(t *testing.T, loops int) {
	checkLeaks(t)
	countFDs := func() int {
		// Linux splice moves bytes through pipes that net keeps in a
		// sync.Pool, freed by finalizers once the pool is dropped: two
		// GCs empty the pool, a later one runs the finalizers.
		for range 4 {
			runtime.GC()
			time.Sleep(10 * time.Millisecond)
		}
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skipf("no /proc/self/fd: %v", err)
		}
		return len(ents)
	}
	a, b := newFake(t, "a"), newFake(t, "b")
	before := countFDs()
	p, err := proxy.New(proxy.Config{WriteAddr: "127.0.0.1:0", ReadAddr: "127.0.0.1:0", Loops: loops})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); p.Serve(context.Background()) }()
	w, r := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: a.ptr(), Replicas: []proxy.Backend{b.backend()}})

	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr := w
			if i%2 == 1 {
				addr = r
			}
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.Write(startupHeader())
			if _, err := readLine(c, 5*time.Second); err != nil {
				errs <- err
				return
			}
			if err := echo(c, "x"); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Leave a few open, held and half-handshaken ones for Close to reap.
	for range 3 {
		c := dial(t, w)
		c.Write(startupHeader())
	}
	dial(t, r)
	p.SetRoutes(proxy.Routes{Replicas: []proxy.Backend{b.backend()}})
	dial(t, w).Write(startupHeader()) // held: no primary
	time.Sleep(200 * time.Millisecond)
	p.Close()
	<-done
	// The client ends of the extra connections are the test's; close them
	// and let the fakes drop their ends before counting.
	testutil.WaitUntil(t, 3*time.Second, "the fakes to drop their connections", func() bool { return a.active() == 0 && b.active() == 0 })
	if st := p.Stats(); st.Write.Current != 0 || st.Read.Current != 0 {
		t.Errorf("after Close: current write %d read %d, want 0", st.Write.Current, st.Read.Current)
	}
	// Test-side client sockets are still open (closed in cleanup): 5.
	if after := countFDs(); after != before+5 {
		t.Errorf("descriptors: %d before, %d after Close (5 test sockets still open), want %d", before, after, before+5)
	}
}

// A client whose primary refuses while the routes move to a new primary
// proceeds to the new one without seeing an error.
func TestDialFailureRetriedOnNewRoutes(t *testing.T) {
	checkLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	next := newFake(t, "next")
	p, _ := startProxy(t, proxy.Config{ConnectTimeout: time.Second, HoldTimeout: 10 * time.Second})
	w, _ := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: &proxy.Backend{Name: "old", Addr: dead}})
	go func() {
		time.Sleep(300 * time.Millisecond)
		p.SetRoutes(proxy.Routes{Primary: ptr(next.backend())})
	}()
	if _, name := session(t, w); name != "next" {
		t.Fatalf("write port reached %q, want next", name)
	}
}

func ptr[T any](v T) *T { return &v }

// TestDrainingKeepsOpenConnectionsAndHoldsNewOnes: while a primary is
// being switched over, connections already open to it (some still
// authenticating) stay; new ones wait for the next primary.
func TestDrainingKeepsOpenConnectionsAndHoldsNewOnes(t *testing.T) {
	checkLeaks(t)
	a, b := newFake(t, "a"), newFake(t, "b")
	p, _ := startProxy(t, proxy.Config{HoldTimeout: 20 * time.Second})
	w, _ := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: a.ptr()})
	open, name := session(t, w)
	if name != "a" {
		t.Fatalf("reached %q, want a", name)
	}
	p.SetRoutes(proxy.Routes{Draining: a.ptr()})
	held := dial(t, w)
	if _, err := held.Write(startupHeader()); err != nil {
		t.Fatal(err)
	}
	testutil.WaitUntil(t, 3*time.Second, "the new client to be held", func() bool { return p.Stats().Write.HeldNow == 1 })
	if err := echo(open, "still here"); err != nil {
		t.Fatalf("the open connection was closed when the primary started draining: %v", err)
	}
	p.SetRoutes(proxy.Routes{Primary: b.ptr()})
	if name, err := readLine(held, 3*time.Second); err != nil || name != "b" {
		t.Fatalf("held client read %q, %v; want b", name, err)
	}
	if err := closedWithin(open, 2*time.Second); err != nil {
		t.Fatalf("connection to the drained primary after the change: %v", err)
	}
}

// TestLoopCounters: each event loop reports the sessions it carries and
// the time it spent serving them, the figures an operator reads to
// tell whether proxy.event_loops should grow.
func TestLoopCounters(t *testing.T) {
	checkLeaks(t)
	a := newFake(t, "a")
	p, _ := startProxy(t, proxy.Config{Loops: 2})
	w, _ := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: a.ptr()})
	if len(p.Stats().Loops) == 0 {
		t.Skip("no event loops on this system")
	}
	if n := len(p.Stats().Loops); n != 2 {
		t.Fatalf("%d loops reported, want 2", n)
	}
	sum := func() (busy float64, sessions int64) {
		for _, l := range p.Stats().Loops {
			busy += l.BusySeconds
			sessions += l.Sessions
		}
		return busy, sessions
	}
	c1, _ := session(t, w)
	c2, _ := session(t, w)
	testutil.WaitUntil(t, 3*time.Second, "both sessions in the loops", func() bool { _, n := sum(); return n == 2 })
	for _, l := range p.Stats().Loops {
		if l.Sessions != 1 {
			t.Errorf("loop sessions %+v, want one per loop (round robin)", p.Stats().Loops)
			break
		}
	}
	before, _ := sum()
	for i := range 200 {
		for _, c := range []net.Conn{c1, c2} {
			if err := echo(c, fmt.Sprintf("message %d", i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	after, _ := sum()
	if after <= before {
		t.Errorf("busy seconds %v -> %v after 400 exchanges, want them to grow", before, after)
	}
	c1.Close()
	c2.Close()
	testutil.WaitUntil(t, 3*time.Second, "the loops to drop the closed sessions", func() bool { _, n := sum(); return n == 0 })
	if last, _ := sum(); last < after {
		t.Errorf("busy seconds went back from %v to %v", after, last)
	}

	// The goroutine copy has no loop to report.
	g, _ := startProxy(t, proxy.Config{Loops: goroutineCopy})
	if n := len(g.Stats().Loops); n != 0 {
		t.Errorf("goroutine copy reports %d loops", n)
	}
}

// TestClientOutsideAllowedNetworksRefused28000: PostgreSQL sees the
// proxy's address, so the proxy itself must refuse a client outside the
// allowed networks, before a byte reaches the backend.
func TestClientOutsideAllowedNetworksRefused28000(t *testing.T) {
	checkLeaks(t)
	a := newFake(t, "a")
	p, _ := startProxy(t, proxy.Config{Allowed: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	w, r := p.Addrs()
	p.SetRoutes(proxy.Routes{Primary: a.ptr(), Replicas: []proxy.Backend{a.backend()}})
	for _, addr := range []string{w, r} {
		_, err := pgx.Connect(t.Context(), fmt.Sprintf("postgres://app@%s/postgres?sslmode=disable&connect_timeout=5", addr))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, "allowed_networks") {
			t.Fatalf("client from 127.0.0.1 = %v, want SQLSTATE 28000 naming allowed_networks", err)
		}
	}
	if st := p.Stats(); st.Write.Denied != 1 || st.Read.Denied != 1 || st.Write.Refused != 1 {
		t.Errorf("stats = %+v / %+v, want one denied per port", st.Write, st.Read)
	}
	if st := p.Stats(); st.Write.Backends["a"].Total != 0 || st.Read.Backends["a"].Total != 0 {
		t.Errorf("a denied client reached the backend: %+v", st)
	}

	// A client inside the list gets through.
	p2, _ := startProxy(t, proxy.Config{Allowed: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	w2, _ := p2.Addrs()
	p2.SetRoutes(proxy.Routes{Primary: a.ptr()})
	if _, name := session(t, w2); name != "a" {
		t.Fatal("an allowed client did not reach the primary")
	}
}
