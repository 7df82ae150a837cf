package agent

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

// Synchronous replication, run by the primary's agent every round.
//
// The committed synchronous set (FSM SyncSet) is what failover trusts:
// with synchronous_mode on, only its members may be promoted. So it must
// never name a standby that could miss an acknowledged commit:
//
//   - to add a standby, synchronous_standby_names changes first (FIRST n
//     over the old set plus the newcomer); the newcomer enters the FSM set
//     only once pg_stat_replication shows it 'sync' and its flush LSN has
//     passed the primary's position at the time of the change;
//   - to remove one, the FSM set changes first, then the setting.
//
// With no synchronous standby available, strict mode keeps the primary
// waiting for any standby ('*': writes block rather than being acked by
// the primary alone); otherwise replication falls back to asynchronous
// and `pgha list` says so.

// syncPending is a standby being added: waiting for it to be 'sync'.
type syncPending struct {
	name   string
	target uint64 // primary WAL position when the setting changed
}

// quoteNames renders FIRST n ("a","b").
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

// applyDynamic hands the FSM's dynamic parameters and, on the primary in
// synchronous mode, the managed synchronous_standby_names to pgnode. The
// next WriteConfig writes them.
func (a *Agent) applyDynamic(st raftfsm.State, primary bool) {
	if a.pg == nil {
		return
	}
	var names *string
	if st.Config.SynchronousMode && primary {
		adding := ""
		if a.syncAdding != nil {
			adding = a.syncAdding.name
		}
		v := syncNamesFor(st.Config, st.SyncSet, adding)
		names = &v
	} else if st.Config.SynchronousMode {
		// A standby: what it will need the moment it is promoted.
		v := syncNamesFor(st.Config, without(st.SyncSet, a.cfg.Name), "")
		names = &v
	}
	if bad := a.pg.SetDynamic(st.Config.Parameters, names); len(bad) > 0 && strings.Join(bad, ",") != a.badParams {
		a.badParams = strings.Join(bad, ",")
		a.log.Warn("ignoring dynamic parameters pgha manages itself", "parameters", bad)
	}
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
// standby: each step's condition is checked again next round.
func (a *Agent) manageSync(ctx context.Context, in Input) error {
	st := in.State
	cfg := st.Config
	epoch := st.Primary.Epoch
	commit := func(set []string) error {
		sort.Strings(set)
		a.log.Info("synchronous standby set", "members", set)
		return a.raft.Apply(raftfsm.SetSyncSet{Member: a.cfg.Name, Epoch: epoch, Members: set}, applyTimeout)
	}
	if !cfg.SynchronousMode {
		a.syncAdding = nil
		if len(st.SyncSet) > 0 {
			return commit(nil)
		}
		return nil
	}
	replicas := a.lastReplicas()
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
		g, seen := in.Gossip[r.ApplicationName]
		if member && !m.Witness && r.State == "streaming" && r.ApplicationName != a.cfg.Name && seen && g.Alive {
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
		a.syncAdding = nil
		return commit(keep)
	}
	want := cfg.SynchronousNodeCount
	if want < 1 {
		want = 1
	}
	if len(st.SyncSet) > want {
		return commit(append([]string(nil), st.SyncSet[:want]...))
	}
	// A standby being added: commit it once it is synchronous and caught up.
	if p := a.syncAdding; p != nil {
		r, ok := healthy[p.name]
		switch {
		case !ok:
			a.log.Info("synchronous standby candidate went away", "member", p.name)
			a.syncAdding = nil
		case r.SyncState == "sync" && r.FlushLSN >= p.target:
			a.syncAdding = nil
			return commit(append(append([]string(nil), st.SyncSet...), p.name))
		case time.Since(a.syncAddingSince) > 30*time.Second:
			a.log.Warn("standby did not become synchronous in 30s; trying another", "member", p.name, "sync_state", r.SyncState)
			a.syncAdding = nil
		}
		return nil
	}
	if len(st.SyncSet) >= want {
		return nil
	}
	// Pick the most advanced healthy standby not yet in the set.
	var cands []pgnode.ReplicaInfo
	for name, r := range healthy {
		if !st.InSyncSet(name) && !a.noSync(name, in) {
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
	a.syncAdding = &syncPending{name: cands[0].ApplicationName, target: in.PG.WAL}
	a.syncAddingSince = time.Now()
	a.log.Info("adding a synchronous standby", "member", a.syncAdding.name)
	return nil
}

// noSync reports whether a member may not be synchronous (it has the
// nofailover tag: a synchronous standby must be promotable).
func (a *Agent) noSync(name string, in Input) bool {
	g, ok := in.Gossip[name]
	return ok && g.Meta.NoFail
}

// lastReplicas returns pg_stat_replication as the last probe saw it.
func (a *Agent) lastReplicas() []pgnode.ReplicaInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]pgnode.ReplicaInfo(nil), a.replicas...)
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
