package membership_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/testutil"
	"github.com/pgha/pgha/membership"
	"go.uber.org/goleak"
)

// startKeyed runs a gossip node with the given key (nil: none).
func startKeyed(tb testing.TB, name string, key []byte) *node {
	tb.Helper()
	lb := &testutil.LogBuffer{}
	addr := addrOf(testutil.FreePort(tb))
	g, err := membership.New(membership.Options{
		Name:     name,
		Cluster:  "test",
		BindAddr: addr,
		Key:      key,
		Logger:   slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}, membership.Meta{Cluster: "test", API: "api-of-" + name})
	if err != nil {
		tb.Fatalf("start %s on %s: %v", name, addr, err)
	}
	return &node{Gossip: g, name: name, addr: addr, log: lb}
}

var (
	key1 = bytes.Repeat([]byte{1}, 32)
	key2 = bytes.Repeat([]byte{2}, 32)
)

func TestGossipKey_SameKeyJoins(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	a := startKeyed(t, "a", key1)
	defer a.stop(t)
	b := startKeyed(t, "b", key1)
	defer b.stop(t)
	if n, err := b.Join([]string{a.addr}); err != nil || n != 1 {
		t.Fatalf("join with the same key: %d, %v", n, err)
	}
	testutil.WaitFor(t, gossipWait, "a to see a, b", sees(a, "a", "b"))
	testutil.WaitFor(t, gossipWait, "b to see a, b", sees(b, "a", "b"))
	a.stop(t)
	b.stop(t)
	verifyNoLeaks(t, ignore)
}

func TestGossipKey_Mismatch(t *testing.T) {
	cases := []struct {
		name     string
		accept   []byte // key of the member already there
		join     []byte // key of the node that joins
		acceptor string // what the accepting side's log must say
	}{
		{"wrong key", key1, key2, "another gossip key or none"},
		{"joiner without key", key1, nil, "another gossip key or none"},
		{"member without key", nil, key1, ""}, // no key, no refusal to report: the joiner says why
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := startKeyed(t, "a", c.accept)
			defer a.stop(t)
			b := startKeyed(t, "b", c.join)
			defer b.stop(t)

			n, err := b.Join([]string{a.addr})
			if err == nil || n != 0 {
				t.Fatalf("join: %d, %v; want a refusal", n, err)
			}
			if !errors.Is(err, membership.ErrGossipKey) {
				t.Errorf("join error %q does not wrap ErrGossipKey", err)
			}
			msg := err.Error()
			t.Logf("joiner: %s", msg)
			if !strings.HasPrefix(msg, "gossip join via "+a.addr+" failed: ") || !strings.HasSuffix(msg, "(is gossip.key the same on every node?)") {
				t.Errorf("join error %q: want \"gossip join via %s failed: ... (is gossip.key the same on every node?)\"", msg, a.addr)
			}
			if c.acceptor != "" {
				testutil.WaitFor(t, gossipWait, "a to log the refusal", logHas(a, c.acceptor, "level=WARN"))
			}
			// The background join loop says it too, at warn level,
			// once (it retries every few hundred milliseconds).
			b.RetryJoin([]string{a.addr})
			testutil.WaitFor(t, gossipWait, "b to log the failed join", logHas(b, "gossip join failed", "level=WARN"))
			time.Sleep(time.Second)
			if k := strings.Count(b.log.String(), "gossip join failed"); k != 1 {
				t.Errorf("failed join logged %d times in a second, want once:\n%s", k, b.log.String())
			}
			if k := strings.Count(a.log.String(), "another gossip key"); k > 1 {
				t.Errorf("refusal logged %d times in a second, want at most once:\n%s", k, a.log.String())
			}
			for _, n := range []*node{a, b} {
				if ms := n.Members(); len(ms) != 1 {
					t.Errorf("%s sees %d members, want only itself", n.name, len(ms))
				}
			}
		})
	}
}

func TestGossipKey_BadLength(t *testing.T) {
	_, err := membership.New(membership.Options{Name: "a", Cluster: "test", BindAddr: addrOf(testutil.FreePort(t)), Key: []byte("short")},
		membership.Meta{Cluster: "test"})
	if err == nil {
		t.Fatal("a 5-byte key was accepted")
	}
}
