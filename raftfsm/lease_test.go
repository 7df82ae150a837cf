package raftfsm

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestQuorumSince(t *testing.T) {
	now := time.Unix(1000, 0)
	at := func(ms int) time.Time { return now.Add(-time.Duration(ms) * time.Millisecond) }
	three := []raft.ServerID{"a", "b", "c"}
	five := []raft.ServerID{"a", "b", "c", "d", "e"}
	tests := []struct {
		name   string
		voters []raft.ServerID
		acks   map[raft.ServerID]ack
		want   time.Time
	}{
		{"sole voter: always now", []raft.ServerID{"a"}, nil, now},
		{"three, no acks: no lease", three, nil, time.Time{}},
		{"three, one ack: self + it", three, map[raft.ServerID]ack{"b": {7, at(300)}}, at(300)},
		{"three, two acks: the newer", three, map[raft.ServerID]ack{"b": {7, at(300)}, "c": {7, at(100)}}, at(100)},
		{"an ack of an older term does not count", three, map[raft.ServerID]ack{"b": {6, at(10)}, "c": {7, at(900)}}, at(900)},
		{"five: self + the two newest", five, map[raft.ServerID]ack{"b": {7, at(100)}, "c": {7, at(500)}, "d": {7, at(200)}, "e": {7, at(50)}}, at(100)},
		{"five, one ack: no quorum", five, map[raft.ServerID]ack{"b": {7, at(100)}}, time.Time{}},
		{"not a voter: no lease", []raft.ServerID{"b", "c"}, map[raft.ServerID]ack{"b": {7, at(1)}, "c": {7, at(1)}}, time.Time{}},
		{"non-voters' acks are ignored", three, map[raft.ServerID]ack{"x": {7, at(1)}, "b": {7, at(700)}}, at(700)},
	}
	for _, tt := range tests {
		if got := quorumSince(tt.acks, "a", tt.voters, 7, now); !got.Equal(tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}
