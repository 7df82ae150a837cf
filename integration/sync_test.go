package integration

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/internal/testutil"
)

// TestSynchronousModeAndDynamicConfig turns synchronous mode on through
// the dynamic configuration, checks a synchronous standby is recorded and
// used, then kills the primary's whole node while a client commits rows
// one by one: every acknowledged row must be on the new primary. It also
// changes PostgreSQL parameters cluster-wide (reload and restart-pending
// cases) and restarts a member.
func TestSynchronousModeAndDynamicConfig(t *testing.T) {
	c := newCluster(t, 3)
	c.StartAll()
	ci := c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	p := c.Node(ci.Primary)
	apiAddr := fmt.Sprintf("127.0.0.1:%d", p.API)
	ctx := context.Background()
	pc := connect(t, p)
	if _, err := pc.Exec(ctx, "CREATE TABLE fo (id int PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
		t.Fatal(err)
	}

	if !t.Run("dynamic parameters", func(t *testing.T) {
		out, stderr, code := cli(t, "edit-config", "--api", apiAddr, "--pg", "work_mem=16MB", "--pg", "max_prepared_transactions=5")
		if code != 0 {
			t.Fatalf("edit-config: %d %s %s", code, out, stderr)
		}
		out, _, _ = cli(t, "show-config", "--api", apiAddr)
		if !strings.Contains(out, "work_mem") {
			t.Errorf("show-config lacks work_mem:\n%s", out)
		}
		for _, nd := range c.Nodes {
			conn := connect(t, nd)
			testutil.WaitFor(t, 20*time.Second, "work_mem 16MB on "+nd.Name, func() error {
				var v string
				if err := conn.QueryRow(ctx, "SHOW work_mem").Scan(&v); err != nil {
					return err
				}
				if v != "16MB" {
					return fmt.Errorf("work_mem %s", v)
				}
				return nil
			})
		}
		testutil.WaitFor(t, 20*time.Second, "pending restart shown for every member", func() error {
			ci, err := c.Info()
			if err != nil {
				return err
			}
			for _, m := range ci.Members {
				if m.Tags["pending_restart"] != true {
					return fmt.Errorf("%s tags %v", m.Name, m.Tags)
				}
			}
			return nil
		})
		var replica *Node
		for _, nd := range c.Nodes {
			if nd != p {
				replica = nd
				break
			}
		}
		if out, stderr, code := cli(t, "restart", "--api", apiAddr, replica.Name); code != 0 {
			t.Fatalf("pgha restart %s: %d %s %s", replica.Name, code, out, stderr)
		}
		rc := connect(t, replica)
		var v string
		if err := rc.QueryRow(ctx, "SHOW max_prepared_transactions").Scan(&v); err != nil || v != "5" {
			t.Fatalf("after restart max_prepared_transactions = %q (%v), want 5", v, err)
		}
		_, stderr, code = cli(t, "edit-config", "--api", apiAddr, "--set", "no_such_key=1")
		if code == 0 || !strings.Contains(stderr, "unknown key") {
			t.Errorf("unknown dynamic key: exit %d, stderr %q", code, stderr)
		}
		c.WaitHealthy(time.Minute, "n1", "n2", "n3")
	}) {
		return
	}

	if !t.Run("synchronous standby recorded", func(t *testing.T) {
		if out, stderr, code := cli(t, "edit-config", "--api", apiAddr, "--set", "synchronous_mode=true"); code != 0 {
			t.Fatalf("edit-config: %d %s %s", code, out, stderr)
		}
		testutil.WaitFor(t, 30*time.Second, "a sync standby in pgha list", func() error {
			ci, err := c.Info()
			if err != nil {
				return err
			}
			for _, m := range ci.Members {
				if m.Role == "sync_standby" {
					return nil
				}
			}
			return fmt.Errorf("none yet (%s)", ci.Sync)
		})
		var state string
		if err := pc.QueryRow(ctx, "SELECT string_agg(sync_state, ',') FROM pg_stat_replication").Scan(&state); err != nil || !strings.Contains(state, "sync") {
			t.Fatalf("pg_stat_replication sync states = %q (%v)", state, err)
		}
		out, _, _ := cli(t, "list", "--api", apiAddr)
		if !strings.Contains(out, "Sync Standby") || !strings.Contains(out, "ynchronous mode") {
			t.Errorf("pgha list does not show synchronous replication:\n%s", out)
		}
		t.Logf("pgha list:\n%s", out)
	}) {
		return
	}

	t.Run("no acknowledged commit lost when the primary's node dies", func(t *testing.T) {
		ci, err := c.Info()
		if err != nil {
			t.Fatal(err)
		}
		old := c.Node(ci.Primary)
		var syncStandby string
		for _, m := range ci.Members {
			if m.Role == "sync_standby" {
				syncStandby = m.Name
			}
		}
		w := startAckWriter(ctx, old, 1, 0)
		w.WaitAcked(t, 20, 30*time.Second)
		pm := postmasterPID(old)
		c.Kill(old)
		_ = syscall.Kill(pm, syscall.SIGKILL)
		acked := w.Stop()
		newP := c.waitNewPrimary(t, old.Name, time.Minute)
		if newP.Name != syncStandby {
			t.Errorf("new primary %s is not the synchronous standby %s", newP.Name, syncStandby)
		}
		if len(acked) < 10 {
			t.Fatalf("only %d commits acknowledged before the kill", len(acked))
		}
		missing := missingOn(t, newP, acked)
		t.Logf("%d commits acknowledged before the kill, %d missing on the new primary", len(acked), missing)
		if missing != 0 {
			t.Fatalf("%d acknowledged commits lost", missing)
		}
		c.Start(old)
		c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
		_ = api.ClusterInfo{}
	})
}
