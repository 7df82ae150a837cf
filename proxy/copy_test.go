package proxy

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	a, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	b = <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// relayed sets up in -> relay -> out: bytes written to in come out of
// out. The returned channel yields relay's result once in is closed.
func relayed(t *testing.T) (in, out *net.TCPConn, done <-chan error) {
	in, out, _, _, done = relayedEnds(t)
	return in, out, done
}

// relayedEnds is relayed that also returns the relay's own sockets.
func relayedEnds(t *testing.T) (in, out, src, dst *net.TCPConn, done <-chan error) {
	t.Helper()
	in, src = tcpPair(t)
	dst, out = tcpPair(t)
	ch := make(chan error, 1)
	go func() {
		_, err := relay(dst, src)
		dst.CloseWrite()
		ch <- err
	}()
	return in, out, src, dst, ch
}

// pipeInodes returns the pipes this process holds open.
func pipeInodes(t *testing.T) map[string]bool {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	pipes := map[string]bool{}
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "pipe:") {
			pipes[l] = true
		}
	}
	return pipes
}

// TestRelaySmallMessagesStayBuffered: a query/answer exchange of small
// messages never reaches splice.
func TestRelaySmallMessagesStayBuffered(t *testing.T) {
	in, out, done := relayed(t)
	before := splicedBytes.Load()
	msg := make([]byte, 200)
	got := make([]byte, len(msg))
	for i := range 500 {
		msg[0] = byte(i)
		if _, err := in.Write(msg); err != nil {
			t.Fatal(err)
		}
		out.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(out, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("message %d corrupted", i)
		}
	}
	in.CloseWrite()
	if err := <-done; err != nil {
		t.Fatalf("relay: %v", err)
	}
	if n := splicedBytes.Load() - before; n != 0 {
		t.Errorf("small messages spliced %d bytes, want 0", n)
	}
}

// TestRelayBulkUsesSplice: a bulk transfer goes through splice(2): a
// pipe (the one splice moves the bytes through) appears while it runs,
// nearly all bytes are counted as spliced, and they arrive intact,
// followed by small messages on the same connection.
func TestRelayBulkUsesSplice(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("splice is Linux only")
	}
	// Two GCs empty net's pool of splice pipes, so the transfer below
	// must make a pipe that is not in this set.
	runtime.GC()
	runtime.GC()
	old := pipeInodes(t)
	in, out, done := relayed(t)
	before := splicedBytes.Load()

	const size = 8 << 20
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	tail := []byte("small message after the bulk")
	werr := make(chan error, 1)
	go func() {
		if _, err := in.Write(data); err != nil {
			werr <- err
			return
		}
		_, err := in.Write(tail)
		in.CloseWrite()
		werr <- err
	}()

	// Read a little, then stop reading: the relay blocks mid-splice,
	// holding its pipe.
	h := sha256.New()
	out.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.CopyN(h, out, 2<<20); err != nil {
		t.Fatal(err)
	}
	sawPipe := false
	for deadline := time.Now().Add(5 * time.Second); !sawPipe && time.Now().Before(deadline); {
		for p := range pipeInodes(t) {
			if !old[p] {
				sawPipe = true
			}
		}
		if !sawPipe {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !sawPipe {
		t.Error("no splice pipe appeared during a bulk transfer")
	}
	if _, err := io.CopyN(h, out, size-2<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(h.Sum(nil), sha256Sum(data)) {
		t.Fatal("bulk data corrupted")
	}
	rest, err := io.ReadAll(out)
	if err != nil || !bytes.Equal(rest, tail) {
		t.Fatalf("after the bulk read %q, %v; want %q", rest, err, tail)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("relay: %v", err)
	}
	if n := splicedBytes.Load() - before; n < size*7/8 {
		t.Errorf("spliced %d of %d bytes, want nearly all", n, size)
	}
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

// TestRelayBoundaries: transfers of sizes around the buffer and the
// splice chunk arrive intact and end cleanly at EOF.
func TestRelayBoundaries(t *testing.T) {
	for _, size := range []int{0, 1, relayBufSize - 1, relayBufSize, relayBufSize + 1,
		2 * relayBufSize, relayBufSize + spliceChunk, relayBufSize + spliceChunk + 1, 3*spliceChunk + 7} {
		in, out, done := relayed(t)
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i * 7)
		}
		go func() {
			in.Write(data)
			in.CloseWrite()
		}()
		out.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(out)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("size %d: read %d bytes, %v", size, len(got), err)
		}
		if err := <-done; err != nil {
			t.Fatalf("size %d: relay: %v", size, err)
		}
	}
}

// TestRelaySlowReader: small messages toward a reader that stalls fill
// the destination; they all arrive, in order, once it reads again.
func TestRelaySlowReader(t *testing.T) {
	in, out, done := relayed(t)
	in.SetWriteBuffer(4 << 10)
	const n, size = 4000, 1000
	sent := sha256.New()
	go func() {
		msg := make([]byte, size)
		for i := range n {
			for j := range msg {
				msg[j] = byte(i + j)
			}
			sent.Write(msg)
			if _, err := in.Write(msg); err != nil {
				return
			}
		}
		in.CloseWrite()
	}()
	time.Sleep(300 * time.Millisecond) // everything in flight is stuck
	got := sha256.New()
	out.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := io.Copy(got, out)
	if err != nil || m != n*size {
		t.Fatalf("read %d of %d bytes: %v", m, n*size, err)
	}
	if !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		t.Fatal("data corrupted")
	}
	if err := <-done; err != nil {
		t.Fatalf("relay: %v", err)
	}
}

// TestRelayCloseWhileDestinationFull: a relay whose destination does
// not read is ended by closing its sockets, source first (as a routing
// change does), without Close waiting on the blocked write.
func TestRelayCloseWhileDestinationFull(t *testing.T) {
	in, _, src, dst, done := relayedEnds(t)
	dst.SetWriteBuffer(4 << 10)
	go func() {
		msg := make([]byte, 1000)
		for {
			if _, err := in.Write(msg); err != nil {
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond) // out never reads: dst is full
	closed := make(chan struct{})
	go func() {
		src.Close()
		dst.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("closing the relay's sockets hung")
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("relay ended cleanly, want an error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("relay did not end after its sockets closed")
	}
	in.Close()
}
