// Package decide is the HA loop's brain: a pure function from (Raft
// FSM state, gossip view, local PostgreSQL status, leadership) to the
// actions of one round, and the one eligibility rule that says who may
// become the primary. It does no I/O, so every failover rule is a table
// test (decide_test.go, eligible_test.go).
package decide

import (
	"fmt"
	"sort"
	"time"

	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/raftfsm"
)

// DataState is what the local PostgreSQL data directory holds.
type DataState int

// Data directory states.
const (
	DataUnknown DataState = iota
	DataEmpty             // missing or empty: safe to initdb or clone into
	DataValid             // a PostgreSQL data directory
	DataInvalid           // non-empty and not PostgreSQL's: never touched
)

// LocalPG is the local PostgreSQL as the HA loop saw it this round.
type LocalPG struct {
	Data       DataState
	SysID      uint64 // of the data directory, 0 when unknown
	Running    bool
	InRecovery bool
	Timeline   uint32
	WAL        uint64 // primary: current LSN; replica: replay LSN
	Receive    uint64 // replica: receive LSN
	Streaming  bool
	// WasPrimary: the data directory was last run as a primary (from
	// pg_controldata, read while PostgreSQL is stopped). Such a directory
	// may have diverged from a newer primary and is rewound before it
	// follows one.
	WasPrimary bool
	// CtlTimeline is the timeline of the last checkpoint (stopped only).
	CtlTimeline uint32
	// OldTimelineFor is how long this replica has run on a timeline older
	// than the cluster's without streaming: a replica that received WAL
	// past the point where the new primary's timeline forked cannot follow
	// it, and says so in its log forever unless it is rewound.
	OldTimelineFor time.Duration
	// Silent is how long the running PostgreSQL has not answered its
	// probe, counted from its last answer (0 while it answers, and while
	// a postmaster that never answered starts). Hung: silent for longer
	// than primary_unresponsive_timeout, or starting for longer than the
	// start timeout.
	Silent time.Duration
	Hung   bool
}

// Role is what the local PostgreSQL runs as.
func (l LocalPG) Role() cluster.Role {
	switch {
	case !l.Running:
		return cluster.RoleNone
	case l.InRecovery:
		return cluster.RoleReplica
	}
	return cluster.RolePrimary
}

// State is the local PostgreSQL's state as a probe sees it (the agent
// may report a transitional state instead, see agent.publish).
func (l LocalPG) State() cluster.PGState {
	switch {
	case !l.Running:
		return cluster.StateStopped
	case l.Silent > 0 || l.Hung:
		return cluster.StateUnresponsive
	case l.InRecovery && l.Streaming:
		return cluster.StateStreaming
	}
	return cluster.StateRunning
}

// Position is the most WAL the local PostgreSQL holds, on its timeline.
func (l LocalPG) Position() Position {
	return Position{Timeline: l.Timeline, LSN: max(l.Receive, l.WAL)}
}

// pastFork reports whether a replica on an older timeline holds WAL past
// the point where the next timeline forked from it, which it then cannot
// follow: diverged. The fork point comes from the cluster history: the
// position recorded when that timeline's primary was chosen (its
// received WAL for a failover, the old primary's shutdown checkpoint for
// a switchover), at or below the real switch point. A replica at or
// below it is not diverged (cut off for a while, it follows the new
// timeline once it reconnects) and is left alone; when the history does
// not tell (trimmed, or no position recorded), the answer is yes, as
// before there was a history to read.
func pastFork(st raftfsm.State, pg LocalPG) bool {
	pos := max(pg.Receive, pg.WAL)
	for _, h := range st.History {
		if h.Timeline > pg.Timeline && !h.PromotedAt.IsZero() {
			if h.Timeline != pg.Timeline+1 || h.LSN == 0 || pos == 0 {
				return true // not the fork off our timeline, or no position: unknown
			}
			return pos > h.LSN
		}
	}
	return true
}

