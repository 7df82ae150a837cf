package decide

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/cluster"
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

// gossipOf builds a gossip view: state "running" is a primary,
// "streaming" a replica; WAL positions and tags come from meta().
func gossipOf(states map[string]string, meta ...func(name string, m *membership.Meta)) map[string]membership.Member {
	out := map[string]membership.Member{}
	for name, st := range states {
		m := membership.Meta{HasRaft: true, PGState: cluster.PGState(st), Priority: 1}
		switch st {
		case "running":
			m.Role = cluster.RolePrimary
		case "streaming":
			m.Role = cluster.RoleReplica
		}
		for _, f := range meta {
			f(name, &m)
		}
		out[name] = membership.Member{Name: name, Alive: true, MetaOK: true, Meta: m}
	}
	return out
}

func withLSN(lsn map[string]uint64) func(string, *membership.Meta) {
	return func(name string, m *membership.Meta) { m.Recv, m.WAL = lsn[name], lsn[name] }
}

func withPriority(prio map[string]int) func(string, *membership.Meta) {
	return func(name string, m *membership.Meta) {
		if p, ok := prio[name]; ok {
			m.Priority = p
		}
	}
}

func withTimeline(tl map[string]uint32) func(string, *membership.Meta) {
	return func(name string, m *membership.Meta) { m.Timeline = tl[name] }
}

func withState(f func(*raftfsm.State)) raftfsm.State {
	s := fsmState("n1", false)
	f(&s)
	return s
}

// kinds renders actions as "kind" or "kind:target", comma-separated, so
// rows assert whom an action is about, not its prose.
func kinds(acts []Action) string {
	var s []string
	for _, a := range acts {
		k := a.Kind.String()
		if a.Target != "" {
			k += ":" + a.Target
		}
		s = append(s, k)
	}
	return strings.Join(s, ",")
}

// allVoters is the Raft configuration of the test cluster.
var allVoters = map[string]bool{"n1": true, "n2": true, "n3": true}

