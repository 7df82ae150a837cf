package raftfsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
)

// memberName is what a member name may look like: it becomes a Raft server
// ID, a gossip name and part of a replication slot name.
var memberName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ApplyCommand applies one encoded command to s. It is pure and
// deterministic: no clock, no I/O, so every node (and an offline replay)
// computes the same state from the same log. On error s is unchanged.
func ApplyCommand(s *State, data []byte) error {
	env, err := DecodeEnvelope(data)
	if err != nil {
		return err
	}
	switch env.Type {
	case CmdNoop:
		return nil
	case CmdInitCluster:
		var c InitCluster
		if err := decodePayload(env, &c); err != nil {
			return err
		}
		return applyInit(s, c)
	case CmdSetSystemID:
		var c SetSystemID
		if err := decodePayload(env, &c); err != nil {
			return err
		}
		return applySystemID(s, c)
	case CmdUpsertMember:
		var c UpsertMember
		if err := decodePayload(env, &c); err != nil {
			return err
		}
		return applyUpsertMember(s, c)
	case CmdRemoveMember:
		var c RemoveMember
		if err := decodePayload(env, &c); err != nil {
			return err
		}
		return applyRemoveMember(s, c)
	case CmdSetPrimary:
		var c SetPrimary
		if err := decodePayload(env, &c); err != nil {
			return err
		}
		return applySetPrimary(s, c)
	case CmdSetPrimaryLSN:
		var c SetPrimaryLSN
		if err := decodePayload(env, &c); err != nil {
			return err
		}
		return applyPrimaryLSN(s, c)
	case CmdSetConfig:
		var c SetConfig
		if err := decodePayload(env, &c); err != nil {
			return err
		}
		if c.Config.MaximumLagOnFailover < 0 {
			return fmt.Errorf("%w: maximum_lag_on_failover must be >= 0", ErrRejected)
		}
		if c.Config.SynchronousNodeCount < 1 {
			return fmt.Errorf("%w: synchronous_node_count must be >= 1", ErrRejected)
		}
		s.Config = c.Config
		return nil
	case CmdSetSyncSet:
		var c SetSyncSet
		if err := decodePayload(env, &c); err != nil {
			return err
		}
		if s.Primary == nil || s.Primary.Member != c.Member || s.Primary.Epoch != c.Epoch {
			return fmt.Errorf("%w: set_sync_set from %s epoch %d: not the current primary", ErrRejected, c.Member, c.Epoch)
		}
		for _, m := range c.Members {
			if _, ok := s.Members[m]; !ok || m == c.Member {
				return fmt.Errorf("%w: set_sync_set: %q is not a standby member", ErrRejected, m)
			}
		}
		s.SyncSet = append([]string(nil), c.Members...)
		return nil
	case CmdSetDemoting:
		var c SetDemoting
		if err := decodePayload(env, &c); err != nil {
			return err
		}
		if s.Primary == nil || s.Primary.Member != c.Member || s.Primary.Epoch != c.Epoch {
			return fmt.Errorf("%w: set_demoting from %s epoch %d: not the current primary", ErrRejected, c.Member, c.Epoch)
		}
		s.Primary.Demoting = c.Demoting
		return nil
	case CmdSchedule:
		var c Schedule
		if len(env.Payload) == 0 {
			return fmt.Errorf("%w: %s without payload", ErrMalformed, env.Type)
		}
		if err := strictUnmarshal(env.Payload, &c); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrMalformed, env.Type, err)
		}
		if c.Switchover != nil && (c.Switchover.At.IsZero() || c.Switchover.From == "") {
			return fmt.Errorf("%w: schedule_switchover: time and current primary are required", ErrMalformed)
		}
		s.Scheduled = c.Switchover
		return nil
	case CmdPromoted:
		var c Promoted
		if err := decodePayload(env, &c); err != nil {
			return err
		}
		return applyPromoted(s, c)
	case CmdSetPaused:
		var c SetPaused
		if err := decodePayload(env, &c); err != nil {
			return err
		}
		s.Paused = c.Paused
		return nil
	default:
		return fmt.Errorf("%w: %q", ErrUnknownCommand, env.Type)
	}
}

func applyInit(s *State, c InitCluster) error {
	if !memberName.MatchString(c.Member) {
		return fmt.Errorf("%w: init_cluster: bad member name %q", ErrMalformed, c.Member)
	}
	if c.ClusterID == "" {
		return fmt.Errorf("%w: init_cluster: empty cluster id", ErrMalformed)
	}
	if s.Primary != nil || s.SystemID != 0 {
		return fmt.Errorf("%w: cluster already initialised", ErrRejected)
	}
	if _, ok := s.Members[c.Member]; !ok {
		return fmt.Errorf("%w: init_cluster: %q is not a member", ErrRejected, c.Member)
	}
	s.ClusterID = c.ClusterID
	s.Primary = &PrimaryRecord{Member: c.Member, Epoch: 1, Since: c.At, Initializing: true}
	if s.Config.MaximumLagOnFailover == 0 && s.Config.Parameters == nil {
		s.Config = DefaultDynamicConfig()
	}
	return nil
}

func applySystemID(s *State, c SetSystemID) error {
	if c.SystemID == 0 {
		return fmt.Errorf("%w: set_system_id: zero system id", ErrMalformed)
	}
	if s.SystemID != 0 && s.SystemID != c.SystemID {
		return fmt.Errorf("%w: system id already %d, not %d", ErrRejected, s.SystemID, c.SystemID)
	}
	if s.Primary == nil || s.Primary.Member != c.Member {
		return fmt.Errorf("%w: set_system_id: %q does not hold the primary record", ErrRejected, c.Member)
	}
	s.SystemID = c.SystemID
	s.Primary.Initializing = false
	if c.Timeline != 0 {
		s.Primary.Timeline = c.Timeline
	}
	if len(s.History) == 0 {
		s.History = append(s.History, HistoryEntry{
			Epoch: s.Primary.Epoch, At: s.Primary.Since, New: c.Member,
			Timeline: s.Primary.Timeline, Reason: "bootstrap",
		})
	}
	return nil
}