// divergedAfter is how long a replica may stay on an older timeline
// without streaming before it counts as diverged. Following a new
// timeline normally takes a second or two (the walreceiver fetches the
// history file and switches). A replica's timeline is the newest it is
// known to follow (its walreceiver's, remembered by its agent while its
// postmaster lives, or its minimum recovery point's or restartpoint's),
// so one that followed a switch says so even with its walreceiver down;
// one just restarted while its primary is away may still show an older
// one: the price of a false verdict is a stop and a pg_rewind that finds
// nothing to do (a running replica's data is never moved aside, see
// haLoop.rewind), so the bound is generous.
const divergedAfter = 30 * time.Second

// OldPrimary is what the leader learnt by asking the recorded primary's
// agent directly (its REST API) this round.
type OldPrimary int

// What the leader knows of the recorded primary's agent.
const (
	OldPrimaryUnknown OldPrimary = iota // not asked (not leader, or we are the primary)
	OldPrimaryAlive                     // its agent answered, as itself
	OldPrimarySilent                    // no answer: dead, frozen or cut off; if alive it fences itself (see agent.fenceBudget)
)

// Input is everything the decision needs; gathering it is the HA loop's
// job, so Decide itself is pure and table-testable.
type Input struct {
	Self    string
	Witness bool
	Tags    Tags
	// Leader is true only when this node is Raft leader AND has passed the
	// Barrier of the current term (its FSM is up to date).
	Leader bool
	// Now and PromoteNotBefore: a new leader may not promote before the
	// old primary has surely fenced itself (see agent.fenceBudget).
	Now              time.Time
	PromoteNotBefore time.Time
	OldPrimary       OldPrimary
	State            raftfsm.State
	// Voters are the Raft voters: only they can lead, so only they can
	// be promoted. nil means unknown: nobody is promoted this round.
	Voters map[string]bool
	// Gossip holds the live gossip members by name.
	Gossip map[string]membership.Member
	PG     LocalPG
	// Yield: this node holds the primary record but has failed to run
	// PostgreSQL as primary for too long.
	Yield bool
}

// Tags are the local member's behaviour switches.
type Tags struct {
	NoFailover bool
	Priority   int
}

// ActionKind says what to do.
type ActionKind int

// The actions. The executor performs them in the order Decide returns.
const (
	ActWait               ActionKind = iota // nothing to do; Reason says why
	ActRefuse                               // unsafe situation; Reason says why, nothing is touched
	ActInitClaim                            // commit init_cluster for this node
	ActInitDB                               // initdb + start as primary, then commit the system id
	ActRecordSystemID                       // commit the system id of an existing (our own) initdb
	ActClone                                // pg_basebackup from Upstream
	ActRewind                               // pg_rewind from Upstream (re-clone if that fails)
	ActRunPrimary                           // make sure PostgreSQL runs as primary
	ActRunReplica                           // make sure PostgreSQL runs as a replica of Upstream
	ActPromote                              // promote the local standby (the primary record is ours)
	ActFailover                             // commit the primary record for this node, then promote
	ActFence                                // stop PostgreSQL at once: it must not take writes
	ActTransferLeadership                   // hand Raft leadership to Target
	ActEnsureSlots                          // create/drop replication slots for the members
	ActRecordLSN                            // commit the primary's WAL position
	ActSyncStandbys                         // move the synchronous standby set one step
	ActClearDemoting                        // clear a demoting mark a switchover left behind
)

var actionNames = map[ActionKind]string{
	ActWait: "wait", ActRefuse: "refuse", ActInitClaim: "init-claim", ActInitDB: "initdb",
	ActRecordSystemID: "record-system-id", ActClone: "clone", ActRewind: "rewind",
	ActRunPrimary: "run-primary", ActRunReplica: "run-replica", ActPromote: "promote",
	ActFailover: "failover", ActFence: "fence", ActTransferLeadership: "transfer-leadership",
	ActEnsureSlots: "ensure-slots", ActRecordLSN: "record-lsn", ActSyncStandbys: "sync-standbys",
	ActClearDemoting: "clear-demoting",
}

func (k ActionKind) String() string { return actionNames[k] }

// Action is one step for the executor.
type Action struct {
	Kind     ActionKind
	Target   string // member name (transfer target, upstream member)
	Upstream string // PostgreSQL host:port of the upstream
	Reason   string
}

func (a Action) String() string {
	s := a.Kind.String()
	if a.Target != "" {
		s += " " + a.Target
	}
	if a.Reason != "" {
		s += ": " + a.Reason
	}
	return s
}

