package testutil_test

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
	"time"

	"github.com/pgha/pgha/internal/testutil"
)

// fatalTB records Fatalf instead of ending the test; the panic stands for
// the runtime.Goexit of the real one.
type fatalTB struct {
	testing.TB
	msg string
}

type fatalled struct{}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic(fatalled{})
}

// fatalOf runs fn with a fatalTB and returns what it was failed with.
func fatalOf(t *testing.T, fn func(tb testing.TB)) (msg string) {
	f := &fatalTB{TB: t}
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(fatalled); !ok {
				panic(r)
			}
			msg = f.msg
		}
	}()
	fn(f)
	return ""
}

func TestWaitFor(t *testing.T) {
	calls := 0
	testutil.WaitFor(t, 5*time.Second, "the third call", func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if calls != 3 {
		t.Errorf("cond called %d times, want 3", calls)
	}

	start := time.Now()
	msg := fatalOf(t, func(tb testing.TB) {
		testutil.WaitFor(tb, 200*time.Millisecond, "the impossible", func() error { return errors.New("still no") })
	})
	if took := time.Since(start); took < 200*time.Millisecond || took > 2*time.Second {
		t.Errorf("gave up after %s, want about 200ms", took)
	}
	if want := "timed out after 200ms waiting for the impossible: still no"; msg != want {
		t.Errorf("failed with %q, want %q", msg, want)
	}

	msg = fatalOf(t, func(tb testing.TB) {
		testutil.WaitUntil(tb, 50*time.Millisecond, "false to be true", func() bool { return false })
	})
	if !strings.Contains(msg, "waiting for false to be true") {
		t.Errorf("WaitUntil failed with %q", msg)
	}
	testutil.WaitUntil(t, time.Second, "true", func() bool { return true })
}

func TestFreePort(t *testing.T) {
	seen := map[int]bool{}
	for range 50 {
		p := testutil.FreePort(t)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		if p < 10000 || p >= 32768 {
			t.Errorf("port %d outside 10000-32767", p)
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("TCP %s: %v", addr, err)
		}
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			l.Close()
			t.Fatalf("UDP %s: %v", addr, err)
		}
		l.Close()
		u.Close()
	}
	// The block is claimed: another lock on its file (another open file
	// description, as another process would have) is refused.
	var first int
	for p := range seen {
		first = p - (p-10000)%1000
		break
	}
	f, err := os.Open(filepath.Join(os.TempDir(), "pgha-test-ports", fmt.Sprintf("block-%d", first)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Errorf("second lock on block %d = %v, want EWOULDBLOCK", first, err)
	}

	if addr := testutil.FreeAddr(t); !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Errorf("FreeAddr = %q", addr)
	}
}

func TestLogBuffer(t *testing.T) {
	var lb testutil.LogBuffer
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				fmt.Fprintf(&lb, "w%d\n", i)
				_ = lb.String()
			}
		}()
	}
	wg.Wait()
	if n := strings.Count(lb.String(), "\n"); n != 400 {
		t.Errorf("%d lines, want 400", n)
	}
}
