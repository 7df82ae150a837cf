package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/internal/testutil"
)

// TestCoreLifecycle walks a cluster through its life as an operator
// would: form, replicate, list, lose a replica agent, grow by one node
// (first refused for carrying another cluster's data), shrink again, and
// restart everything.
func TestCoreLifecycle(t *testing.T) {
	c := newCluster(t, 3)
	start := time.Now()
	c.StartAll()
	ci := c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	t.Logf("3-node cluster formed with 2 streaming replicas in %.1fs", time.Since(start).Seconds())
	if ci.SystemID == 0 || ci.ClusterID == "" {
		t.Fatalf("cluster has no system id / cluster id: %+v", ci)
	}
	primary := c.Node(ci.Primary)
	var replicas []*Node
	for _, nd := range c.Nodes {
		if nd != primary {
			replicas = append(replicas, nd)
		}
	}

	ok := t.Run("replication", func(t *testing.T) {
		pc := connect(t, primary)
		ctx := context.Background()
		testutil.WaitFor(t, 30*time.Second, "two streaming rows in pg_stat_replication", func() error {
			var n int
			if err := pc.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").Scan(&n); err != nil {
				return err
			}
			if n != 2 {
				return fmt.Errorf("%d streaming", n)
			}
			return nil
		})
		var cs string
		if err := pc.QueryRow(ctx, "SHOW data_checksums").Scan(&cs); err != nil || cs != "on" {
			t.Errorf("data_checksums = %q (%v), want on", cs, err)
		}
		if _, err := pc.Exec(ctx, "CREATE TABLE it (id int PRIMARY KEY, note text)"); err != nil {
			t.Fatal(err)
		}
		if _, err := pc.Exec(ctx, "INSERT INTO it VALUES (1, 'written on the primary')"); err != nil {
			t.Fatal(err)
		}
		for _, r := range replicas {
			rc := connect(t, r)
			testutil.WaitFor(t, 30*time.Second, "row visible on "+r.Name, func() error {
				var note string
				return rc.QueryRow(ctx, "SELECT note FROM it WHERE id = 1").Scan(&note)
			})
			var inRecovery bool
			if err := rc.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || !inRecovery {
				t.Errorf("%s: pg_is_in_recovery = %v (%v), want true", r.Name, inRecovery, err)
			}
		}
	})
	if !ok {
		return
	}

	if !t.Run("list", func(t *testing.T) {
		api := fmt.Sprintf("127.0.0.1:%d", replicas[0].API)
		out, stderr, code := cli(t, "list", "--api", api)
		if code != 0 {
			t.Fatalf("pgha list: exit %d: %s", code, stderr)
		}
		for _, want := range []string{"Member", "Lag in MB", "Leader", "Replica", "streaming", "running", primary.Name} {
			if !strings.Contains(out, want) {
				t.Errorf("pgha list output lacks %q:\n%s", want, out)
			}
		}
		t.Logf("pgha list:\n%s", out)
		out, stderr, code = cli(t, "list", "--api", api, "-o", "json")
		if code != 0 {
			t.Fatalf("pgha list -o json: exit %d: %s", code, stderr)
		}
		var got struct {
			Members []struct{ Name, Role, State string }
		}
		decodeJSON(t, out, &got)
		if len(got.Members) != 3 {
			t.Fatalf("json lists %d members, want 3: %s", len(got.Members), out)
		}
	}) {
		return
	}

	if !t.Run("replica agent killed and restarted", func(t *testing.T) {
		r := replicas[0]
		pm := postmasterPID(r)
		c.Kill(r)
		// The postmaster is the agent's child with a parent-death signal.
		testutil.WaitFor(t, 30*time.Second, "postmaster of the killed agent gone", func() error {
			if pm > 0 && syscall.Kill(pm, 0) == nil {
				return fmt.Errorf("postmaster %d alive", pm)
			}
			return nil
		})
		pc := connect(t, primary)
		if _, err := pc.Exec(context.Background(), "INSERT INTO it VALUES (2, 'written while a replica was down')"); err != nil {
			t.Fatal(err)
		}
		c.Start(r)
		c.WaitHealthy(90*time.Second, "n1", "n2", "n3")
		rc := connect(t, r)
		testutil.WaitFor(t, 30*time.Second, "row 2 on the restarted replica", func() error {
			var note string
			return rc.QueryRow(context.Background(), "SELECT note FROM it WHERE id = 2").Scan(&note)
		})
	}) {
		return
	}

	n4 := c.addNode("n4")
	if !t.Run("join", func(t *testing.T) {
		// A data directory from another cluster must be refused, untouched.
		foreignPGData := filepath.Join(n4.Dir, "pgdata")
		initForeign(t, foreignPGData)
		marker := filepath.Join(foreignPGData, "keep-me")
		if err := os.WriteFile(marker, []byte("precious"), 0o600); err != nil {
			t.Fatal(err)
		}
		c.Start(n4)
		n4api := fmt.Sprintf("127.0.0.1:%d", n4.API)
		testutil.WaitFor(t, 30*time.Second, "n4 API up", func() error {
			_, _, err := n4.Client().Health(context.Background())
			return err
		})
		// A join to an address where nobody listens fails with a message.
		dead := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
		_, stderr, code := cli(t, "join", "--api", n4api, "--timeout", "15s", dead)
		if code == 0 || !strings.Contains(stderr, dead) {
			t.Errorf("join to a dead address: exit %d, stderr %q; want a failure naming the address", code, stderr)
		}
		out, stderr, code := cli(t, "join", "--api", n4api, fmt.Sprintf("127.0.0.1:%d", primary.Gossip))
		if code != 0 {
			t.Fatalf("pgha join: exit %d: %s %s", code, out, stderr)
		}
		testutil.WaitFor(t, 60*time.Second, "n4 refusing the foreign data directory", func() error {
			ci, err := c.Info()
			if err != nil {
				return err
			}
			for _, m := range ci.Members {
				if m.Name == "n4" && strings.Contains(m.Error, "another cluster") {
					return nil
				}
			}
			return fmt.Errorf("n4 not refusing yet: %+v", ci.Members)
		})
		if data, err := os.ReadFile(marker); err != nil || string(data) != "precious" {
			t.Fatalf("foreign data directory was touched: %v %q", err, data)
		}
		// The operator moves it away; the node clones.
		c.Stop(n4)
		if err := os.Rename(foreignPGData, foreignPGData+".moved"); err != nil {
			t.Fatal(err)
		}
		c.Start(n4)
		c.WaitHealthy(2*time.Minute, "n1", "n2", "n3", "n4")
		pc := connect(t, primary)
		testutil.WaitFor(t, 30*time.Second, "slot pgha_n4 active on the primary", func() error {
			var active bool
			err := pc.QueryRow(context.Background(), "SELECT active FROM pg_replication_slots WHERE slot_name = 'pgha_n4'").Scan(&active)
			if err != nil {
				return err
			}
			if !active {
				return fmt.Errorf("slot inactive")
			}
			return nil
		})
		testutil.WaitFor(t, 30*time.Second, "n4 a Raft voter", func() error {
			ci, err := c.Info()
			if err != nil {
				return err
			}
			for _, m := range ci.Members {
				if m.Name == "n4" && m.Raft == "voter" {
					return nil
				}
			}
			return fmt.Errorf("not yet")
		})
	}) {
		return
	}

	if !t.Run("leave", func(t *testing.T) {
		out, stderr, code := cli(t, "leave", "--api", fmt.Sprintf("127.0.0.1:%d", n4.API))
		if code != 0 {
			t.Fatalf("pgha leave: exit %d: %s %s", code, out, stderr)
		}
		c.WaitExit(n4, 60*time.Second)
		testutil.WaitFor(t, 30*time.Second, "n4 gone from the cluster", func() error {
			ci, err := c.Info()
			if err != nil {
				return err
			}
			for _, m := range ci.Members {
				if m.Name == "n4" {
					return fmt.Errorf("n4 still listed as %s/%s raft %s", m.Role, m.State, m.Raft)
				}
			}
			return nil
		})
		pc := connect(t, primary)
		testutil.WaitFor(t, 30*time.Second, "slot pgha_n4 dropped", func() error {
			var n int
			if err := pc.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgha_n4'").Scan(&n); err != nil {
				return err
			}
			if n != 0 {
				return fmt.Errorf("slot still there")
			}
			return nil
		})
		if _, err := os.Stat(filepath.Join(n4.Dir, "pgdata", "PG_VERSION")); err != nil {
			t.Errorf("leave must keep the PostgreSQL data: %v", err)
		}
	}) {
		return
	}

	t.Run("full restart keeps data and raft state", func(t *testing.T) {
		before, err := c.Info()
		if err != nil {
			t.Fatal(err)
		}
		for _, nd := range c.Nodes[:3] {
			c.Stop(nd)
		}
		for _, nd := range c.Nodes[:3] {
			c.Start(nd)
		}
		after := c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
		if after.SystemID != before.SystemID || after.ClusterID != before.ClusterID {
			t.Fatalf("cluster identity changed across restart: %d/%s -> %d/%s", before.SystemID, before.ClusterID, after.SystemID, after.ClusterID)
		}
		pc := connect(t, c.Node(after.Primary))
		var n int
		if err := pc.QueryRow(context.Background(), "SELECT count(*) FROM it").Scan(&n); err != nil || n != 2 {
			t.Fatalf("rows after restart = %d (%v), want 2", n, err)
		}
		for _, m := range after.Members {
			if m.Name == "n4" {
				t.Errorf("n4 came back after restart: %+v", m)
			}
		}
		_ = api.ClusterInfo{}
	})
}

// initForeign runs initdb into dir as the unprivileged user, making a data
// directory of an unrelated cluster.
func initForeign(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/usr/lib/postgresql/15/bin/initdb", "-D", dir, "-U", "postgres", "--auth=trust")
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skip("no postgres OS user")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(filepath.Dir(dir), uid, gid); err != nil {
			t.Fatal(err)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("initdb of a foreign data dir: %v\n%s", err, out)
	}
}