// Decide maps the inputs to the actions of one HA loop round.
func Decide(in Input) []Action {
	st := in.State
	if in.Witness {
		return decideWitness(in)
	}
	if in.PG.Data == DataUnknown {
		return []Action{{Kind: ActWait, Reason: "cannot read the PostgreSQL data directory (see the log)"}}
	}
	if in.PG.Data == DataInvalid {
		return []Action{{Kind: ActRefuse, Reason: "the PostgreSQL data directory is not empty and is not a PostgreSQL data directory; move it away"}}
	}
	if st.SystemID != 0 && in.PG.Data == DataValid && in.PG.SysID != 0 && in.PG.SysID != st.SystemID {
		acts := []Action{{Kind: ActRefuse, Reason: fmt.Sprintf("the data directory belongs to another cluster (system identifier %d, this cluster's is %d); move it away to let this node clone", in.PG.SysID, st.SystemID)}}
		if in.PG.Running {
			acts = append([]Action{{Kind: ActFence, Reason: "foreign data directory"}}, acts...)
		}
		return acts
	}

	// Not initialised yet: the first leader claims the initialisation.
	if st.Primary == nil {
		if !in.Leader {
			return []Action{{Kind: ActWait, Reason: "waiting for the leader to initialise the cluster"}}
		}
		if in.PG.Data != DataEmpty {
			return []Action{{Kind: ActRefuse, Reason: "the cluster is new but this node's data directory is not empty; move it away so initdb can run"}}
		}
		if _, ok := st.Members[in.Self]; !ok {
			return []Action{{Kind: ActWait, Reason: "waiting for this member to be recorded"}}
		}
		return []Action{{Kind: ActInitClaim}}
	}

	if st.Primary.Member == in.Self {
		return decideSelfPrimary(in)
	}
	return decideReplica(in)
}

func decideSelfPrimary(in Input) []Action {
	st := in.State
	if !in.Leader {
		// The primary must be the Raft leader: without leadership we do
		// not accept writes (safety rule 2). The leader hands leadership
		// back to us while our agent is alive.
		if in.PG.Running && !in.PG.InRecovery {
			return []Action{{Kind: ActFence, Reason: "this node holds the primary record but not Raft leadership"}}
		}
		return []Action{{Kind: ActWait, Reason: "waiting for Raft leadership before running as primary"}}
	}
	if st.Primary.Initializing {
		switch in.PG.Data {
		case DataEmpty:
			return []Action{{Kind: ActInitDB}}
		case DataValid:
			// Our own initdb finished but its system id was not committed
			// (we crashed in between): the claim is ours, record it.
			return []Action{{Kind: ActRecordSystemID}}
		}
		return []Action{{Kind: ActWait, Reason: "local data directory state unknown"}}
	}
	if in.PG.Running && in.PG.Hung && !st.Paused {
		// Judged by what its users see, not by its process existing: a
		// primary that does not answer is fenced, and (Yield) handed over.
		return []Action{{Kind: ActFence, Reason: fmt.Sprintf("PostgreSQL has not answered its probe for %s; fencing it so that another member takes over", in.PG.Silent.Round(time.Second))}}
	}
	if in.PG.Running && in.PG.Silent > 0 && !in.PG.InRecovery {
		// Not answering, not yet judged hung: touch nothing (each query
		// would wait out its own timeout and hold up the loop that must
		// publish and judge it).
		return []Action{{Kind: ActWait, Reason: "PostgreSQL does not answer its probe"}}
	}
	if in.Yield && !(in.PG.Running && !in.PG.InRecovery) && !st.Paused {
		// We cannot serve: hand leadership to the best candidate, which
		// fails over (our agent answers that it yields).
		if best, _ := bestCandidate(in); best != "" && best != in.Self {
			return []Action{{Kind: ActTransferLeadership, Target: best, Reason: "this node cannot run PostgreSQL as primary; handing over"}}
		}
		// Nobody can take over: keep trying here (a restart in place
		// below), rather than leave the cluster without a primary.
	}
	if in.PG.Data == DataEmpty {
		return []Action{{Kind: ActRefuse, Reason: "this node is the recorded primary but its data directory is empty; run pgha failover --candidate <replica>"}}
	}
	if in.PG.Running && !in.PG.InRecovery {
		acts := []Action{{Kind: ActRunPrimary}, {Kind: ActEnsureSlots}, {Kind: ActRecordLSN}}
		if st.Primary.Demoting {
			// A switchover runs on this very loop between rounds, so a
			// round that sees the mark while running as primary sees one
			// an interrupted switchover left (leadership lost half-way,
			// a restart): proxies hold writes while it stays.
			acts = append([]Action{{Kind: ActClearDemoting, Reason: "no switchover is in progress"}}, acts...)
		}
		if st.Config.SynchronousMode || len(st.SyncSet) > 0 {
			acts = append(acts, Action{Kind: ActSyncStandbys})
		}
		return acts
	}
	if in.PG.Running || !in.PG.WasPrimary {
		// A standby holding the committed record: promote it (switchover
		// target, or the second half of a failover). A stopped standby is
		// started in recovery first so promotion moves to a new timeline.
		// This holds in maintenance mode too: there the record only moves
		// by an operator's switchover or failover.
		return []Action{{Kind: ActPromote}}
	}
	if st.Paused {
		return []Action{{Kind: ActWait, Reason: "maintenance mode: not restarting PostgreSQL"}}
	}
	// Stopped, last run as primary: restart it, unless a newer timeline
	// exists (it would be a diverged copy).
	if st.Primary.Timeline != 0 && in.PG.CtlTimeline != 0 && in.PG.CtlTimeline < st.Primary.Timeline {
		return []Action{{Kind: ActRefuse, Reason: fmt.Sprintf("local data is on timeline %d but the cluster is on %d; run pgha failover --candidate <replica>", in.PG.CtlTimeline, st.Primary.Timeline)}}
	}
	return []Action{{Kind: ActRunPrimary}}
}

