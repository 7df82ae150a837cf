package testutil

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Test ports come from below the kernel's ephemeral range, so that no
// outgoing connection (of an agent, of PostgreSQL) can take a port between
// the moment a test picks it and the moment its server binds it, which
// may be seconds later (initdb runs first).
//
// `go test ./...` runs the test binaries of several packages at once, and
// each hands out ports it binds only later; checking that a port is free
// now does not keep another process from picking it too. So each process
// first claims a block of portBlock ports of its own: an exclusive flock
// on a file named after the block, in the temp directory, held as long as
// the process lives (the kernel drops it when the process ends, however
// it ends, so no stale claim remains). Within its block a process hands
// ports out in turn and skips any that something else has bound.
const (
	portLow   = 10000
	portBlock = 1000
)

var ports struct {
	mu    sync.Mutex
	first int      // first port of this process's block; 0 before the claim
	next  int      // offset of the next port to try in the block
	claim *os.File // holds the flock; never closed
}

// FreePort returns a port of 127.0.0.1 that is free for both TCP and UDP
// (memberlist binds both) and that no other test process will hand out.
func FreePort(tb testing.TB) int {
	tb.Helper()
	ports.mu.Lock()
	defer ports.mu.Unlock()
	if ports.first == 0 {
		first, f, err := claimBlock()
		if err != nil {
			tb.Fatalf("free port: %v", err)
		}
		ports.first, ports.claim = first, f
		// Start at an offset chosen by the PID: a new run seldom reuses
		// the ports of the previous one, whose leftovers (after a crash)
		// may still try to reach them.
		ports.next = os.Getpid() % portBlock
	}
	for range portBlock {
		p := ports.first + ports.next
		ports.next = (ports.next + 1) % portBlock
		if portFree(p) {
			return p
		}
	}
	tb.Fatalf("free port: none left in %d-%d", ports.first, ports.first+portBlock-1)
	return 0
}

// FreeAddr is "127.0.0.1:PORT" with a FreePort: an address where nothing
// listens, to listen on or to see a connection refused.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(tb)))
}

func portFree(p int) bool {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	u.Close()
	return true
}

// claimBlock takes the first block nobody holds, starting at one chosen by
// the PID so that concurrent processes seldom try the same files first.
func claimBlock() (int, *os.File, error) {
	blocks := (ephemeralLow() - portLow) / portBlock
	if blocks < 1 {
		return 0, nil, fmt.Errorf("the ephemeral port range starts below %d", portLow+portBlock)
	}
	dir := filepath.Join(os.TempDir(), "pgha-test-ports")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, nil, err
	}
	// Like /tmp: every user may add a block file; best effort, only the
	// owner can change the mode.
	_ = os.Chmod(dir, 0o1777)
	start := os.Getpid() % blocks
	for i := range blocks {
		first := portLow + (start+i)%blocks*portBlock
		path := filepath.Join(dir, fmt.Sprintf("block-%d", first))
		f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o644)
		if err != nil {
			return 0, nil, err
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return first, f, nil
		}
		f.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return 0, nil, fmt.Errorf("lock %s: %w", path, err)
		}
	}
	return 0, nil, fmt.Errorf("all %d blocks of test ports from %d are claimed by other test processes", blocks, portLow)
}

// ephemeralLow is where the kernel's ephemeral port range starts (Linux's
// default 32768 when /proc does not say).
func ephemeralLow() int {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 32768
	}
	low, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return low
}
