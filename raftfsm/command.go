package raftfsm

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// CommandType tags a command in its envelope.
type CommandType string

// The command types. Each has exactly one payload type below and one case
// in Apply's switch (the only type switch on commands in pgha).
const (
	CmdInitCluster   CommandType = "init_cluster"
	CmdSetSystemID   CommandType = "set_system_id"
	CmdUpsertMember  CommandType = "upsert_member"
	CmdRemoveMember  CommandType = "remove_member"
	CmdSetPrimary    CommandType = "set_primary"
	CmdSetPrimaryLSN CommandType = "set_primary_lsn"
	CmdSetConfig     CommandType = "set_config"
	CmdSetPaused     CommandType = "set_paused"
	CmdPromoted      CommandType = "promoted"
	CmdSetSyncSet    CommandType = "set_sync_set"
	CmdSchedule      CommandType = "schedule_switchover"
	CmdSetDemoting   CommandType = "set_demoting"
	CmdNoop          CommandType = "noop"
)

// commandVersion is the envelope version this code writes. Apply accepts
// versions 1..commandVersion and rejects newer ones, so an old agent never
// misreads a command written by a newer one.
const commandVersion = 1

// Envelope is how every command travels through the Raft log.
type Envelope struct {
	Type    CommandType     `json:"type"`
	Version int             `json:"version"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// InitCluster claims the right to initialise the cluster: it succeeds only
// while there is no primary record, and makes Member the initialising
// primary under epoch 1.
type InitCluster struct {
	ClusterID string    `json:"cluster_id"`
	Member    string    `json:"member"`
	At        time.Time `json:"at"`
}

// SetSystemID records PostgreSQL's system identifier once initdb ran, and
// ends the initialisation. It is rejected if a different id is recorded.
type SetSystemID struct {
	SystemID uint64 `json:"system_id,string"`
	Member   string `json:"member"`
	Timeline uint32 `json:"timeline"`
}

// UpsertMember adds or updates a member.
type UpsertMember struct {
	Member Member `json:"member"`
}

// RemoveMember removes a member. Removing the primary is rejected.
type RemoveMember struct {
	Name string `json:"name"`
}

// SetPrimary moves the primary record to Member. It is a compare-and-swap:
// it applies only if the current epoch is ExpectEpoch, and the new epoch
// is ExpectEpoch+1.
type SetPrimary struct {
	Member      string    `json:"member"`
	ExpectEpoch uint64    `json:"expect_epoch"`
	Timeline    uint32    `json:"timeline"`
	LSN         uint64    `json:"lsn,string"`
	Reason      string    `json:"reason"`
	At          time.Time `json:"at"`
	// LastSeen: see HistoryEntry.LastSeen.
	LastSeen time.Time `json:"last_seen,omitempty"`
}

// SetDemoting marks the current primary as being stopped by a switchover
// (or clears the mark when the switchover is aborted).
type SetDemoting struct {
	Member   string `json:"member"`
	Epoch    uint64 `json:"epoch"`
	Demoting bool   `json:"demoting"`
}

// Schedule sets (or, with Switchover nil, clears) the planned switchover.
type Schedule struct {
	Switchover *ScheduledSwitchover `json:"switchover"`
}

// SetSyncSet records the synchronous standby set. Only the holder of the
// current epoch may write it.
type SetSyncSet struct {
	Member  string   `json:"member"`
	Epoch   uint64   `json:"epoch"`
	Members []string `json:"members"`
}

// Promoted records that the holder of the current epoch finished its
// promotion: the timeline it reached and when it took writes.
type Promoted struct {
	Member   string    `json:"member"`
	Epoch    uint64    `json:"epoch"`
	Timeline uint32    `json:"timeline"`
	At       time.Time `json:"at"`
}

// SetPrimaryLSN records the primary's WAL position. Only the holder of the
// current epoch may write it, and positions never go backwards within a
// timeline.
type SetPrimaryLSN struct {
	Member   string    `json:"member"`
	Epoch    uint64    `json:"epoch"`
	LSN      uint64    `json:"lsn,string"`
	Timeline uint32    `json:"timeline"`
	At       time.Time `json:"at"`
}

// SetConfig replaces the dynamic configuration.
type SetConfig struct {
	Config DynamicConfig `json:"config"`
}

// SetPaused turns maintenance mode on or off.
type SetPaused struct {
	Paused bool `json:"paused"`
}

// Encode wraps a payload in an envelope. The payload's type decides the
// command type, so a caller cannot pair the wrong tag with a payload.
func Encode(payload any) ([]byte, error) {
	var t CommandType
	switch payload.(type) {
	case InitCluster:
		t = CmdInitCluster
	case SetSystemID:
		t = CmdSetSystemID
	case UpsertMember:
		t = CmdUpsertMember
	case RemoveMember:
		t = CmdRemoveMember
	case SetPrimary:
		t = CmdSetPrimary
	case SetPrimaryLSN:
		t = CmdSetPrimaryLSN
	case SetConfig:
		t = CmdSetConfig
	case SetPaused:
		t = CmdSetPaused
	case Promoted:
		t = CmdPromoted
	case SetSyncSet:
		t = CmdSetSyncSet
	case Schedule:
		t = CmdSchedule
	case SetDemoting:
		t = CmdSetDemoting
	case nil:
		t = CmdNoop
	default:
		return nil, fmt.Errorf("encode command: unknown payload type %T", payload)
	}
	env := Envelope{Type: t, Version: commandVersion}
	if payload != nil {
		p, err := json.Marshal(payload)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", t, err)
		}
		env.Payload = p
	}
	return json.Marshal(env)
}

// ErrMalformed is returned (wrapped) for a command that cannot be decoded.
var ErrMalformed = errors.New("malformed command")

// ErrUnknownCommand is returned (wrapped) for a command type or version this
// code does not know.
var ErrUnknownCommand = errors.New("unknown command")

// ErrRejected is returned (wrapped) when a well-formed command does not
// apply to the current state (a failed compare-and-swap, say).
var ErrRejected = errors.New("command rejected")

// decodePayload decodes strictly: unknown fields are an error, so a
// command from a newer agent is not half-applied.
func decodePayload(env Envelope, v any) error {
	if len(env.Payload) == 0 {
		return fmt.Errorf("%w: %s without payload", ErrMalformed, env.Type)
	}
	if err := strictUnmarshal(env.Payload, v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, env.Type, err)
	}
	return nil
}

// DecodeEnvelope parses the outer envelope.
func DecodeEnvelope(data []byte) (Envelope, error) {
	var env Envelope
	if err := strictUnmarshal(data, &env); err != nil {
		return env, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if env.Type == "" {
		return env, fmt.Errorf("%w: no type", ErrMalformed)
	}
	if env.Version < 1 || env.Version > commandVersion {
		return env, fmt.Errorf("%w: %s version %d (this agent knows 1..%d)", ErrUnknownCommand, env.Type, env.Version, commandVersion)
	}
	return env, nil
}