func applyUpsertMember(s *State, c UpsertMember) error {
	m := c.Member
	if !memberName.MatchString(m.Name) {
		return fmt.Errorf("%w: upsert_member: bad member name %q", ErrMalformed, m.Name)
	}
	if m.RaftAddr == "" {
		return fmt.Errorf("%w: upsert_member %s: empty raft address", ErrMalformed, m.Name)
	}
	if s.Members == nil {
		s.Members = map[string]Member{}
	}
	if old, ok := s.Members[m.Name]; ok && !old.JoinedAt.IsZero() {
		m.JoinedAt = old.JoinedAt
	}
	s.Members[m.Name] = m
	return nil
}

func applyRemoveMember(s *State, c RemoveMember) error {
	if _, ok := s.Members[c.Name]; !ok {
		return nil // idempotent: removing twice is fine
	}
	if s.IsPrimary(c.Name) {
		return fmt.Errorf("%w: %s is the primary; switch over first", ErrRejected, c.Name)
	}
	delete(s.Members, c.Name)
	var keep []string
	for _, m := range s.SyncSet {
		if m != c.Name {
			keep = append(keep, m)
		}
	}
	s.SyncSet = keep
	return nil
}

func applySetPrimary(s *State, c SetPrimary) error {
	if _, ok := s.Members[c.Member]; !ok {
		return fmt.Errorf("%w: set_primary: %q is not a member", ErrRejected, c.Member)
	}
	if s.Members[c.Member].Witness {
		return fmt.Errorf("%w: set_primary: %q is a witness", ErrRejected, c.Member)
	}
	if s.Primary == nil || s.SystemID == 0 {
		return fmt.Errorf("%w: set_primary: cluster not initialised", ErrRejected)
	}
	if s.Primary.Epoch != c.ExpectEpoch {
		return fmt.Errorf("%w: set_primary: epoch is %d, expected %d", ErrRejected, s.Primary.Epoch, c.ExpectEpoch)
	}
	old := s.Primary.Member
	// The new primary leaves the synchronous set; the rest stays valid
	// until the new primary has rebuilt it.
	var keep []string
	for _, m := range s.SyncSet {
		if m != c.Member {
			keep = append(keep, m)
		}
	}
	s.SyncSet = keep
	s.Scheduled = nil
	s.Primary = &PrimaryRecord{Member: c.Member, Epoch: c.ExpectEpoch + 1, Timeline: c.Timeline, Since: c.At}
	s.History = append(s.History, HistoryEntry{
		Epoch: s.Primary.Epoch, At: c.At, Old: old, New: c.Member,
		Timeline: c.Timeline, LSN: c.LSN, Reason: c.Reason, LastSeen: c.LastSeen,
	})
	const maxHistory = 200 // bounded: the FSM stays small
	if len(s.History) > maxHistory {
		s.History = append([]HistoryEntry(nil), s.History[len(s.History)-maxHistory:]...)
	}
	return nil
}

func applyPromoted(s *State, c Promoted) error {
	if s.Primary == nil || s.Primary.Member != c.Member || s.Primary.Epoch != c.Epoch {
		return fmt.Errorf("%w: promoted from %s epoch %d: not the current primary", ErrRejected, c.Member, c.Epoch)
	}
	if c.Timeline > s.Primary.Timeline {
		s.Primary.Timeline = c.Timeline
	}
	for i := len(s.History) - 1; i >= 0; i-- {
		if s.History[i].Epoch == c.Epoch {
			s.History[i].PromotedAt = c.At
			if c.Timeline != 0 {
				s.History[i].Timeline = c.Timeline
			}
			break
		}
	}
	return nil
}

func applyPrimaryLSN(s *State, c SetPrimaryLSN) error {
	if s.Primary == nil || s.Primary.Member != c.Member || s.Primary.Epoch != c.Epoch {
		return fmt.Errorf("%w: set_primary_lsn from %s epoch %d: not the current primary", ErrRejected, c.Member, c.Epoch)
	}
	if p := s.PrimaryLSN; p != nil && p.Timeline == c.Timeline && c.LSN < p.LSN {
		return fmt.Errorf("%w: set_primary_lsn: %d is behind %d", ErrRejected, c.LSN, p.LSN)
	}
	s.PrimaryLSN = &LSNRecord{LSN: c.LSN, Timeline: c.Timeline, At: c.At}
	if c.Timeline > s.Primary.Timeline {
		s.Primary.Timeline = c.Timeline
	}
	return nil
}

// strictUnmarshal decodes JSON rejecting unknown fields and trailing data.
func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after JSON value")
	}
	return nil
}

// encodeState and decodeState are the snapshot format.
func encodeState(s *State) ([]byte, error) {
	return json.Marshal(struct {
		Version int    `json:"version"`
		State   *State `json:"state"`
	}{1, s})
}

func decodeState(data []byte) (State, error) {
	var w struct {
		Version int    `json:"version"`
		State   *State `json:"state"`
	}
	if err := json.Unmarshal(data, &w); err != nil {
		return State{}, fmt.Errorf("decode snapshot: %w", err)
	}
	if w.Version != 1 || w.State == nil {
		return State{}, fmt.Errorf("decode snapshot: unsupported version %d", w.Version)
	}
	return *w.State, nil
}
