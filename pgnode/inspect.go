package pgnode

import (
	"context"
	"fmt"
)

// Inspection is what `pgha check` looks at beyond the HA loop's status:
// connections, replication slots, WAL senders and the WAL receiver.
type Inspection struct {
	InRecovery     bool
	MaxConnections int
	// Connections counts client backends (not background workers).
	Connections int
	Slots       []SlotInfo
	Senders     []SenderInfo
	// Receiver is the walreceiver's status ("streaming", "stopping"...),
	// "" when none runs (a primary, or a replica not connected).
	Receiver     string
	ReceiverHost string
}

// SlotInfo is one row of pg_replication_slots.
type SlotInfo struct {
	Name      string
	Active    bool
	WALStatus string // reserved, extended, unreserved, lost
	// RetainedBytes is the WAL the slot holds back on a primary (current
	// LSN - restart_lsn); -1 when unknown.
	RetainedBytes int64
}

// SenderInfo is one row of pg_stat_replication.
type SenderInfo struct {
	Name      string // application_name: the member's name
	State     string // startup, catchup, streaming, backup, stopping
	SyncState string // async, potential, sync, quorum
}

// Inspect runs the check queries on a connection of its own: it is called
// rarely (cron, Nagios) and must not queue behind the HA loop's probe.
func (n *Node) Inspect(ctx context.Context) (Inspection, error) {
	var in Inspection
	conn, err := n.Connect(ctx)
	if err != nil {
		return in, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = conn.QueryRow(ctx, `SELECT pg_is_in_recovery(), current_setting('max_connections')::int,
		(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int`).
		Scan(&in.InRecovery, &in.MaxConnections, &in.Connections)
	if err != nil {
		return in, fmt.Errorf("inspect: %w", err)
	}
	rows, err := conn.Query(ctx, `SELECT slot_name, active, coalesce(wal_status, ''),
		CASE WHEN pg_is_in_recovery() OR restart_lsn IS NULL THEN -1
		     ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END
		FROM pg_replication_slots ORDER BY slot_name`)
	if err != nil {
		return in, fmt.Errorf("inspect slots: %w", err)
	}
	for rows.Next() {
		var s SlotInfo
		if err := rows.Scan(&s.Name, &s.Active, &s.WALStatus, &s.RetainedBytes); err != nil {
			rows.Close()
			return in, fmt.Errorf("inspect slots: %w", err)
		}
		in.Slots = append(in.Slots, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return in, fmt.Errorf("inspect slots: %w", err)
	}
	rows, err = conn.Query(ctx, `SELECT coalesce(application_name, ''), coalesce(state, ''), coalesce(sync_state, '')
		FROM pg_stat_replication ORDER BY application_name`)
	if err != nil {
		return in, fmt.Errorf("inspect wal senders: %w", err)
	}
	for rows.Next() {
		var s SenderInfo
		if err := rows.Scan(&s.Name, &s.State, &s.SyncState); err != nil {
			rows.Close()
			return in, fmt.Errorf("inspect wal senders: %w", err)
		}
		in.Senders = append(in.Senders, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return in, fmt.Errorf("inspect wal senders: %w", err)
	}
	err = conn.QueryRow(ctx, `SELECT coalesce((SELECT status FROM pg_stat_wal_receiver LIMIT 1), ''),
		coalesce((SELECT sender_host FROM pg_stat_wal_receiver LIMIT 1), '')`).Scan(&in.Receiver, &in.ReceiverHost)
	if err != nil {
		return in, fmt.Errorf("inspect wal receiver: %w", err)
	}
	return in, nil
}
