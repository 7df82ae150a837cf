package agent

import (
	"context"
	"time"

	"github.com/pgha/pgha/config"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/proxy"
	"github.com/pgha/pgha/raftfsm"
)

// routeTick is how often the proxy's routing table is recomputed: fast
// enough that the write port follows a switchover within one tick, cheap
// enough (a copy of the small FSM and the gossip view) to run constantly.
const routeTick = 100 * time.Millisecond

// routeLoop keeps the proxy's routing table in step with the cluster.
func (a *Agent) routeLoop(ctx context.Context) {
	t := time.NewTicker(routeTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.proxy.SetRoutes(a.routes())
	}
}

// routes computes where the proxy sends new connections. When in doubt it
// routes writes nowhere (they are held, not refused):
//   - no primary record, or its holder does not report PostgreSQL running
//     as primary (a switchover or failover in progress);
//   - this node has not heard from the Raft leader for longer than the
//     leader lease: it may be on the minority side of a partition, where
//     the primary it knows may already have been replaced.
//
// Reads go to replicas that stream within proxy.max_replica_lag and have
// no noloadbalance tag.
func (a *Agent) routes() proxy.Routes {
	var r proxy.Routes
	st := a.raft.FSM().State()
	if st.Primary == nil || st.SystemID == 0 {
		return r
	}
	gossip := a.gossipByName()
	if g, ok := gossip[st.Primary.Member]; ok && g.Alive && g.Meta.Role == "primary" && g.Meta.PGState == "running" {
		if m, ok := st.Members[st.Primary.Member]; ok && m.PGAddr != "" && a.leaderContact() {
			b := &proxy.Backend{Name: st.Primary.Member, Addr: m.PGAddr}
			if st.Primary.Demoting {
				r.Draining = b // switchover: hold new connections, keep open ones
			} else {
				r.Primary = b
			}
		}
	}
	primaryWAL := primaryPosition(st, gossip)
	maxLag, _ := config.ParseSize(a.cfg.Proxy.MaxReplicaLag)
	for _, name := range st.MemberNames() {
		m := st.Members[name]
		g, ok := gossip[name]
		if !ok || !g.Alive || m.Witness || m.PGAddr == "" || name == st.Primary.Member {
			continue
		}
		if g.Meta.Role != "replica" || g.Meta.PGState != "streaming" || g.Meta.NoLB {
			continue
		}
		if behind(primaryWAL, g.Meta.WAL) > maxLag {
			continue
		}
		r.Replicas = append(r.Replicas, proxy.Backend{Name: name, Addr: m.PGAddr})
	}
	return r
}

// leaderContact reports whether this node is the leader or has heard
// from one within the leader lease.
func (a *Agent) leaderContact() bool {
	if a.raft.IsLeader() {
		return true
	}
	if id, _ := a.raft.Leader(); id == "" {
		return false
	}
	return time.Since(a.raft.LastContact()) <= a.cfg.Raft.LeaderLeaseTimeout.Duration
}

// newProxy opens the proxy's ports.
func newProxy(cfg *config.Config, a *Agent) (*proxy.Proxy, error) {
	return proxy.New(proxy.Config{
		WriteAddr:           cfg.Proxy.WriteAddr,
		ReadAddr:            cfg.Proxy.ReadAddr,
		HoldTimeout:         cfg.Proxy.HoldTimeout.Duration,
		MaxConn:             cfg.Proxy.MaxConn,
		ReadFallbackPrimary: cfg.Proxy.ReadFallbackPrimary,
		Loops:               eventLoops(cfg.Proxy.EventLoops),
		Logger:              a.log.With("component", "proxy"),
	})
}

// ProxyStats answers GET /proxy.
func (a *Agent) ProxyStats() any { return a.proxy.Stats() }

// primaryPosition is the primary's WAL position: its own gossip (fresher)
// when it reports itself running as primary, else the last position
// recorded in the FSM; 0 when neither is known.
func primaryPosition(st raftfsm.State, gossip map[string]membership.Member) uint64 {
	if st.Primary == nil {
		return 0
	}
	if g, ok := gossip[st.Primary.Member]; ok && g.Meta.Role == "primary" && g.Meta.WAL != 0 {
		return g.Meta.WAL
	}
	if st.PrimaryLSN != nil {
		return st.PrimaryLSN.LSN
	}
	return 0
}

// behind is how many bytes lsn trails the primary's position (0 when at
// or ahead of it).
func behind(primary, lsn uint64) int64 {
	if primary > lsn {
		return int64(primary - lsn)
	}
	return 0
}

// eventLoops maps proxy.event_loops (0: none) to proxy.Config.Loops
// (0: the default, negative: none).
func eventLoops(n int) int {
	if n == 0 {
		return -1
	}
	return n
}