func decideReplica(in Input) []Action {
	st := in.State
	p := st.Primary
	var acts []Action
	if in.Leader {
		acts = append(acts, leaderActions(in)...)
		for _, a := range acts {
			if a.Kind == ActFailover {
				return acts // the failover action promotes; nothing else this round
			}
		}
	}
	if p.Initializing || st.SystemID == 0 {
		return append(acts, Action{Kind: ActWait, Reason: fmt.Sprintf("waiting for %s to initialise the cluster", p.Member)})
	}
	if in.PG.Running && !in.PG.InRecovery {
		// A primary that is not the recorded one must stop taking writes
		// at once; it is rewound before it follows the new primary.
		return append(acts, Action{Kind: ActFence, Reason: fmt.Sprintf("PostgreSQL runs as a primary but %s holds the primary record", p.Member)})
	}
	pm, ok := st.Members[p.Member]
	if !ok || pm.PGAddr == "" {
		return append(acts, Action{Kind: ActWait, Reason: fmt.Sprintf("no PostgreSQL address known for primary %s", p.Member)})
	}
	g, alive := in.Gossip[p.Member]
	primaryRuns := alive && g.Alive && g.MetaOK && g.Meta.Role == cluster.RolePrimary && g.Meta.PGState == cluster.StateRunning
	if st.Paused && !in.PG.Running {
		return append(acts, Action{Kind: ActWait, Reason: "maintenance mode: not starting PostgreSQL"})
	}
	switch {
	case in.PG.Data == DataEmpty:
		if !primaryRuns {
			return append(acts, Action{Kind: ActWait, Reason: fmt.Sprintf("waiting for primary %s to run before cloning", p.Member)})
		}
		return append(acts, Action{Kind: ActClone, Target: p.Member, Upstream: pm.PGAddr})
	case !in.PG.Running && in.PG.WasPrimary:
		if !primaryRuns {
			return append(acts, Action{Kind: ActWait, Reason: fmt.Sprintf("former primary: waiting for primary %s to run before rewinding", p.Member)})
		}
		return append(acts, Action{Kind: ActRewind, Target: p.Member, Upstream: pm.PGAddr})
	case in.PG.Running && in.PG.InRecovery && in.PG.OldTimelineFor >= divergedAfter && primaryRuns && !st.Paused && pastFork(st, in.PG):
		return append(acts, Action{Kind: ActRewind, Target: p.Member, Upstream: pm.PGAddr,
			Reason: fmt.Sprintf("replica stuck on timeline %d for %s while the primary is on %d: diverged", in.PG.Timeline, in.PG.OldTimelineFor.Round(time.Second), p.Timeline)})
	}
	return append(acts, Action{Kind: ActRunReplica, Target: p.Member, Upstream: pm.PGAddr})
}

