package agent

import (
	"testing"

	"github.com/pgha/pgha/config"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

// TestDesired: the cluster-wide parameters pass through as they are
// (pgnode filters them), and synchronous_standby_names is managed only in
// synchronous mode: on the primary the committed set plus the standby
// being added, on a standby the set it would wait for once promoted.
func TestDesired(t *testing.T) {
	cfg := config.Default()
	cfg.Name = "n1"
	l := newHALoop(&Agent{cfg: &cfg})
	l.term = &leaderTerm{number: 3, self: "n1"}
	params := map[string]string{"work_mem": "8MB", "port": "1"}
	state := func(primary string, syncMode bool, set ...string) raftfsm.State {
		return raftfsm.State{
			Primary: &raftfsm.PrimaryRecord{Member: primary, Epoch: 2},
			SyncSet: set,
			Config:  raftfsm.DynamicConfig{SynchronousMode: syncMode, Parameters: params},
		}
	}
	up := &pgnode.Upstream{Host: "127.0.0.1", Port: 5432, Slot: "pgha_n1"}
	tests := []struct {
		name   string
		st     raftfsm.State
		adding string
		role   pgnode.Role
		up     *pgnode.Upstream
		names  string // "-": not managed
	}{
		{"async primary", state("n1", false, "n2"), "", pgnode.RolePrimary, nil, "-"},
		{"async replica", state("n2", false), "", pgnode.RoleReplica, up, "-"},
		{"sync primary", state("n1", true, "n2"), "", pgnode.RolePrimary, nil, `FIRST 1 ("n2")`},
		{"sync primary adding", state("n1", true, "n2"), "n3", pgnode.RolePrimary, nil, `FIRST 2 ("n2","n3")`},
		{"sync primary alone", state("n1", true), "", pgnode.RolePrimary, nil, ""},
		// The record holder about to promote is still a standby.
		{"sync holder before promotion", state("n1", true, "n2"), "", pgnode.RoleReplica, nil, `FIRST 1 ("n2")`},
		{"sync standby in the set", state("n2", true, "n1", "n3"), "n3", pgnode.RoleReplica, up, `FIRST 1 ("n3")`},
		{"sync standby outside the set", state("n2", true, "n3"), "", pgnode.RoleReplica, up, `FIRST 1 ("n3")`},
	}
	for _, tt := range tests {
		l.term.sync = syncAdding{name: tt.adding}
		d := l.desired(tt.st, tt.role, tt.up)
		if d.Role != tt.role || d.Upstream != tt.up || d.Parameters["work_mem"] != "8MB" || d.Parameters["port"] != "1" {
			t.Errorf("%s: desired = %+v, want role %v, upstream %v and the FSM's parameters", tt.name, d, tt.role, tt.up)
		}
		got := "-"
		if d.SyncStandbyNames != nil {
			got = *d.SyncStandbyNames
		}
		if got != tt.names {
			t.Errorf("%s: SyncStandbyNames = %q, want %q", tt.name, got, tt.names)
		}
	}
}
