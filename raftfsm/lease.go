package raftfsm

import (
	"errors"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// leaseTransport wraps Raft's transport to observe, outside Raft's main
// loop, which followers accept this node as leader, and to stop talking
// when that loop is stuck.
//
// The lease. hashicorp/raft's heartbeat goroutines send every follower an
// AppendEntries about ten times a heartbeat timeout, whatever the main
// loop is doing. A follower that answers one with success, in our term,
// has taken us as its leader at a time no earlier than we sent it, and
// refuses to vote for anyone else for a heartbeat timeout after it. So if
// a quorum of voters (this node counted) answered requests sent at or
// after T, no other leader can have been elected before T plus the
// heartbeat timeout: the same guarantee VerifyLeader gives, without a
// round trip of its own and without waiting on the main loop, which
// waits on the log's fsync. A slow disk therefore cannot make a healthy
// primary look partitioned (see agent/fence.go).
//
// The cut. A main loop stuck for good (a frozen filesystem) keeps
// leadership while the heartbeat goroutines keep its followers from
// electing anyone: nobody can take over. Cut makes every outgoing RPC fail
// at once, so the followers stop hearing from us and elect.
type leaseTransport struct {
	*raft.NetworkTransport
	cut atomic.Bool

	mu   sync.Mutex
	acks map[raft.ServerID]ack
}

// ack is the last successful AppendEntries answer from one follower.
type ack struct {
	term uint64
	sent time.Time // when the request left
}

var errCut = errors.New("raft transport cut: this node's Raft loop is stuck")

func newLeaseTransport(t *raft.NetworkTransport) *leaseTransport {
	return &leaseTransport{NetworkTransport: t, acks: map[raft.ServerID]ack{}}
}

func (t *leaseTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	if t.cut.Load() {
		return errCut
	}
	sent := time.Now()
	err := t.NetworkTransport.AppendEntries(id, target, args, resp)
	if err == nil && resp.Success && resp.Term == args.Term {
		t.mu.Lock()
		if cur := t.acks[id]; args.Term > cur.term || (args.Term == cur.term && sent.After(cur.sent)) {
			t.acks[id] = ack{term: args.Term, sent: sent}
		}
		t.mu.Unlock()
	}
	return err
}

// AppendEntriesPipeline is refused while cut; otherwise pipelined
// replication runs as usual (the heartbeats feed the lease).
func (t *leaseTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	if t.cut.Load() {
		return nil, raft.ErrPipelineReplicationNotSupported
	}
	p, err := t.NetworkTransport.AppendEntriesPipeline(id, target)
	if err != nil {
		return nil, err
	}
	return &cutPipeline{AppendPipeline: p, cut: &t.cut}, nil
}

// cutPipeline is a replication pipeline that stops sending once the
// transport is cut: Raft's replication goroutine sends through an open
// pipeline every commit timeout, which would otherwise keep the
// followers from electing.
type cutPipeline struct {
	raft.AppendPipeline
	cut *atomic.Bool
}

func (p *cutPipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	if p.cut.Load() {
		return nil, errCut
	}
	return p.AppendPipeline.AppendEntries(args, resp)
}

func (t *leaseTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	if t.cut.Load() {
		return errCut
	}
	return t.NetworkTransport.RequestVote(id, target, args, resp)
}

func (t *leaseTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	if t.cut.Load() {
		return errCut
	}
	return t.NetworkTransport.RequestPreVote(id, target, args, resp)
}

func (t *leaseTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	if t.cut.Load() {
		return errCut
	}
	return t.NetworkTransport.InstallSnapshot(id, target, args, resp, data)
}

func (t *leaseTransport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	if t.cut.Load() {
		return errCut
	}
	return t.NetworkTransport.TimeoutNow(id, target, args, resp)
}

// leaseSince returns the time T such that a quorum of voters, self
// included, accepted this node as leader in term with requests sent at
// or after T; zero when no quorum has (yet) in this term.
func (t *leaseTransport) leaseSince(self raft.ServerID, voters []raft.ServerID, term uint64, now time.Time) time.Time {
	return quorumSince(t.snapshot(), self, voters, term, now)
}

func (t *leaseTransport) snapshot() map[raft.ServerID]ack {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[raft.ServerID]ack, len(t.acks))
	for id, a := range t.acks {
		out[id] = a
	}
	return out
}

// quorumSince is leaseSince's arithmetic, pure for tests: self counts as
// acknowledging now; the others by their last ack in term. The quorum's
// lease starts at the oldest of its most recent members.
func quorumSince(acks map[raft.ServerID]ack, self raft.ServerID, voters []raft.ServerID, term uint64, now time.Time) time.Time {
	if !slices.Contains(voters, self) {
		return time.Time{}
	}
	times := []time.Time{now}
	for _, v := range voters {
		if v == self {
			continue
		}
		if a, ok := acks[v]; ok && a.term == term {
			times = append(times, a.sent)
		}
	}
	quorum := len(voters)/2 + 1
	if len(times) < quorum {
		return time.Time{}
	}
	// Newest first; the quorum-th newest is when the quorum last agreed.
	slices.SortFunc(times, func(a, b time.Time) int { return b.Compare(a) })
	return times[quorum-1]
}
