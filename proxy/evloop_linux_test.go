//go:build linux

package proxy

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"
)

// osThreads is how many threads this process has.
func osThreads(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	return len(ents)
}

// TestIdleLoopsHoldNoThread: a loop waiting for events is parked in the
// runtime's netpoller, not blocked in epoll_wait on a thread of its own
// (see evloop.wait). Sixteen idle loops, each carrying a session, must
// not add sixteen threads; and each still wakes for its session's bytes.
func TestIdleLoopsHoldNoThread(t *testing.T) {
	const loops = 16
	// A fixed number of Ps: how many threads the runtime keeps
	// otherwise grows with the machine's cores, not with the loops.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	loop := func() *evloop {
		l := startLoop(t)
		if l == nil {
			t.Skip("no event loop")
		}
		return l
	}
	// Let the runtime start what it starts anyway (GC workers, the
	// netpoller's thread) before counting.
	warm := startCopy(t, loopEngine(loop()))
	pingPong(t, warm, 1)
	runtime.GC()
	time.Sleep(100 * time.Millisecond)
	before := osThreads(t)

	sessions := make([]copied, loops)
	for i := range sessions {
		sessions[i] = startCopy(t, loopEngine(loop()))
		pingPong(t, sessions[i], 1)
	}
	time.Sleep(200 * time.Millisecond) // every loop back in its wait
	if grew := osThreads(t) - before; grew >= loops/2 {
		t.Errorf("%d idle loops added %d threads; a parked loop holds none", loops, grew)
	}
	for i, c := range sessions {
		pingPong(t, c, 3)
		c.app.Close()
		c.pg.Close()
		c.wait(t, fmt.Sprint("session ", i))
	}
}

// pingPong sends n small messages each way through c and checks them.
func pingPong(t *testing.T, c copied, n int) {
	t.Helper()
	msg := []byte("SELECT 1;")
	buf := make([]byte, len(msg))
	for range n {
		if _, err := c.app.Write(msg); err != nil {
			t.Fatal(err)
		}
		c.pg.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c.pg, buf); err != nil || string(buf) != string(msg) {
			t.Fatalf("server got %q, %v", buf, err)
		}
		if _, err := c.pg.Write(msg); err != nil {
			t.Fatal(err)
		}
		c.app.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c.app, buf); err != nil || string(buf) != string(msg) {
			t.Fatalf("client got %q, %v", buf, err)
		}
	}
}

// TestLoopIdleSessionHoldsNothing: a burst toward a client that reads
// slowly makes the session hold a pipe or a buffer of unsent bytes;
// once the client has read it all, the idle session holds neither
// (both went back to the loop's free lists), and small messages after
// it do not take them again.
func TestLoopIdleSessionHoldsNothing(t *testing.T) {
	l := startLoop(t)
	if l == nil {
		t.Skip("no event loop")
	}
	c := startCopyWith(t, loopEngine(l), func(client *net.TCPConn) { client.SetWriteBuffer(4 << 10) })
	held := func() loopHeld {
		t.Helper()
		h, err := l.held()
		if err != nil {
			t.Fatal(err)
		}
		return h
	}

	// A small receive buffer on the application's side: the loop's
	// destination fills at once, and the end of each burst is left in
	// the loop (in a pipe, mid-chunk, or in a buffer) until the client
	// reads. Bursts: less than one splice chunk (the pipe is emptied
	// on EPOLLOUT while the chunk is unfinished and the source has
	// nothing more) and many small messages (buffered reads, unsent
	// bytes kept in a spare buffer). Multi-chunk bulk is
	// TestEngineBulkSplices'; through buffers this small it is slow.
	bursts := map[string][][]byte{
		"bulk": {pattern(200<<10, 1)},
		"small": func() (m [][]byte) {
			for i := range 300 {
				m = append(m, pattern(700, i))
			}
			return m
		}(),
	}
	for _, name := range []string{"bulk", "small"} {
		total := 0
		for _, m := range bursts[name] {
			total += len(m)
		}
		wrote := make(chan error, 1)
		go func() {
			for _, m := range bursts[name] {
				if _, err := c.pg.Write(m); err != nil {
					wrote <- err
					return
				}
			}
			wrote <- nil
		}()
		c.app.SetReadBuffer(8 << 10)
		// The client does not read: the loop soon holds the rest.
		for deadline := time.Now().Add(10 * time.Second); ; {
			h := held()
			if h.pipes+h.bufs > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: nothing held while the client does not read (%+v): the probe sees nothing", name, h)
			}
			time.Sleep(10 * time.Millisecond)
		}
		// Read it all, with room again: through an 8 KiB window the
		// sender waits on zero-window probes.
		c.app.SetReadBuffer(1 << 20)
		c.app.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.ReadFull(c.app, make([]byte, total)); err != nil {
			t.Fatalf("%s: client read: %v", name, err)
		}
		if err := <-wrote; err != nil {
			t.Fatalf("%s: server write: %v", name, err)
		}
		if h := held(); h != (loopHeld{sessions: 1}) {
			t.Errorf("%s: idle session after the burst holds %+v; want nothing", name, h)
		}
		pingPong(t, c, 5)
		if h := held(); h != (loopHeld{sessions: 1}) {
			t.Errorf("%s: after small messages the session holds %+v; want nothing", name, h)
		}
	}
	c.app.Close()
	c.pg.Close()
	c.wait(t, "session")
	if h := held(); h != (loopHeld{}) {
		t.Errorf("after the end: %+v", h)
	}
	l.stop()
	if _, err := l.held(); err == nil {
		t.Error("a stopped loop answered held as if it ran")
	}
}
