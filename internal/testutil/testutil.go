// Package testutil holds the helpers that the tests of several packages
// share: polling with a deadline, free loopback ports, a log sink that
// goroutines write while the test reads it. Only _test.go files import it,
// so nothing here reaches the pgha binary.
package testutil

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"
)

// WaitFor calls cond until it returns nil, and fails the test (Fatal) when
// timeout passes first, with cond's last error. It must be called from the
// test's goroutine. The pause between calls grows from 10 ms to 100 ms:
// short waits end soon after the condition holds, long ones do not spin.
// Timeouts should be generous: they bound a failing test, not a passing
// one.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	pause := 10 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		left := time.Until(deadline)
		if left <= 0 {
			tb.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(min(pause, left))
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// errNotYet is what WaitUntil reports for a condition that has no words.
var errNotYet = errors.New("condition not met")

// WaitUntil is WaitFor for a condition that only says yes or no.
func WaitUntil(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	WaitFor(tb, timeout, what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}

// LogBuffer is a log sink that several goroutines may write while the test
// reads it (a bytes.Buffer is not safe for that).
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
