package agent

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

// Synchronous replication, run by the primary's agent every round. The
// primary leads, so this is part of its leader term: a standby being
// added is bookkeeping of the term and is forgotten with it.
//
// The committed synchronous set (FSM SyncSet) is what failover trusts:
// with synchronous_mode on, only its members may be promoted. So it must
// never name a standby that could miss an acknowledged commit:
//
//   - to add a standby, synchronous_standby_names changes first (FIRST n
//     over the old set plus the newcomer); the newcomer enters the FSM set
//     only once pg_stat_replication shows it 'sync' and its flush LSN has
//     passed the primary's position at the moment it first showed 'sync'
//     (from then on every commit waited for it);
//   - to remove one, the FSM set changes first, then the setting.
//
// With no synchronous standby available, strict mode keeps the primary
// waiting for any standby ('*': writes block rather than being acked by
// the primary alone); otherwise replication falls back to asynchronous
// and `pgha list` says so.

// syncAdding is a standby being added: waiting for it to be 'sync' and
// then to have flushed everything committed before.
type syncAdding struct {
	name  string    // "" when none
	since time.Time // when it was picked
	// target is the primary's position in the first probe that showed
	// the standby 'sync' (pg_stat_replication and the position come from
	// one query): every commit after it waited for the standby, so once
	// the standby has flushed up to it, it holds every acknowledged
	// commit. Zero until then.
	target uint64
}

// syncAddTimeout is how long a standby may take to become synchronous
// before another is tried.
const syncAddTimeout = 30 * time.Second

// firstN renders FIRST n ("a","b").
func firstN(names []string) string {
	if len(names) == 0 {
		return ""
	}
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return fmt.Sprintf("FIRST %d (%s)", len(names), strings.Join(q, ","))
}

// syncNamesFor is synchronous_standby_names for a primary whose committed
// set is set, plus a standby being added.
func syncNamesFor(cfg raftfsm.DynamicConfig, set []string, adding string) string {
	names := append([]string(nil), set...)
	if adding != "" {
		names = append(names, adding)
	}
	if len(names) == 0 {
		if cfg.SynchronousModeStrict {
			return "*"
		}
		return ""
	}
	return firstN(names)
}

// syncStandbyNames is the managed synchronous_standby_names for this
// member in state st (nil when synchronous mode is off: PostgreSQL's
// default then). As primary it covers the committed set plus a standby
// being added; as a standby, what it will need the moment it is promoted
// (the others of the set), so that the first commit after a promotion
// already waits for them.
func syncStandbyNames(st raftfsm.State, self string, asPrimary bool, adding string) *string {
	if !st.Config.SynchronousMode {
		return nil
	}
	var v string
	if asPrimary {
		v = syncNamesFor(st.Config, st.SyncSet, adding)
	} else {
		v = syncNamesFor(st.Config, without(st.SyncSet, self), "")
	}
	return &v
}

func without(set []string, name string) []string {
	var out []string
	for _, s := range set {
		if s != name {
			out = append(out, s)
		}
	}
	return out
}

// manageSync moves the committed synchronous set one step towards the
// healthy standbys, following the ordering above. It never blocks on a
// standby: each step's condition is checked again next round. replicas is
// pg_stat_replication as the last probe saw it; wal the primary's
// position.
func (t *leaderTerm) manageSync(st raftfsm.State, gossip map[string]membership.Member, replicas []pgnode.ReplicaInfo, wal uint64, now time.Time) error {
	cfg := st.Config
	epoch := st.Primary.Epoch
	commit := func(set []string) error {
		sort.Strings(set)
		t.log.Info("synchronous standby set", "members", set)
		return t.raft.Apply(raftfsm.SetSyncSet{Member: t.self, Epoch: epoch, Members: set}, applyTimeout)
	}
	if !cfg.SynchronousMode {
		t.sync = syncAdding{}
		if len(st.SyncSet) > 0 {
			return commit(nil)
		}
		return nil
	}
	healthy := map[string]pgnode.ReplicaInfo{}
	for _, r := range replicas {
		m, member := st.Members[r.ApplicationName]
		// pg_stat_replication keeps saying "streaming" for a standby cut
		// off by a partition that drops packets until wal_sender_timeout
		// (a minute by default), while every commit waits for it. Its
		// gossip goes stale within staleAfter: that is the quicker
		// verdict. Dropping a standby from the set never loses a commit
		// (the FSM changes first); with the set empty and strict mode off
		// commits go on unreplicated-synchronously, and no member is a
		// failover candidate until a standby is back in the set.
		// A standby whose own agent says its PostgreSQL does not answer
		// (hung: its walreceiver's connection stays open while it
		// confirms nothing) goes out too, a few seconds after the hang.
		g, seen := gossip[r.ApplicationName]
		if member && !m.Witness && r.State == "streaming" && r.ApplicationName != t.self && seen && g.Alive &&
			g.Meta.PGState != cluster.StateUnresponsive {
			healthy[r.ApplicationName] = r
		}
	}
	// Remove: the FSM first, the setting next round.
	var keep []string
	for _, m := range st.SyncSet {
		if _, ok := healthy[m]; ok {
			keep = append(keep, m)
		}
	}
	if len(keep) != len(st.SyncSet) {
		t.sync = syncAdding{}
		return commit(keep)
	}
	want := max(cfg.SynchronousNodeCount, 1)
	if len(st.SyncSet) > want {
		return commit(append([]string(nil), st.SyncSet[:want]...))
	}
	// A standby being added: commit it once it is synchronous and caught up.
	if p := t.sync; p.name != "" {
		r, ok := healthy[p.name]
		switch {
		case !ok:
			t.log.Info("synchronous standby candidate went away", "member", p.name)
			t.sync = syncAdding{}
		case r.SyncState == "sync" && p.target == 0:
			t.sync.target = max(wal, 1)
		case r.SyncState == "sync" && r.FlushLSN >= p.target:
			t.sync = syncAdding{}
			return commit(append(append([]string(nil), st.SyncSet...), p.name))
		case now.Sub(p.since) > syncAddTimeout:
			t.log.Warn("standby did not become synchronous in time; trying another", "member", p.name, "sync_state", r.SyncState, "waited", syncAddTimeout)
			t.sync = syncAdding{}
		}
		return nil
	}
	if len(st.SyncSet) >= want {
		return nil
	}
	// Pick the most advanced healthy standby not yet in the set. A
	// standby with nofailover may not be synchronous: a synchronous
	// standby must be promotable.
	var cands []pgnode.ReplicaInfo
	for name, r := range healthy {
		if g, ok := gossip[name]; !st.InSyncSet(name) && !(ok && g.Meta.NoFail) {
			cands = append(cands, r)
		}
	}
	if len(cands) == 0 {
		return nil
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].FlushLSN != cands[j].FlushLSN {
			return cands[i].FlushLSN > cands[j].FlushLSN
		}
		return cands[i].ApplicationName < cands[j].ApplicationName
	})
	t.sync = syncAdding{name: cands[0].ApplicationName, since: now}
	t.log.Info("adding a synchronous standby", "member", t.sync.name)
	return nil
}

// syncStatus says how synchronous replication stands, for `pgha list`.
func syncStatus(st raftfsm.State) string {
	if !st.Config.SynchronousMode {
		return ""
	}
	if len(st.SyncSet) == 0 {
		if st.Config.SynchronousModeStrict {
			return "synchronous mode (strict): no synchronous standby; writes wait for one"
		}
		return "synchronous mode: no synchronous standby; replicating asynchronously"
	}
	return "synchronous mode: synchronous standbys " + strings.Join(st.SyncSet, ", ")
}
