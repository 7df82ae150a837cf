package integration

import (
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/testutil"
)

// TestWitness: two database nodes plus a witness (a Raft voter without
// PostgreSQL) form a cluster that survives the loss of either database
// node; the witness is never the primary.
func TestWitness(t *testing.T) {
	c := newCluster(t, 3)
	w := c.Node("n3")
	data, err := os.ReadFile(w.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(w.ConfigPath, []byte("witness: true\n"+string(data)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.StartAll()
	ci := c.WaitHealthy(2*time.Minute, "n1", "n2")
	for _, m := range ci.Members {
		if m.Name == "n3" && (m.Role != "witness" || m.Raft != "voter") {
			t.Fatalf("n3 is %s/%s raft %s, want a witness voter", m.Role, m.State, m.Raft)
		}
	}
	if ci.Primary == "n3" {
		t.Fatal("the witness became primary")
	}
	if _, err := os.Stat(w.Dir + "/pgdata/PG_VERSION"); err == nil {
		t.Fatal("the witness has a PostgreSQL data directory")
	}
	old := c.Node(ci.Primary)
	pc := connect(t, old)
	if _, err := pc.Exec(context.Background(), "CREATE TABLE fo (id int PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
		t.Fatal(err)
	}
	pc.Close(context.Background())
	// Replication is asynchronous: let the table reach the other database
	// node before the primary's node is killed.
	var other *Node
	for _, nd := range []*Node{c.Node("n1"), c.Node("n2")} {
		if nd != old {
			other = nd
		}
	}
	oc := connect(t, other)
	testutil.WaitFor(t, 30*time.Second, "the table on "+other.Name, func() error {
		_, err := oc.Exec(context.Background(), "SELECT 1 FROM fo")
		return err
	})
	oc.Close(context.Background())
	pm := postmasterPID(old)
	c.Kill(old)
	_ = syscall.Kill(pm, syscall.SIGKILL)
	newP := c.waitNewPrimary(t, old.Name, time.Minute)
	if newP.Name == "n3" {
		t.Fatal("the witness became primary")
	}
	testutil.WaitFor(t, 30*time.Second, "a write on the new primary", func() error { return insert(context.Background(), newP, 1) })
	out, _, _ := cli(t, "list", "--api", "127.0.0.1:"+itoa(w.API))
	if !strings.Contains(out, "Witness") {
		t.Errorf("pgha list does not show the witness:\n%s", out)
	}
	c.Start(old)
	c.WaitHealthy(2*time.Minute, "n1", "n2")
}

func itoa(n int) string { return strconv.Itoa(n) }
