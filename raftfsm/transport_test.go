package raftfsm_test

import (
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/pgha/pgha/internal/testutil"
	"github.com/pgha/pgha/raftfsm"
	"github.com/pgha/pgha/tlsconf"
)

// certs generates a CA with the given nodes and returns their bundles.
func certs(t *testing.T, nodes ...string) map[string]*tlsconf.Bundle {
	t.Helper()
	var spec []tlsconf.Node
	for _, n := range nodes {
		spec = append(spec, tlsconf.Node{Name: n})
	}
	g, err := tlsconf.Generate(tlsconf.GenerateOptions{Dir: filepath.Join(t.TempDir(), "tls"), Nodes: spec})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*tlsconf.Bundle{}
	for _, n := range nodes {
		p := g.NodeFiles[n]
		b, err := tlsconf.Load(tlsconf.Files{CAFile: g.CACert, CertFile: p[0], KeyFile: p[1]})
		if err != nil {
			t.Fatal(err)
		}
		out[n] = b
	}
	return out
}

type testNode struct {
	*raftfsm.Node
	log *testutil.LogBuffer
}

func openTLS(t *testing.T, id string, server, client *tls.Config) testNode {
	t.Helper()
	log := &testutil.LogBuffer{}
	n, err := raftfsm.Open(raftfsm.Options{
		ID: id, Dir: filepath.Join(t.TempDir(), id), BindAddr: testutil.FreeAddr(t),
		HeartbeatTimeout: time.Second, ElectionTimeout: time.Second, LeaderLeaseTimeout: 500 * time.Millisecond,
		LogOutput: log, TLSServer: server, TLSClient: client,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return testNode{n, log}
}

// raftWait bounds every wait for Raft (elections, replication) on a
// possibly busy machine.
const raftWait = 15 * time.Second

// leaderOf bootstraps n alone and waits until it leads.
func leaderOf(t *testing.T, n testNode) {
	t.Helper()
	if err := n.Bootstrap([]raft.Server{{ID: raft.ServerID(n.ID()), Address: raft.ServerAddress(n.Addr())}}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitUntil(t, raftWait, n.ID()+" to lead", n.IsLeader)
}

func TestTLSClusterForms(t *testing.T) {
	b := certs(t, "n1", "n2", "n3")
	var nodes []testNode
	var servers []raft.Server
	for _, id := range []string{"n1", "n2", "n3"} {
		n := openTLS(t, id, b[id].Server(), b[id].PeerClient())
		nodes = append(nodes, n)
		servers = append(servers, raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(n.Addr())})
	}
	// All three voters: the election needs votes over TLS both ways.
	if err := nodes[0].Bootstrap(servers); err != nil {
		t.Fatal(err)
	}
	var leader testNode
	testutil.WaitUntil(t, raftWait, "a leader", func() bool {
		for _, n := range nodes {
			if n.IsLeader() {
				leader = n
				return true
			}
		}
		return false
	})
	if err := leader.Apply(nil, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	idx := leader.FSM().AppliedIndex()
	for _, n := range nodes {
		testutil.WaitUntil(t, raftWait, n.ID()+" to apply", func() bool { return n.FSM().AppliedIndex() >= idx })
	}
	for _, n := range nodes {
		if s := n.log.String(); strings.Contains(s, "refused connection") {
			t.Errorf("%s refused a member:\n%s", n.ID(), s)
		}
	}
}

func TestTLSJoinAsNonvoter(t *testing.T) {
	b := certs(t, "n1", "n2")
	n1 := openTLS(t, "n1", b["n1"].Server(), b["n1"].PeerClient())
	n2 := openTLS(t, "n2", b["n2"].Server(), b["n2"].PeerClient())
	leaderOf(t, n1)
	if err := n1.AddNonvoter("n2", n2.Addr(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	testutil.WaitUntil(t, raftWait, "n2 to see the leader", func() bool { id, _ := n2.Leader(); return id == "n1" })
}

func TestTLSOtherCACannotJoin(t *testing.T) {
	b := certs(t, "n1")
	other := certs(t, "n4")
	n1 := openTLS(t, "n1", b["n1"].Server(), b["n1"].PeerClient())
	n4 := openTLS(t, "n4", other["n4"].Server(), other["n4"].PeerClient())
	leaderOf(t, n1)

	err := n1.AddNonvoter("n4", n4.Addr(), 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("AddNonvoter of a node of another CA: got %v, want an unknown authority error", err)
	}
	servers, _ := n1.Servers()
	if len(servers) != 1 {
		t.Errorf("configuration has %d servers, want only n1: %v", len(servers), servers)
	}
	// The other direction: n4 dials n1 (as it would to ask for votes).
	// n1 refuses and says why.
	dialRaft(t, other["n4"].PeerClient(), n1.Addr())
	testutil.WaitUntil(t, raftWait, "n1 to log the refusal", func() bool {
		return strings.Contains(n1.log.String(), "does not accept this node's certificate")
	})
	if s := n1.log.String(); !strings.Contains(s, "[WARN]") {
		t.Errorf("refusal not logged at warn:\n%s", s)
	}
}

func TestTLSNoClientCertRefused(t *testing.T) {
	b := certs(t, "n1", "n3")
	n1 := openTLS(t, "n1", b["n1"].Server(), b["n1"].PeerClient())
	leaderOf(t, n1)

	noCert := b["n3"].PeerClient()
	noCert.Certificates = nil
	// Several attempts in a row: logged once (not spammy).
	for range 3 {
		dialRaft(t, noCert, n1.Addr())
	}
	testutil.WaitUntil(t, raftWait, "n1 to log the refusal", func() bool {
		return strings.Contains(n1.log.String(), "presented no client certificate")
	})
	time.Sleep(100 * time.Millisecond)
	if c := strings.Count(n1.log.String(), "refused connection"); c != 1 {
		t.Errorf("%d refusal lines for 3 attempts, want 1:\n%s", c, n1.log.String())
	}

}

func TestPlainPeerRefusedByTLS(t *testing.T) {
	b := certs(t, "n1")
	n1 := openTLS(t, "n1", b["n1"].Server(), b["n1"].PeerClient())
	leaderOf(t, n1)
	plain := openTLS(t, "p2", nil, nil)
	if err := n1.AddNonvoter("p2", plain.Addr(), 5*time.Second); err == nil {
		t.Fatal("a plain TCP node was added to a TLS cluster")
	}
	c, err := net.Dial("tcp", n1.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("\x00plain raft rpc"))
	io.Copy(io.Discard, c)
	c.Close()
	testutil.WaitUntil(t, raftWait, "n1 to log the refusal", func() bool {
		return strings.Contains(n1.log.String(), "does not speak TLS")
	})
}

// dialRaft connects with cfg to a Raft TLS listener, writes a byte and
// waits for the server's verdict; the connection must not survive.
func dialRaft(t *testing.T, cfg *tls.Config, addr string) {
	t.Helper()
	log := hclog.NewNullLogger()
	s, err := raftfsm.NewTLSStreamLayer("127.0.0.1:0", nil, cfg, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Probe(addr, 2*time.Second); err == nil {
		t.Errorf("connection to %s with a refused certificate was accepted", addr)
	}
}
