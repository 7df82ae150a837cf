package agent

import (
	"strings"
	"testing"

	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/raftfsm"
)

const sysid = 7312345678901234567

func fsmState(primary string, initializing bool) raftfsm.State {
	s := raftfsm.State{Members: map[string]raftfsm.Member{
		"n1": {Name: "n1", RaftAddr: "r1", PGAddr: "127.0.0.1:5001"},
		"n2": {Name: "n2", RaftAddr: "r2", PGAddr: "127.0.0.1:5002"},
		"n3": {Name: "n3", RaftAddr: "r3", PGAddr: "127.0.0.1:5003"},
	}}
	if primary != "" {
		s.Primary = &raftfsm.PrimaryRecord{Member: primary, Epoch: 1, Initializing: initializing}
		if !initializing {
			s.SystemID = sysid
		}
	}
	return s
}

func gossipOf(states map[string]string) map[string]membership.Member {
	out := map[string]membership.Member{}
	for name, st := range states {
		out[name] = membership.Member{Name: name, Alive: true, MetaOK: true, Meta: membership.Meta{HasRaft: true, PGState: st}}
	}
	return out
}

func kinds(acts []Action) string {
	var s []string
	for _, a := range acts {
		s = append(s, a.Kind.String())
	}
	return strings.Join(s, ",")
}

func TestDecide(t *testing.T) {
	runningPrimary := LocalPG{Data: DataValid, SysID: sysid, Running: true}
	runningReplica := LocalPG{Data: DataValid, SysID: sysid, Running: true, InRecovery: true, Streaming: true}
	stopped := LocalPG{Data: DataValid, SysID: sysid}
	empty := LocalPG{Data: DataEmpty}
	allUp := gossipOf(map[string]string{"n1": "running", "n2": "streaming", "n3": "streaming"})

	cases := []struct {
		name string
		in   Input
		want string // action kinds, comma-separated
		why  string // substring of a reason, when it matters
	}{
		{"follower waits for initialisation", Input{Self: "n2", State: fsmState("", false), PG: empty}, "wait", "initialise"},
		{"leader claims initialisation", Input{Self: "n1", Leader: true, State: fsmState("", false), PG: empty}, "init-claim", ""},
		{"leader with a non-empty data dir refuses to initialise", Input{Self: "n1", Leader: true, State: fsmState("", false), PG: stopped}, "refuse", "not empty"},
		{"leader not yet recorded as member waits", Input{Self: "n4", Leader: true, State: fsmState("", false), PG: empty}, "wait", "recorded"},
		{"claim holder runs initdb", Input{Self: "n1", Leader: true, State: fsmState("n1", true), PG: empty}, "initdb", ""},
		{"claim holder with its own finished initdb records the id", Input{Self: "n1", Leader: true, State: fsmState("n1", true), PG: stopped}, "record-system-id", ""},
		{"replica waits while the primary initialises", Input{Self: "n2", State: fsmState("n1", true), PG: empty}, "wait", "initialise"},
		{"empty replica clones from a running primary", Input{Self: "n2", State: fsmState("n1", false), Gossip: allUp, PG: empty}, "clone", ""},
		{"empty replica waits for a stopped primary", Input{Self: "n2", State: fsmState("n1", false), Gossip: gossipOf(map[string]string{"n1": "stopped"}), PG: empty}, "wait", "before cloning"},
		{"replica with data runs as replica", Input{Self: "n2", State: fsmState("n1", false), Gossip: allUp, PG: stopped}, "run-replica", ""},
		{"streaming replica keeps streaming", Input{Self: "n2", State: fsmState("n1", false), Gossip: allUp, PG: runningReplica}, "run-replica", ""},
		{"primary as leader runs and keeps slots and LSN", Input{Self: "n1", Leader: true, State: fsmState("n1", false), Gossip: allUp, PG: runningPrimary}, "run-primary,ensure-slots,record-lsn", ""},
		{"stopped primary as leader starts", Input{Self: "n1", Leader: true, State: fsmState("n1", false), PG: stopped}, "run-primary", ""},
		{"primary record without leadership: fence", Input{Self: "n1", State: fsmState("n1", false), PG: runningPrimary}, "stop", "leadership"},
		{"primary record without leadership: stay stopped", Input{Self: "n1", State: fsmState("n1", false), PG: stopped}, "wait", "leadership"},
		{"leader that is not primary hands leadership to a live primary", Input{Self: "n2", Leader: true, State: fsmState("n1", false), Gossip: allUp, PG: runningReplica}, "transfer-leadership,run-replica", ""},
		{"leader that is not primary and primary unreachable waits", Input{Self: "n2", Leader: true, State: fsmState("n1", false), Gossip: gossipOf(map[string]string{"n2": "streaming"}), PG: runningReplica}, "wait,run-replica", "not reachable"},
		{"unrecorded primary is stopped", Input{Self: "n2", State: fsmState("n1", false), Gossip: allUp, PG: runningPrimary}, "stop", "holds the primary record"},
		{"foreign data directory refused", Input{Self: "n2", State: fsmState("n1", false), Gossip: allUp, PG: LocalPG{Data: DataValid, SysID: 42}}, "refuse", "another cluster"},
		{"running foreign data directory stopped and refused", Input{Self: "n2", State: fsmState("n1", false), Gossip: allUp, PG: LocalPG{Data: DataValid, SysID: 42, Running: true}}, "stop,refuse", "another cluster"},
		{"invalid data directory refused", Input{Self: "n2", State: fsmState("n1", false), Gossip: allUp, PG: LocalPG{Data: DataInvalid}}, "refuse", "not a PostgreSQL data directory"},
		{"recorded primary with empty data refuses", Input{Self: "n1", Leader: true, State: fsmState("n1", false), PG: empty}, "refuse", "empty"},
		{"witness leader hands leadership to the primary", Input{Self: "w", Witness: true, Leader: true, State: fsmState("n1", false), Gossip: allUp}, "transfer-leadership", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			acts := Decide(c.in)
			if got := kinds(acts); got != c.want {
				t.Fatalf("actions = %s, want %s (%v)", got, c.want, acts)
			}
			if c.why != "" {
				found := false
				for _, a := range acts {
					if strings.Contains(a.Reason, c.why) {
						found = true
					}
				}
				if !found {
					t.Fatalf("no reason mentions %q: %v", c.why, acts)
				}
			}
		})
	}
}
