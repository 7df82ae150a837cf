package raftfsm

import (
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
)

// FSM adapts ApplyCommand to hashicorp/raft. It is thin on purpose: the
// logic lives in ApplyCommand. Apply never blocks: readers are woken
// through a coalescing channel with a non-blocking send.
type FSM struct {
	mu      sync.RWMutex
	state   State
	index   uint64 // last applied log index
	changed chan struct{}
}

// NewFSM returns an empty FSM.
func NewFSM() *FSM {
	return &FSM{changed: make(chan struct{}, 1)}
}

// ApplyResult is what Apply returns for each log entry, readable through
// ApplyFuture.Response().
type ApplyResult struct {
	Index uint64
	Err   error
}

// Apply implements raft.FSM.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return ApplyResult{Index: l.Index}
	}
	f.mu.Lock()
	next := f.state.clone()
	err := ApplyCommand(&next, l.Data)
	if err == nil {
		f.state = next
	}
	f.index = l.Index
	f.mu.Unlock()
	if err == nil && !isNoop(l.Data) {
		f.notify()
	}
	return ApplyResult{Index: l.Index, Err: err}
}

// isNoop reports whether data is the no-op command, which changes nothing
// worth waking anyone for.
func isNoop(data []byte) bool {
	env, err := DecodeEnvelope(data)
	return err == nil && env.Type == CmdNoop
}

func (f *FSM) notify() {
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

// Changed receives a value after one or more commands changed the state.
// It is coalesced: one receive may stand for many changes.
func (f *FSM) Changed() <-chan struct{} { return f.changed }

// State returns a deep copy of the current state.
func (f *FSM) State() State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.clone()
}

// AppliedIndex returns the index of the last applied log entry.
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.index
}

// Snapshot implements raft.FSM.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	s := f.state.clone()
	f.mu.RUnlock()
	data, err := encodeState(&s)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	return snapshot(data), nil
}

// Restore implements raft.FSM.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	s, err := decodeState(data)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.state = s
	f.mu.Unlock()
	f.notify()
	return nil
}

type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s snapshot) Release() {}
