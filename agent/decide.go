package agent

import (
	"fmt"

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
	WAL        uint64
	Streaming  bool
}

// Input is everything the decision needs; gathering it is the HA loop's
// job, so Decide itself is pure and table-testable.
type Input struct {
	Self    string
	Witness bool
	// Leader is true only when this node is Raft leader AND has passed the
	// Barrier of the current term (its FSM is up to date).
	Leader bool
	State  raftfsm.State
	// Gossip holds the live gossip members by name.
	Gossip map[string]membership.Member
	PG     LocalPG
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
	ActRunPrimary                           // make sure PostgreSQL runs as primary
	ActRunReplica                           // make sure PostgreSQL runs as a replica of Upstream
	ActStop                                 // stop PostgreSQL (fence); Reason says why
	ActTransferLeadership                   // hand Raft leadership to Target
	ActEnsureSlots                          // create/drop replication slots for the members
	ActRecordLSN                            // commit the primary's WAL position
)

var actionNames = map[ActionKind]string{
	ActWait: "wait", ActRefuse: "refuse", ActInitClaim: "init-claim", ActInitDB: "initdb",
	ActRecordSystemID: "record-system-id", ActClone: "clone", ActRunPrimary: "run-primary",
	ActRunReplica: "run-replica", ActStop: "stop", ActTransferLeadership: "transfer-leadership",
	ActEnsureSlots: "ensure-slots", ActRecordLSN: "record-lsn",
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
	if in.PG.Data == DataInvalid {
		return []Action{{Kind: ActRefuse, Reason: "the PostgreSQL data directory is not empty and is not a PostgreSQL data directory; move it away"}}
	}
	if st.SystemID != 0 && in.PG.Data == DataValid && in.PG.SysID != 0 && in.PG.SysID != st.SystemID {
		acts := []Action{{Kind: ActRefuse, Reason: fmt.Sprintf("the data directory belongs to another cluster (system identifier %d, this cluster's is %d); move it away to let this node clone", in.PG.SysID, st.SystemID)}}
		if in.PG.Running {
			acts = append([]Action{{Kind: ActStop, Reason: "foreign data directory"}}, acts...)
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

	p := st.Primary
	if p.Member == in.Self {
		return decideSelfPrimary(in)
	}
	return decideReplica(in)
}

func decideSelfPrimary(in Input) []Action {
	st := in.State
	if !in.Leader {
		// The primary must be the Raft leader: without leadership we do
		// not accept writes (safety rule 2). The leader will hand
		// leadership back to us while we are healthy.
		if in.PG.Running && !in.PG.InRecovery {
			return []Action{{Kind: ActStop, Reason: "this node holds the primary record but not Raft leadership"}}
		}
		return []Action{{Kind: ActWait, Reason: "waiting for Raft leadership before starting as primary"}}
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
	if in.PG.Data == DataEmpty {
		return []Action{{Kind: ActRefuse, Reason: "this node is the recorded primary but its data directory is empty; use pgha failover to another member"}}
	}
	if in.PG.Running && in.PG.InRecovery {
		return []Action{{Kind: ActRefuse, Reason: "this node holds the primary record but PostgreSQL runs as a standby; automatic promotion is not implemented yet"}}
	}
	acts := []Action{{Kind: ActRunPrimary}}
	if in.PG.Running {
		acts = append(acts, Action{Kind: ActEnsureSlots}, Action{Kind: ActRecordLSN})
	}
	return acts
}

func decideReplica(in Input) []Action {
	st := in.State
	p := st.Primary
	var acts []Action
	if in.Leader {
		g, alive := in.Gossip[p.Member]
		if alive && g.MetaOK && g.Meta.HasRaft {
			// The primary's node is up: leadership belongs there.
			acts = append(acts, Action{Kind: ActTransferLeadership, Target: p.Member, Reason: "the primary must be the Raft leader"})
		} else {
			acts = append(acts, Action{Kind: ActWait, Target: p.Member, Reason: fmt.Sprintf("primary %s is not reachable by gossip", p.Member)})
		}
	}
	if p.Initializing || st.SystemID == 0 {
		return append(acts, Action{Kind: ActWait, Reason: fmt.Sprintf("waiting for %s to initialise the cluster", p.Member)})
	}
	if in.PG.Running && !in.PG.InRecovery {
		// A primary that is not the recorded one: it must stop taking
		// writes at once. Rewinding it is the failover issue's job.
		return append(acts, Action{Kind: ActStop, Reason: fmt.Sprintf("PostgreSQL runs as a primary but %s holds the primary record", p.Member)})
	}
	pm, ok := st.Members[p.Member]
	if !ok || pm.PGAddr == "" {
		return append(acts, Action{Kind: ActWait, Reason: fmt.Sprintf("no PostgreSQL address known for primary %s", p.Member)})
	}
	if in.PG.Data == DataEmpty {
		g, alive := in.Gossip[p.Member]
		if !alive || !g.MetaOK || g.Meta.PGState != "running" {
			return append(acts, Action{Kind: ActWait, Reason: fmt.Sprintf("waiting for primary %s to run before cloning", p.Member)})
		}
		return append(acts, Action{Kind: ActClone, Target: p.Member, Upstream: pm.PGAddr})
	}
	return append(acts, Action{Kind: ActRunReplica, Target: p.Member, Upstream: pm.PGAddr})
}

func decideWitness(in Input) []Action {
	if !in.Leader || in.State.Primary == nil {
		return []Action{{Kind: ActWait, Reason: "witness: no PostgreSQL"}}
	}
	p := in.State.Primary.Member
	if g, ok := in.Gossip[p]; ok && g.MetaOK && g.Meta.HasRaft {
		return []Action{{Kind: ActTransferLeadership, Target: p, Reason: "a witness never leads"}}
	}
	return []Action{{Kind: ActWait, Reason: "witness leads until a database node can take over"}}
}
