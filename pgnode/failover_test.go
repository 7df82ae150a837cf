package pgnode_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/testutil"
	"github.com/pgha/pgha/pgnode"
)

// TestPromoteRewind walks a failover: replica B is restarted as a
// standby with no upstream and promoted, old primary A takes a write B
// never sees, crashes, is rewound onto B's timeline and follows B; at
// last A's directory is moved aside.
func TestPromoteRewind(t *testing.T) {
	binDir(t)
	base := tempDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	acfg := nodeConfig(t, base, "a", testutil.FreePort(t))
	a := mustNew(t, acfg)
	defer a.Close()
	bcfg := nodeConfig(t, base, "b", testutil.FreePort(t))
	b := mustNew(t, bcfg)
	defer b.Close()
	upA := pgnode.Upstream{Host: "127.0.0.1", Port: acfg.Port}
	upB := pgnode.Upstream{Host: "127.0.0.1", Port: bcfg.Port}

	sysid, err := a.Bootstrap(ctx, pgnode.Desired{Role: pgnode.RolePrimary})
	if err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	if err := b.Clone(ctx, upA, nil); err != nil {
		t.Fatalf("Clone: %v", err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatalf("replica Start: %v", err)
	}
	execSQL(t, ctx, a, "CREATE TABLE t (v text); INSERT INTO t VALUES ('before')")
	waitRows(t, ctx, b, "before")

	// --- a standby with no upstream, as the agent starts a replica it is
	// about to promote ---
	if err := b.Stop(ctx, pgnode.StopFast); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := b.WriteConfig(pgnode.Desired{Role: pgnode.RoleReplica}); err != nil {
		t.Fatalf("WriteConfig(replica, nil): %v", err)
	}
	conf := readFile(t, filepath.Join(bcfg.DataDir, "postgresql.conf"))
	if strings.Contains(conf, "primary_conninfo") || strings.Contains(conf, "primary_slot_name") {
		t.Errorf("standby without upstream has an upstream setting:\n%s", conf)
	}
	if _, err := os.Stat(filepath.Join(bcfg.DataDir, "standby.signal")); err != nil {
		t.Errorf("standby without upstream: %v", err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatalf("Start as a standby without upstream: %v", err)
	}
	if st, err := b.Status(ctx); err != nil || !st.InRecovery || st.Streaming || st.Timeline != 1 {
		t.Fatalf("standby without upstream: Status = %+v, %v; want in recovery, not streaming, timeline 1", st, err)
	}

	// --- promote B ---
	if _, err := a.Promote(ctx); !errors.Is(err, pgnode.ErrNotStandby) {
		t.Errorf("Promote of a primary = %v, want ErrNotStandby", err)
	}
	start := time.Now()
	tli, err := b.Promote(ctx)
	if err != nil || tli != 2 {
		t.Fatalf("Promote = %d, %v; want timeline 2", tli, err)
	}
	t.Logf("promote took %s", time.Since(start).Round(time.Millisecond))
	if st, err := b.Status(ctx); err != nil || st.InRecovery || st.Timeline != 2 {
		t.Fatalf("after Promote: Status = %+v, %v; want a primary on timeline 2", st, err)
	}
	if cd, err := b.ControlData(ctx); err != nil || cd.Timeline != 2 || cd.ClusterState != "in production" || cd.SystemID != sysid {
		t.Fatalf("after Promote: ControlData = %+v, %v; want timeline 2, in production, system id %d", cd, err, sysid)
	}
	if _, err := b.Promote(ctx); !errors.Is(err, pgnode.ErrNotStandby) {
		t.Errorf("second Promote = %v, want ErrNotStandby", err)
	}
	execSQL(t, ctx, b, "INSERT INTO t VALUES ('on b')")

	// --- A takes a write B never sees, then crashes ---
	execSQL(t, ctx, a, "INSERT INTO t VALUES ('diverged')")
	if err := a.Stop(ctx, pgnode.StopImmediate); err != nil {
		t.Fatalf("Stop immediate: %v", err)
	}
	if _, err := a.Promote(ctx); !errors.Is(err, pgnode.ErrNotRunning) {
		t.Errorf("Promote when stopped = %v, want ErrNotRunning", err)
	}
	cd, err := a.ControlData(ctx)
	if err != nil || !cd.WasPrimary() || cd.Timeline != 1 {
		t.Fatalf("crashed primary: ControlData = %+v, %v; want WasPrimary on timeline 1", cd, err)
	}

	// --- rewind A onto B ---
	// The agent may write the replica configuration before it rewinds:
	// standby.signal must not stop pg_rewind's crash recovery.
	if _, err := a.WriteConfig(pgnode.Desired{Role: pgnode.RoleReplica, Upstream: &upB}); err != nil {
		t.Fatalf("WriteConfig: %v", err)
	}
	start = time.Now()
	if err := a.Rewind(ctx, upB); err != nil {
		t.Fatalf("Rewind: %v", err)
	}
	t.Logf("rewind took %s", time.Since(start).Round(time.Millisecond))
	if cd, err := a.ControlData(ctx); err != nil || cd.WasPrimary() || cd.MinRecoveryEnd == 0 {
		t.Errorf("after Rewind: ControlData = %+v, %v; want not WasPrimary and a minimum recovery end", cd, err)
	}
	// pg_rewind copied B's configuration; ours must be back.
	conf = readFile(t, filepath.Join(acfg.DataDir, "postgresql.conf"))
	if !strings.Contains(conf, "port = '"+strconv.Itoa(acfg.Port)+"'\n") || !strings.Contains(conf, "port="+strconv.Itoa(bcfg.Port)+" ") ||
		!strings.Contains(conf, "cluster_name = 'a'\n") {
		t.Errorf("postgresql.conf after Rewind is not A's replica configuration:\n%s", conf)
	}
	if ch, err := a.WriteConfig(pgnode.Desired{Role: pgnode.RoleReplica, Upstream: &upB}); err != nil || ch.Changed {
		t.Errorf("WriteConfig after Rewind = %+v, %v; want nothing left to change", ch, err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatalf("Start after Rewind: %v", err)
	}
	testutil.WaitFor(t, 30*time.Second, "A streaming from B on timeline 2", func() error {
		st, err := a.Status(ctx)
		if err == nil && !(st.InRecovery && st.Streaming && st.Timeline == 2) {
			err = fmt.Errorf("in recovery %v, streaming %v, timeline %d", st.InRecovery, st.Streaming, st.Timeline)
		}
		return err
	})
	waitRows(t, ctx, a, "before", "on b")

	// --- refusals while running ---
	if err := a.Rewind(ctx, upB); !errors.Is(err, pgnode.ErrRunning) {
		t.Errorf("Rewind while running = %v, want ErrRunning", err)
	}
	if _, err := a.MoveAside(); !errors.Is(err, pgnode.ErrRunning) {
		t.Errorf("MoveAside while running = %v, want ErrRunning", err)
	}

	// --- move A's directory aside ---
	if err := a.Stop(ctx, pgnode.StopFast); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	before := tree(t, acfg.DataDir)
	dst, err := a.MoveAside()
	if err != nil || !strings.HasPrefix(dst, acfg.DataDir+".diverged-") {
		t.Fatalf("MoveAside = %q, %v", dst, err)
	}
	if after := tree(t, dst); !slices.Equal(after, before) || len(after) < 100 {
		t.Errorf("moved directory differs: %d entries before, %d after", len(before), len(after))
	}
	if st, err := a.DataState(); err != nil || st != pgnode.DataEmpty {
		t.Errorf("DataState after MoveAside = %v, %v; want empty", st, err)
	}
	if _, err := a.MoveAside(); !errors.Is(err, pgnode.ErrNoData) {
		t.Errorf("MoveAside with nothing there = %v, want ErrNoData", err)
	}

	// --- nothing to rewind: the moved directory already follows B ---
	ccfg := nodeConfig(t, base, "c", testutil.FreePort(t))
	ccfg.DataDir = dst
	var logs bytes.Buffer
	ccfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(&logs, t.Output()), nil))
	c := mustNew(t, ccfg)
	defer c.Close()
	if err := c.Rewind(ctx, upB); err != nil {
		t.Fatalf("Rewind of a directory on B's timeline: %v", err)
	}
	if !strings.Contains(logs.String(), "no rewind required") {
		t.Error("Rewind did not log that no rewind was required")
	}
	conf = readFile(t, filepath.Join(dst, "postgresql.conf"))
	if !strings.Contains(conf, "port = '"+strconv.Itoa(ccfg.Port)+"'\n") {
		t.Errorf("postgresql.conf after a no-op Rewind is not C's:\n%s", conf)
	}
}

func execSQL(t *testing.T, ctx context.Context, n *pgnode.Node, sql string) {
	t.Helper()
	c, err := n.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// waitRows waits until table t holds exactly want (in order).
func waitRows(t *testing.T, ctx context.Context, n *pgnode.Node, want ...string) {
	t.Helper()
	var got []string
	testutil.WaitFor(t, 30*time.Second, "rows "+strings.Join(want, ", "), func() error {
		c, err := n.Connect(ctx)
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		rows, err := c.Query(ctx, "SELECT v FROM t ORDER BY v")
		if err != nil {
			return err
		}
		got = got[:0]
		for rows.Next() {
			var v string
			rows.Scan(&v)
			got = append(got, v)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return errors.New("rows are " + strings.Join(got, ", "))
		}
		return nil
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// tree lists every path below dir with its size and mode.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		size := info.Size()
		if d.IsDir() {
			size = 0 // directory sizes are file system details
		}
		out = append(out, rel+" "+info.Mode().String()+" "+strconv.Itoa(int(size)))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
