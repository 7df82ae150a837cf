package agent

import (
	"context"
	"errors"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/raftfsm"
)

// The operator backend: the agent answers the REST API (api.Backend).
// Read-only views (view.go, check.go) read the boards and the FSM from the
// API's goroutines. Operations that act on PostgreSQL or need the leader
// term (op_*.go) run as jobs on the HA loop (haLoop.do), so they never
// race a round. Every error is a domain error of package cluster; the
// api package alone turns them into HTTP statuses.
var _ api.Backend = (*Agent)(nil)

// domainErr turns errors of Raft commits into domain errors: a commit on
// a node that lost leadership is cluster.ErrNotLeader (the API forwards
// the request), one the FSM refused is a conflict with the state.
func domainErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raftfsm.ErrNotLeader):
		return cluster.ErrNotLeader
	case errors.Is(err, raftfsm.ErrRejected):
		return cluster.Conflictf("%v", err)
	}
	return err
}

// asLeader runs f as a job on the HA loop with this node's leader term,
// or answers cluster.ErrNotLeader (the API then forwards the request to
// the leader). Leadership is the Barrier-checked one (Agent.leaderTerm),
// looked at again once the job runs.
func (a *Agent) asLeader(ctx context.Context, f func(ctx context.Context, l *haLoop, t *leaderTerm) error) error {
	if !a.isLeader() {
		return cluster.ErrNotLeader
	}
	return a.loop.do(ctx, func(lctx context.Context) error {
		l := a.loop
		l.term = l.termFor(a.leaderTerm())
		if l.term == nil {
			return cluster.ErrNotLeader
		}
		return f(lctx, l, l.term)
	})
}
