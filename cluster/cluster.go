// Package cluster is pgha's shared vocabulary: the role a member plays,
// the state its PostgreSQL is in, and the domain errors every layer
// speaks. It imports nothing of pgha's, so gossip metadata, the agent and
// the REST API can all use the same typed values; only the API turns the
// errors into HTTP statuses (see api.statusOf).
package cluster

// Role is what a member is in the cluster, as its agent reports it.
type Role string

// The roles. RoleNone is a member whose PostgreSQL does not run (yet).
const (
	RoleNone    Role = ""
	RolePrimary Role = "primary"
	RoleReplica Role = "replica"
	RoleWitness Role = "witness"
)

// PGState is the state of a member's PostgreSQL as its agent reports it
// (and, for the last few, as an observer sees the member).
type PGState string

// The states a member's agent publishes.
const (
	StateStopped   PGState = "stopped"
	StateRunning   PGState = "running"   // accepting connections (a primary, or a replica not streaming)
	StateStreaming PGState = "streaming" // a replica whose walreceiver streams
	StateStarting  PGState = "starting"
	// StateUnresponsive: the process runs but has not answered its
	// agent's probe (a hung server, a stopped process, a frozen disk).
	StateUnresponsive   PGState = "unresponsive"
	StateInitializing   PGState = "initializing"
	StateCloning        PGState = "cloning"
	StateRewinding      PGState = "rewinding"
	StateReinitializing PGState = "reinitializing"
	StateRefused        PGState = "refused" // the agent refuses to act (see its error)
	StateWitness        PGState = "witness" // no PostgreSQL at all
)

// States an observer gives a member it cannot take from the member's own
// report.
const (
	StateUnreachable PGState = "unreachable"
	StateJoining     PGState = "joining"
	StateLeaving     PGState = "leaving"
)

// Up reports whether PostgreSQL accepts connections in this state.
func (s PGState) Up() bool { return s == StateRunning || s == StateStreaming }

// Transitional reports whether the agent is busy changing its data
// directory or starting PostgreSQL: states that a probe of a stopped
// server must not overwrite with "stopped".
func (s PGState) Transitional() bool {
	switch s {
	case StateStarting, StateInitializing, StateCloning, StateRewinding, StateReinitializing:
		return true
	}
	return false
}