// leaderActions is what a Raft leader that does not hold the primary
// record does about it: give leadership to the primary's node while its
// agent lives, otherwise fail over to the best candidate.
func leaderActions(in Input) []Action {
	st := in.State
	p := st.Primary.Member
	if st.Primary.Initializing || st.SystemID == 0 {
		if g, ok := in.Gossip[p]; ok && g.Alive && g.MetaOK && g.Meta.HasRaft {
			return []Action{{Kind: ActTransferLeadership, Target: p, Reason: "the initialising primary must lead"}}
		}
		return []Action{{Kind: ActWait, Reason: fmt.Sprintf("primary %s is initialising and unreachable", p)}}
	}
	if in.OldPrimary == OldPrimaryAlive {
		return []Action{{Kind: ActTransferLeadership, Target: p, Reason: "the primary's agent is alive; the primary must be the Raft leader"}}
	}
	if st.Paused {
		return []Action{{Kind: ActWait, Reason: fmt.Sprintf("maintenance mode: primary %s is unreachable but automatic failover is paused", p)}}
	}
	if in.Now.Before(in.PromoteNotBefore) {
		return []Action{{Kind: ActWait, Reason: fmt.Sprintf("primary %s unreachable: waiting %s for it to fence itself", p, in.PromoteNotBefore.Sub(in.Now).Round(10*time.Millisecond))}}
	}
	best, why := bestCandidate(in)
	switch {
	case best == "":
		return []Action{{Kind: ActWait, Reason: "primary " + p + " is lost but no member can be promoted: " + why}}
	case best == in.Self:
		return []Action{{Kind: ActFailover, Reason: fmt.Sprintf("primary %s is lost", p)}}
	default:
		return []Action{{Kind: ActTransferLeadership, Target: best, Reason: fmt.Sprintf("primary %s is lost and %s is the best candidate", p, best)}}
	}
}

// SelfView is the local member as the eligibility rule sees it, from its
// own probe (fresher than its gossip).
func SelfView(in Input) MemberView {
	v := MemberView{
		Name: in.Self, Reachable: true, Witness: in.Witness,
		NoFailover: in.Tags.NoFailover, Priority: in.Tags.Priority,
		Role: in.PG.Role(), State: in.PG.State(),
		Position: in.PG.Position(),
	}
	if in.Voters != nil {
		v.Voter, v.VoterKnown = in.Voters[in.Self], true
	}
	return v
}

// bestCandidate is the member automatic failover promotes (see Best),
// or "" and why nobody may be.
func bestCandidate(in Input) (string, string) {
	self := SelfView(in)
	views := Views(in.State, in.Gossip, in.Voters, &self)
	return Best(in.State, views, PromotionRule(in.State, in.Gossip, ForPromotion, false))
}

func decideWitness(in Input) []Action {
	if !in.Leader {
		return []Action{{Kind: ActWait, Reason: "witness: no PostgreSQL"}}
	}
	st := in.State
	if st.Primary == nil {
		// A witness cannot initialise the cluster: hand leadership to a
		// database node (the smallest live voter name, as all rank alike).
		var names []string
		for name, g := range in.Gossip {
			if name != in.Self && g.Alive && g.MetaOK && !g.Meta.Witness && g.Meta.HasRaft && (in.Voters == nil || in.Voters[name]) {
				names = append(names, name)
			}
		}
		if len(names) == 0 {
			return []Action{{Kind: ActWait, Reason: "witness leads until a database node can take over"}}
		}
		sort.Strings(names)
		return []Action{{Kind: ActTransferLeadership, Target: names[0], Reason: "a witness never initialises the cluster"}}
	}
	acts := leaderActions(in)
	for i, a := range acts {
		if a.Kind == ActFailover { // cannot happen: a witness is never a candidate
			acts[i] = Action{Kind: ActWait, Reason: "witness cannot be promoted"}
		}
	}
	return acts
}
