package pgnode_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/testutil"
	"github.com/pgha/pgha/pgnode"
)

// TestFenceStopsBackendsOfAFrozenPostmaster: backends live in process
// groups of their own, so the fence must reach them by PID. With the
// postmaster frozen (it cannot pass SIGQUIT on), a client's backend must
// still be gone after Fence.
func TestFenceStopsBackendsOfAFrozenPostmaster(t *testing.T) {
	binDir(t)
	base := tempDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := mustNew(t, nodeConfig(t, base, "n1", testutil.FreePort(t)))
	defer n.Close()
	if _, err := n.Bootstrap(ctx, pgnode.Desired{Role: pgnode.RolePrimary}); err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	conn, err := n.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var backend int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&backend); err != nil {
		t.Fatal(err)
	}
	// A CPU-bound query: unlike an idle or sleeping backend, it does not
	// notice that its postmaster died, so only a signal of its own stops it.
	go func() { _, _ = conn.Exec(ctx, "SELECT count(*) FROM generate_series(1, 100000000000)") }()
	time.Sleep(300 * time.Millisecond)
	// Whatever happens, the test leaves no busy backend behind.
	t.Cleanup(func() { _ = syscall.Kill(backend, syscall.SIGKILL) })
	pm := n.PID()
	if pm <= 0 {
		t.Fatal("no postmaster pid")
	}
	if err := syscall.Kill(pm, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := n.Fence(150 * time.Millisecond); err != nil {
		t.Fatalf("Fence: %v", err)
	}
	testutil.WaitUntil(t, 3*time.Second, fmt.Sprintf("backend %d to be gone after the fence", backend), func() bool {
		return syscall.Kill(backend, 0) != nil
	})
	conn.Close(context.Background())
	if n.Running() {
		t.Error("postmaster still running after the fence")
	}
}
