package integration

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/internal/testutil"
)

// proxyDSN is a libpq URL through a node's proxy port.
func proxyDSN(port int) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword("postgres", superPass), Host: fmt.Sprintf("127.0.0.1:%d", port), Path: "/postgres", RawQuery: "connect_timeout=5&sslmode=disable"}
	return u.String()
}

func proxyConnect(ctx context.Context, port int) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return pgx.Connect(ctx, proxyDSN(port))
}

// TestProxy checks the embedded proxy the way an application sees it:
// the write port of any node reaches the primary, the read port spreads
// over the replicas, a switchover costs a client opening a connection
// every 50 ms no failed attempt, and connections to the old primary are
// closed when it changes.
func TestProxy(t *testing.T) {
	c := newCluster(t, 3)
	c.StartAll()
	ci := c.WaitHealthy(2*time.Minute, "n1", "n2", "n3")
	ctx := context.Background()
	p := c.Node(ci.Primary)
	pc := connect(t, p)
	if _, err := pc.Exec(ctx, "CREATE TABLE px (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	// Routes follow gossip: give every node's proxy a moment to see the
	// replicas streaming.
	testutil.WaitFor(t, 30*time.Second, "every write port reaching the primary", func() error {
		for _, nd := range c.Nodes {
			conn, err := proxyConnect(ctx, nd.Write)
			if err != nil {
				return err
			}
			var rec bool
			err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec)
			conn.Close(ctx)
			if err != nil {
				return err
			}
			if rec {
				return fmt.Errorf("write port of %s reached a replica", nd.Name)
			}
		}
		return nil
	})

	if !t.Run("read port spreads over the replicas", func(t *testing.T) {
		seen := map[int]int{}
		for i := 0; i < 100; i++ {
			conn, err := proxyConnect(ctx, c.Nodes[i%3].Read)
			if err != nil {
				t.Fatal(err)
			}
			var rec bool
			var port int
			if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery(), current_setting('port')::int").Scan(&rec, &port); err != nil {
				t.Fatal(err)
			}
			conn.Close(ctx)
			if !rec {
				t.Fatalf("read port reached the primary while replicas are healthy")
			}
			seen[port]++
		}
		if len(seen) != 2 {
			t.Fatalf("100 read connections reached %v, want both replicas", seen)
		}
		for port, n := range seen {
			if n < 20 {
				t.Errorf("replica on port %d got only %d of 100 connections: %v", port, n, seen)
			}
		}
		t.Logf("100 read connections: %v", seen)
	}) {
		return
	}

	t.Run("switchover through the write port: no failed connection", func(t *testing.T) {
		old := c.primaryNode(t)
		var cand *Node
		for _, nd := range c.Nodes {
			if nd != old {
				cand = nd
				break
			}
		}
		// A long-lived connection to the old primary through the proxy of
		// a third node: it must be closed when the primary changes.
		var third *Node
		for _, nd := range c.Nodes {
			if nd != old && nd != cand {
				third = nd
			}
		}
		held, err := proxyConnect(ctx, third.Write)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close(ctx)

		var attempts, failed, insertErrs atomic.Int64
		var firstFail atomic.Value
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 1; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				attempts.Add(1)
				conn, err := proxyConnect(ctx, c.Nodes[i%3].Write)
				if err != nil {
					if failed.Add(1) == 1 {
						firstFail.Store(err.Error())
					}
				} else {
					if _, err := conn.Exec(ctx, "INSERT INTO px VALUES ($1)", i); err != nil {
						insertErrs.Add(1)
					}
					conn.Close(ctx)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
		time.Sleep(500 * time.Millisecond)
		out, stderr, code := cli(t, "switchover", "--api", fmt.Sprintf("127.0.0.1:%d", old.API), "--candidate", cand.Name)
		if code != 0 {
			close(stop)
			wg.Wait()
			t.Fatalf("switchover: %d %s %s", code, out, stderr)
		}
		time.Sleep(time.Second)
		close(stop)
		wg.Wait()
		t.Logf("switchover: %s; %d connection attempts, %d failed, %d inserts with an error", strings.TrimSpace(out), attempts.Load(), failed.Load(), insertErrs.Load())
		if failed.Load() != 0 {
			t.Errorf("%d connection attempts through the write port failed during the switchover (first: %v)", failed.Load(), firstFail.Load())
		}
		// The write port now reaches the new primary.
		conn, err := proxyConnect(ctx, old.Write)
		if err != nil {
			t.Fatal(err)
		}
		var port int
		if err := conn.QueryRow(ctx, "SELECT current_setting('port')::int").Scan(&port); err != nil {
			t.Fatal(err)
		}
		conn.Close(ctx)
		if port != cand.PG {
			t.Errorf("write port reaches port %d, want the new primary's %d", port, cand.PG)
		}
		// The connection opened before the switchover was closed.
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := held.Ping(qctx); err == nil {
			t.Errorf("a write connection to the old primary survived the switchover")
		}
	})
}
