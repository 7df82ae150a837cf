// Package routing decides where the proxy sends new connections: a pure
// function of the Raft FSM, the gossip view and this node's contact with
// the Raft leader, so every rule is a table test.
package routing

import (
	"github.com/pgha/pgha/agent/decide"
	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/proxy"
	"github.com/pgha/pgha/raftfsm"
)

// Input is what the routes depend on.
type Input struct {
	State  raftfsm.State
	Gossip map[string]membership.Member // this cluster's members; Alive false when stale
	// LeaderContact: this node is the Raft leader or heard from one
	// within the leader lease. Without it the node may be on the
	// minority side of a partition, where the primary it knows may
	// already have been replaced.
	LeaderContact bool
	// MaxReplicaLag bounds the lag of a replica the read port uses.
	MaxReplicaLag int64
}

// runsAsPrimary reports whether the record holder g runs PostgreSQL as
// the primary: its gossip says so, or the FSM says it promoted in the
// current epoch after the status its gossip still carries was published.
// Both dates come from the holder's own clock. (Its heartbeat republishes
// the status every second; one that lands between the promotion and the
// next status only delays the route to that next status.) The FSM reaches every node one
// Raft round trip after the promotion, usually before the holder's next
// gossip does, so the write port follows a switchover sooner; a status
// read after the promotion (a crash since, say) overrides it.
func runsAsPrimary(st raftfsm.State, g membership.Member) bool {
	if !g.Alive || !g.MetaOK {
		return false
	}
	if g.Meta.Role == cluster.RolePrimary && g.Meta.PGState == cluster.StateRunning {
		return true
	}
	for i := len(st.History) - 1; i >= 0; i-- {
		if h := st.History[i]; h.Epoch == st.Primary.Epoch {
			return h.New == g.Name && !h.PromotedAt.IsZero() && g.Meta.At < h.PromotedAt.UnixMilli()
		}
	}
	return false
}

// Routes computes where new connections go. When in doubt it routes
// writes nowhere (the proxy holds them, it does not refuse them):
//   - no primary record, or its holder does not report PostgreSQL running
//     as primary (a switchover or failover in progress);
//   - no recent contact with the Raft leader.
//
// While a switchover stops the primary (the record says demoting) the
// primary is Draining: open connections stay, new ones are held. Reads
// go to the members the eligibility rule accepts for reads (decide.Eligible
// with decide.ForReads): streaming replicas on the record's timeline,
// within MaxReplicaLag of the primary's freshest position, without
// noloadbalance.
func Routes(in Input) proxy.Routes {
	var r proxy.Routes
	st := in.State
	if st.Primary == nil || st.SystemID == 0 {
		return r
	}
	if g, ok := in.Gossip[st.Primary.Member]; ok && runsAsPrimary(st, g) {
		if m, ok := st.Members[st.Primary.Member]; ok && m.PGAddr != "" && in.LeaderContact {
			b := &proxy.Backend{Name: st.Primary.Member, Addr: m.PGAddr}
			if st.Primary.Demoting {
				r.Draining = b
			} else {
				r.Primary = b
			}
		}
	}
	rule := decide.Rule{Purpose: decide.ForReads, Reference: decide.PrimaryPosition(st, in.Gossip), MaxLag: in.MaxReplicaLag}
	for _, name := range st.MemberNames() {
		m := st.Members[name]
		g, ok := in.Gossip[name]
		if !ok || m.PGAddr == "" || m.Witness {
			continue
		}
		v := decide.ViewOf(g, nil)
		v.Position.LSN = g.Meta.WAL // reads see what is replayed, not what is received
		if decide.Eligible(st, v, rule) != nil {
			continue
		}
		r.Replicas = append(r.Replicas, proxy.Backend{Name: name, Addr: m.PGAddr})
	}
	return r
}
