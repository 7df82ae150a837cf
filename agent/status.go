package agent

import (
	"sync"
	"time"

	"github.com/pgha/pgha/cluster"
)

// NodeStatus is the local node's view, served by the API.
type NodeStatus struct {
	Name      string          `json:"name"`
	Role      cluster.Role    `json:"role"`
	State     cluster.PGState `json:"state"`
	Timeline  uint32          `json:"timeline,omitempty"`
	WAL       uint64          `json:"wal_lsn,omitempty"`
	Receive   uint64          `json:"receive_lsn,omitempty"`
	Replay    uint64          `json:"replay_lsn,omitempty"`
	ReplayLag float64         `json:"replay_lag_seconds,omitempty"`
	Streaming bool            `json:"streaming,omitempty"`
	SysID     uint64          `json:"system_id,string,omitempty"`
	Waiting   string          `json:"waiting,omitempty"` // why nothing happens
	Pending   bool            `json:"pending_restart,omitempty"`
	Error     string          `json:"error,omitempty"`
	LoopAt    time.Time       `json:"loop_at"`
	PGRunning bool            `json:"-"`
	InRecov   bool            `json:"-"`
	// Yield: this node holds the primary record but cannot run
	// PostgreSQL as primary (see haLoop.trackPrimaryStart).
	Yield bool `json:"-"`
	// Writable names the members that have looked writable for
	// writableGrace, as the HA loop last settled it (see watchWritable).
	Writable []string `json:"-"`
}

// statusBoard holds what the HA loop last observed and decided, for the
// API and metrics. Only the HA loop (and jobs it runs) writes it.
type statusBoard struct {
	mu sync.Mutex
	s  NodeStatus
}

func (b *statusBoard) get() NodeStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.s
	s.Writable = append([]string(nil), b.s.Writable...)
	return s
}

func (b *statusBoard) update(f func(*NodeStatus)) {
	b.mu.Lock()
	f(&b.s)
	b.mu.Unlock()
}

// Status returns the node's last observed status.
func (a *Agent) Status() NodeStatus { return a.status.get() }
