//go:build linux

package proxy

import (
	"fmt"
	"io"
	"os"
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
	// Let the runtime start what it starts anyway (GC workers, the
	// netpoller's thread) before counting.
	warm := startCopy(t, loopEngine(startLoop(t)))
	pingPong(t, warm, 1)
	time.Sleep(100 * time.Millisecond)
	before := osThreads(t)

	sessions := make([]copied, loops)
	for i := range sessions {
		sessions[i] = startCopy(t, loopEngine(startLoop(t)))
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
