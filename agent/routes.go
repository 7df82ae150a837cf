package agent

import (
	"context"
	"log/slog"
	"time"

	"github.com/pgha/pgha/agent/routing"
	"github.com/pgha/pgha/config"
	"github.com/pgha/pgha/proxy"
)

// The routing loop keeps the proxy's routing table in step with the
// cluster. It recomputes on change, not on a clock: when the FSM or the
// gossip view changes (relayEvents), when leadership changes
// (watchLeadership), and when this follower's contact with the leader may
// have run out (a timer at the end of the leader lease). Replica lag and
// the staleness of a member's status move without a gossip event, so the
// table is also refreshed every lagRefresh.
const lagRefresh = time.Second

// contactRecheck is how often the routing loop looks for the leader's
// contact while this node has none.
const contactRecheck = 100 * time.Millisecond

// routeLoop owns the proxy's routing table.
func (a *Agent) routeLoop(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.routesWake:
		case <-t.C:
		}
		contact, until := a.leaderContact(time.Now())
		r := routing.Routes(routing.Input{
			State: a.raft.ClusterState(), Gossip: a.gossipByName(),
			LeaderContact: contact, MaxReplicaLag: a.cfg.Proxy.MaxReplicaLag.Bytes,
		})
		a.proxy.SetRoutes(r)
		next := lagRefresh
		switch {
		case contact && until > 0 && until < next:
			next = until // look again the moment the lease may run out
		case !contact:
			// No event says that contact is back: look often while it
			// is missing (only then), so writes resume promptly.
			next = contactRecheck
		}
		t.Reset(next)
	}
}

// leaderContact reports whether this node is the leader or has heard
// from one within the leader lease, and for how much longer that holds
// (0 when it does not, or on the leader, whose own lease check fences).
func (a *Agent) leaderContact(now time.Time) (bool, time.Duration) {
	if a.raft.IsLeader() {
		return true, 0
	}
	if id, _ := a.raft.Leader(); id == "" {
		return false, 0
	}
	left := a.cfg.Raft.LeaderLeaseTimeout.Duration - now.Sub(a.raft.LastContact())
	if left < 0 {
		return false, 0
	}
	return true, left + time.Millisecond
}

// newProxy opens the proxy's ports.
func newProxy(cfg *config.Config, logger *slog.Logger) (*proxy.Proxy, error) {
	return proxy.New(proxy.Config{
		WriteAddr:           cfg.Proxy.WriteAddr,
		ReadAddr:            cfg.Proxy.ReadAddr,
		HoldTimeout:         cfg.Proxy.HoldTimeout.Duration,
		MaxConn:             cfg.Proxy.MaxConn,
		ReadFallbackPrimary: cfg.Proxy.ReadFallbackPrimary,
		Loops:               cfg.Proxy.EventLoops,
		Allowed:             cfg.ProxyAllowed(),
		Logger:              logger.With("component", "proxy"),
	})
}