func TestDecide(t *testing.T) {
	runningPrimary := LocalPG{Data: DataValid, SysID: sysid, Running: true}
	hungPrimary := LocalPG{Data: DataValid, SysID: sysid, Running: true, Silent: 11 * time.Second, Hung: true}
	silentPrimary := LocalPG{Data: DataValid, SysID: sysid, Running: true, Silent: 4 * time.Second}
	runningReplica := LocalPG{Data: DataValid, SysID: sysid, Running: true, InRecovery: true, Streaming: true, Receive: 1000, WAL: 1000}
	stopped := LocalPG{Data: DataValid, SysID: sysid}
	stoppedExPrimary := LocalPG{Data: DataValid, SysID: sysid, WasPrimary: true, CtlTimeline: 1}
	empty := LocalPG{Data: DataEmpty}
	allUp := gossipOf(map[string]string{"n1": "running", "n2": "streaming", "n3": "streaming"})
	replicasUp := gossipOf(map[string]string{"n2": "streaming", "n3": "streaming"}, withLSN(map[string]uint64{"n2": 1000, "n3": 1000}))
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	paused := withState(func(s *raftfsm.State) { s.Paused = true })
	lagging := withState(func(s *raftfsm.State) {
		s.Config.MaximumLagOnFailover = 100
		s.PrimaryLSN = &raftfsm.LSNRecord{LSN: 5000, Timeline: 1}
	})
	onTimeline3 := withState(func(s *raftfsm.State) { s.Primary.Timeline = 3 })
	// forkAt: the cluster moved to timeline tli by a promotion recorded
	// at position lsn on the timeline before.
	forkAt := func(tli uint32, lsn uint64) raftfsm.State {
		return withState(func(s *raftfsm.State) {
			s.Primary.Timeline = tli
			s.History = append(s.History, raftfsm.HistoryEntry{Epoch: s.Primary.Epoch, New: s.Primary.Member, Timeline: tli, LSN: lsn, Reason: "failover", PromotedAt: time.Unix(100, 0)})
		})
	}
	syncMode := func(set ...string) raftfsm.State {
		return withState(func(s *raftfsm.State) { s.Config.SynchronousMode = true; s.SyncSet = set })
	}
	leaderN2 := func(st raftfsm.State, g map[string]membership.Member, old OldPrimary, pg LocalPG) Input {
		return Input{Self: "n2", Leader: true, Now: now, State: st, Gossip: g, OldPrimary: old, PG: pg, Tags: Tags{Priority: 1}, Voters: allVoters}
	}
	with := func(in Input, f func(*Input)) Input { f(&in); return in }

	cases := []struct {
		name string
		in   Input
		want string // actions as kind[:target], comma-separated
		why  string // substring of a reason, when it matters
	}{
		// Forming and initialising.
		{"follower waits for initialisation", Input{Self: "n2", State: fsmState("", false), PG: empty}, "wait", "initialise"},
		{"leader claims initialisation", Input{Self: "n1", Leader: true, State: fsmState("", false), PG: empty}, "init-claim", ""},
		{"leader with a non-empty data dir refuses to initialise", Input{Self: "n1", Leader: true, State: fsmState("", false), PG: stopped}, "refuse", "not empty"},
		{"leader not yet recorded as member waits", Input{Self: "n4", Leader: true, State: fsmState("", false), PG: empty}, "wait", "recorded"},
		{"claim holder runs initdb", Input{Self: "n1", Leader: true, State: fsmState("n1", true), PG: empty}, "initdb", ""},
		{"claim holder with its own finished initdb records the id", Input{Self: "n1", Leader: true, State: fsmState("n1", true), PG: stopped}, "record-system-id", ""},
		{"replica waits while the primary initialises", Input{Self: "n2", State: fsmState("n1", true), PG: empty}, "wait", "initialise"},
		{"leader hands leadership to the initialising primary", Input{Self: "n2", Leader: true, State: fsmState("n1", true), Gossip: allUp, PG: empty}, "transfer-leadership:n1,wait", ""},
		{"leader waits for an initialising primary that is unreachable", Input{Self: "n2", Leader: true, State: fsmState("n1", true), Gossip: replicasUp, PG: empty}, "wait,wait", "initialising and unreachable"},

		// Replicas.
		{"empty replica clones from a running primary", Input{Self: "n2", State: fsmState("n1", false), Gossip: allUp, PG: empty}, "clone:n1", ""},
		{"empty replica waits for a stopped primary", Input{Self: "n2", State: fsmState("n1", false), Gossip: gossipOf(map[string]string{"n1": "stopped"}), PG: empty}, "wait", "before cloning"},
		{"replica with data runs as replica", Input{Self: "n2", State: fsmState("n1", false), Gossip: allUp, PG: stopped}, "run-replica:n1", ""},
		{"streaming replica keeps streaming", Input{Self: "n2", State: fsmState("n1", false), Gossip: allUp, PG: runningReplica}, "run-replica:n1", ""},
		{"former primary rewinds before following", Input{Self: "n2", State: fsmState("n1", false), Gossip: allUp, PG: stoppedExPrimary}, "rewind:n1", ""},
		{"replica stuck on an older timeline is rewound", Input{Self: "n3", State: onTimeline3, Gossip: allUp,
			PG: LocalPG{Data: DataValid, SysID: sysid, Running: true, InRecovery: true, Timeline: 2, OldTimelineFor: 31 * time.Second}}, "rewind:n1", "diverged"},
		{"replica on an older timeline past the fork point is rewound", Input{Self: "n3", State: forkAt(3, 5000), Gossip: allUp,
			PG: LocalPG{Data: DataValid, SysID: sysid, Running: true, InRecovery: true, Timeline: 2, Receive: 5100, WAL: 5100, OldTimelineFor: 31 * time.Second}}, "rewind:n1", "diverged"},
		{"replica cut off below the fork point is not rewound (it can follow)", Input{Self: "n3", State: forkAt(3, 5000), Gossip: allUp,
			PG: LocalPG{Data: DataValid, SysID: sysid, Running: true, InRecovery: true, Timeline: 2, Receive: 4900, WAL: 4800, OldTimelineFor: time.Minute}}, "run-replica:n1", ""},
		{"replica two timelines behind is rewound (no fork off its own timeline known)", Input{Self: "n3", State: forkAt(3, 5000), Gossip: allUp,
			PG: LocalPG{Data: DataValid, SysID: sysid, Running: true, InRecovery: true, Timeline: 1, Receive: 100, OldTimelineFor: time.Minute}}, "rewind:n1", "diverged"},
		{"stuck replica left alone in maintenance mode", Input{Self: "n3", State: withState(func(s *raftfsm.State) { s.Primary.Timeline = 3; s.Paused = true }), Gossip: allUp,
			PG: LocalPG{Data: DataValid, SysID: sysid, Running: true, InRecovery: true, Timeline: 2, OldTimelineFor: time.Minute}}, "run-replica:n1", ""},
		{"replica just behind a new timeline waits for it", Input{Self: "n3", State: onTimeline3, Gossip: allUp,
			PG: LocalPG{Data: DataValid, SysID: sysid, Running: true, InRecovery: true, Timeline: 2, OldTimelineFor: 20 * time.Second}}, "run-replica:n1", ""},
		{"stuck replica waits for the primary to run", Input{Self: "n3", State: onTimeline3, Gossip: gossipOf(map[string]string{"n1": "stopped"}),
			PG: LocalPG{Data: DataValid, SysID: sysid, Running: true, InRecovery: true, Timeline: 2, OldTimelineFor: time.Minute}}, "run-replica:n1", ""},
		{"former primary waits for the new primary to run", Input{Self: "n2", State: fsmState("n1", false), Gossip: gossipOf(map[string]string{"n1": "stopped"}), PG: stoppedExPrimary}, "wait", "rewinding"},
		{"unrecorded primary is fenced", Input{Self: "n2", State: fsmState("n1", false), Gossip: allUp, PG: runningPrimary}, "fence", "holds the primary record"},
		{"paused: a stopped replica stays stopped", Input{Self: "n2", State: paused, Gossip: allUp, PG: stopped}, "wait", "maintenance"},

		// The primary's own node.
		{"primary as leader runs and keeps slots and LSN", Input{Self: "n1", Leader: true, State: fsmState("n1", false), Gossip: allUp, PG: runningPrimary}, "run-primary,ensure-slots,record-lsn", ""},
		{"primary in synchronous mode also keeps the synchronous set", Input{Self: "n1", Leader: true, State: syncMode(), Gossip: allUp, PG: runningPrimary}, "run-primary,ensure-slots,record-lsn,sync-standbys", ""},
		{"primary empties the synchronous set after synchronous mode is turned off", Input{Self: "n1", Leader: true, State: withState(func(s *raftfsm.State) { s.SyncSet = []string{"n2"} }), Gossip: allUp, PG: runningPrimary}, "run-primary,ensure-slots,record-lsn,sync-standbys", ""},
		{"a demoting mark left by an interrupted switchover is cleared", Input{Self: "n1", Leader: true, State: withState(func(s *raftfsm.State) { s.Primary.Demoting = true }), Gossip: allUp, PG: runningPrimary}, "clear-demoting,run-primary,ensure-slots,record-lsn", ""},
		{"crashed primary as leader restarts", Input{Self: "n1", Leader: true, State: fsmState("n1", false), PG: stoppedExPrimary}, "run-primary", ""},
		{"paused: crashed primary is not restarted", Input{Self: "n1", Leader: true, State: paused, PG: stoppedExPrimary}, "wait", "maintenance"},
		{"paused: a standby the operator made the record holder still promotes", Input{Self: "n1", Leader: true, State: paused, PG: runningReplica}, "promote", ""},
		{"record holder running as standby promotes", Input{Self: "n1", Leader: true, State: fsmState("n1", false), PG: runningReplica}, "promote", ""},
		{"stopped standby holding the record promotes (started in recovery first)", Input{Self: "n1", Leader: true, State: fsmState("n1", false), PG: stopped}, "promote", ""},
		{"stale ex-primary on an older timeline refuses to start as primary", Input{Self: "n1", Leader: true, State: onTimeline3, PG: stoppedExPrimary}, "refuse", "timeline"},
		{"primary record without leadership: fence", Input{Self: "n1", State: fsmState("n1", false), PG: runningPrimary}, "fence", "leadership"},
		{"primary record without leadership: stay stopped", Input{Self: "n1", State: fsmState("n1", false), PG: stopped}, "wait", "leadership"},
		// A hung PostgreSQL on the primary (gray failure): fenced, then
		// handed over; in maintenance mode nothing is done.
		{"a hung primary is fenced", Input{Self: "n1", Leader: true, State: fsmState("n1", false), Gossip: replicasUp, PG: hungPrimary, Voters: allVoters}, "fence", "not answered its probe"},
		{"a hung primary that yields is fenced before the handover", Input{Self: "n1", Leader: true, Yield: true, State: fsmState("n1", false), Gossip: replicasUp, PG: hungPrimary, Voters: allVoters}, "fence", "not answered"},
		{"a hung primary is not fenced in maintenance mode", Input{Self: "n1", Leader: true, State: withState(func(s *raftfsm.State) { s.Paused = true }), Gossip: replicasUp, PG: hungPrimary, Voters: allVoters}, "wait", "does not answer"},
		{"a silent but not yet hung primary is left alone, and waits", Input{Self: "n1", Leader: true, State: fsmState("n1", false), Gossip: replicasUp, PG: silentPrimary, Voters: allVoters}, "wait", "does not answer its probe"},
		{"a yielding record holder hands leadership to the best candidate", Input{Self: "n1", Leader: true, Yield: true, State: fsmState("n1", false), Gossip: replicasUp, PG: stoppedExPrimary, Voters: allVoters}, "transfer-leadership:n2", "cannot run"},
		{"a yielding record holder with no candidate keeps trying itself", Input{Self: "n1", Leader: true, Yield: true, State: fsmState("n1", false), Gossip: gossipOf(map[string]string{"n2": "stopped", "n3": "stopped"}), PG: stoppedExPrimary, Voters: allVoters}, "run-primary", ""},
		{"recorded primary with empty data refuses", Input{Self: "n1", Leader: true, State: fsmState("n1", false), PG: empty}, "refuse", "empty"},

		// A leader that is not the primary: hand back or fail over.
		{"primary's agent alive: hand leadership back", leaderN2(fsmState("n1", false), allUp, OldPrimaryAlive, runningReplica), "transfer-leadership:n1,run-replica:n1", ""},
		{"primary down: the best candidate fails over", leaderN2(fsmState("n1", false), replicasUp, OldPrimarySilent, runningReplica), "failover", ""},
		{"primary silent: wait out its lease", with(leaderN2(fsmState("n1", false), replicasUp, OldPrimarySilent, runningReplica), func(in *Input) {
			in.PromoteNotBefore = now.Add(500 * time.Millisecond)
		}), "wait,run-replica:n1", "fence itself"},
		{"a more advanced non-voter is passed over", with(leaderN2(fsmState("n1", false), gossipOf(map[string]string{"n2": "streaming", "n3": "streaming"}, withLSN(map[string]uint64{"n3": 2000})), OldPrimarySilent, runningReplica), func(in *Input) {
			in.Voters = map[string]bool{"n1": true, "n2": true}
		}), "failover", ""},
		{"unknown Raft configuration: nobody is promoted", with(leaderN2(fsmState("n1", false), replicasUp, OldPrimarySilent, runningReplica), func(in *Input) { in.Voters = nil }),
			"wait,run-replica:n1", "unknown Raft suffrage"},
		{"unreadable data directory: wait", Input{Self: "n2", State: fsmState("n1", false), PG: LocalPG{Data: DataUnknown}}, "wait", "cannot read"},
		{"a more advanced replica is the better candidate", leaderN2(fsmState("n1", false), gossipOf(map[string]string{"n2": "streaming", "n3": "streaming"}, withLSN(map[string]uint64{"n3": 2000})), OldPrimarySilent, runningReplica), "transfer-leadership:n3,run-replica:n1", ""},
		{"failover priority beats WAL position", leaderN2(fsmState("n1", false), gossipOf(map[string]string{"n2": "streaming", "n3": "streaming"}, withLSN(map[string]uint64{"n3": 500}), withPriority(map[string]int{"n3": 5})), OldPrimarySilent, runningReplica), "transfer-leadership:n3,run-replica:n1", ""},
		{"nofailover leader hands over to an eligible replica", with(leaderN2(fsmState("n1", false), replicasUp, OldPrimarySilent, runningReplica), func(in *Input) {
			in.Tags.NoFailover = true
		}), "transfer-leadership:n3,run-replica:n1", ""},
		{"nobody within maximum_lag_on_failover: no promotion, with the reason", leaderN2(lagging, replicasUp, OldPrimarySilent, runningReplica), "wait,run-replica:n1", "bytes behind"},
		{"paused: no failover", leaderN2(paused, replicasUp, OldPrimarySilent, runningReplica), "wait,run-replica:n1", "maintenance"},
		{"stopped replicas are not candidates", leaderN2(fsmState("n1", false), gossipOf(map[string]string{"n3": "stopped"}), OldPrimarySilent, stopped), "wait,run-replica:n1", "not a running replica"},
		{"synchronous mode: only a member of the committed set is promoted", leaderN2(syncMode("n3"), replicasUp, OldPrimarySilent, runningReplica), "transfer-leadership:n3,run-replica:n1", ""},
		{"synchronous mode with an empty set: nobody is promoted", leaderN2(syncMode(), replicasUp, OldPrimarySilent, runningReplica), "wait,run-replica:n1", "not in the synchronous set"},
		{"a replica on an older timeline than the record is passed over", with(leaderN2(withState(func(s *raftfsm.State) { s.Primary.Timeline = 3 }),
			gossipOf(map[string]string{"n3": "streaming"}, withLSN(map[string]uint64{"n3": 9000}), withTimeline(map[string]uint32{"n3": 2})), OldPrimarySilent, runningReplica), func(in *Input) {
			in.PG.Timeline = 3
		}), "failover", ""},

		// Safety against foreign data.
		{"foreign data directory refused", Input{Self: "n2", State: fsmState("n1", false), Gossip: allUp, PG: LocalPG{Data: DataValid, SysID: 42}}, "refuse", "another cluster"},
		{"running foreign data directory fenced and refused", Input{Self: "n2", State: fsmState("n1", false), Gossip: allUp, PG: LocalPG{Data: DataValid, SysID: 42, Running: true}}, "fence,refuse", "another cluster"},
		{"invalid data directory refused", Input{Self: "n2", State: fsmState("n1", false), Gossip: allUp, PG: LocalPG{Data: DataInvalid}}, "refuse", "not a PostgreSQL data directory"},

		// Witness.
		{"witness follower does nothing", Input{Self: "w", Witness: true, Now: now, State: fsmState("n1", false), Gossip: allUp}, "wait", "witness"},
		{"witness leader hands leadership to the live primary", Input{Self: "w", Witness: true, Leader: true, Now: now, State: fsmState("n1", false), Gossip: allUp, OldPrimary: OldPrimaryAlive, Voters: allVoters}, "transfer-leadership:n1", ""},
		{"witness leader of a new cluster hands leadership to a database node", Input{Self: "w", Witness: true, Leader: true, Now: now, State: fsmState("", false), Gossip: replicasUp, Voters: allVoters}, "transfer-leadership:n2", "never initialises"},
		{"witness leader hands leadership to the best candidate", Input{Self: "w", Witness: true, Leader: true, Now: now, State: fsmState("n1", false), Gossip: replicasUp, OldPrimary: OldPrimarySilent, Voters: allVoters}, "transfer-leadership:n2", ""},
	}
	seen := map[string]string{}
	for _, c := range cases {
		// No two rows may test the same inputs.
		b, err := json.Marshal(c.in)
		if err != nil {
			t.Fatal(err)
		}
		key := string(b)
		if other, dup := seen[key]; dup {
			t.Errorf("rows %q and %q have the same inputs", other, c.name)
		}
		seen[key] = c.name
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
