package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgha/pgha/agent/decide"
	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

// The executor: how the HA loop carries out each action decide.Decide
// returns. Actions run in order; the first that fails ends the round (its
// error is the node's reported error until a round succeeds).

// perform carries out one action.
func (l *haLoop) perform(ctx context.Context, act decide.Action, in decide.Input) error {
	switch act.Kind {
	case decide.ActInitClaim:
		id := make([]byte, 8)
		_, _ = rand.Read(id)
		l.log.Info("claiming cluster initialisation")
		return l.raft.Apply(raftfsm.InitCluster{ClusterID: hex.EncodeToString(id), Member: l.cfg.Name, At: time.Now().UTC()}, applyTimeout)

	case decide.ActInitDB:
		l.setState(cluster.StateInitializing)
		l.publish(in.PG, "")
		l.log.Info("initialising PostgreSQL (initdb)")
		start := time.Now()
		l.guard.arm() // initdb starts it as the primary
		sysid, err := l.pg.Bootstrap(ctx, l.desired(in.State, pgnode.RolePrimary, nil))
		if err != nil {
			return fmt.Errorf("initdb: %w", err)
		}
		l.log.Info("PostgreSQL initialised", "system_id", sysid, "took", time.Since(start).Round(time.Millisecond))
		l.status.update(func(s *NodeStatus) { s.SysID = sysid })
		// Tell the others PostgreSQL runs before they learn the system id,
		// so they start cloning without waiting for another gossip round.
		l.publish(l.probe(ctx), "")
		return l.raft.Apply(raftfsm.SetSystemID{SystemID: sysid, Member: l.cfg.Name, Timeline: 1}, applyTimeout)

	case decide.ActRecordSystemID:
		if in.PG.SysID == 0 {
			return errors.New("system identifier of the local data directory unknown")
		}
		return l.raft.Apply(raftfsm.SetSystemID{SystemID: in.PG.SysID, Member: l.cfg.Name, Timeline: 1}, applyTimeout)

	case decide.ActClone:
		return l.clone(ctx, act, in.State)

	case decide.ActRunPrimary:
		if in.PG.Running && !l.pg.Running() {
			return nil // it stopped since we looked: decide again next round
		}
		return l.ensureRunning(ctx, l.desired(in.State, pgnode.RolePrimary, nil))

	case decide.ActRunReplica:
		if in.PG.Running && !l.pg.Running() {
			return nil // it stopped since we looked: decide again next round
		}
		up, err := l.upstream(act.Upstream)
		if err != nil {
			return err
		}
		return l.ensureRunning(ctx, l.desired(in.State, pgnode.RoleReplica, &up))

	case decide.ActFence:
		return l.fence(act.Reason)

	case decide.ActPromote:
		return l.promote(ctx, in.State)

	case decide.ActFailover:
		return l.failover(ctx, in, act.Reason)

	case decide.ActRewind:
		return l.rewind(ctx, act, in.State)

	case decide.ActTransferLeadership:
		if l.term == nil {
			return cluster.ErrNotLeader
		}
		return l.term.transfer(act.Target, act.Reason, time.Now())

	case decide.ActSyncStandbys:
		if l.term == nil {
			return cluster.ErrNotLeader
		}
		return l.term.manageSync(in.State, in.Gossip, l.replicas, in.PG.WAL, time.Now())

	case decide.ActClearDemoting:
		l.log.Warn("clearing the demoting mark of an interrupted switchover")
		return l.raft.Apply(raftfsm.SetDemoting{Member: l.cfg.Name, Epoch: in.State.Primary.Epoch}, applyTimeout)

	case decide.ActEnsureSlots:
		return l.ensureSlots(ctx, in.State)

	case decide.ActRecordLSN:
		return l.recordLSN(in)
	}
	return fmt.Errorf("unknown action %v", act.Kind)
}

// slotsEvery is how often the primary reconciles its replication slots
// when the member set has not changed.
const slotsEvery = 5 * time.Second

// ensureSlots keeps one physical slot per other database member.
func (l *haLoop) ensureSlots(ctx context.Context, st raftfsm.State) error {
	key := strings.Join(st.MemberNames(), ",")
	if time.Since(l.lastSlots) < slotsEvery && l.slotsFor == key {
		return nil
	}
	var want []string
	for _, name := range st.MemberNames() {
		if m := st.Members[name]; name != l.cfg.Name && !m.Witness {
			want = append(want, pgnode.SlotName(name))
		}
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	created, dropped, err := l.pg.EnsureSlots(sctx, want)
	if errors.Is(err, pgnode.ErrConnect) {
		// A fresh connection every slotsEvery is also the probe's check
		// that the postmaster still accepts sessions (the probe's own
		// connection is kept, and outlives a hung postmaster).
		if l.connectFailSince.IsZero() {
			l.connectFailSince = time.Now()
		}
	} else if err == nil {
		l.connectFailSince = time.Time{}
	}
	if err != nil {
		return fmt.Errorf("replication slots: %w", err)
	}
	if len(created)+len(dropped) > 0 {
		l.log.Info("replication slots", "created", created, "dropped", dropped)
	}
	l.lastSlots, l.slotsFor = time.Now(), key
	return nil
}

// lsnEvery is how often the primary commits its WAL position when it
// moved (Patroni keeps /optime/leader the same way): failover measures
// lag against it. lsnKeepalive is how often it commits it unchanged: the
// Raft log write that follows makes a leader whose disk hangs fail its
// leadership confirmations (see fence.go), where an idle leader that
// never writes would not notice.
const (
	lsnEvery     = 2 * time.Second
	lsnKeepalive = 10 * time.Second
)

// recordLSN commits the primary's WAL position: when it moved, at most
// every lsnEvery; unchanged, every lsnKeepalive.
func (l *haLoop) recordLSN(in decide.Input) error {
	if time.Since(l.lastLSNAt) < lsnEvery || in.PG.WAL == 0 {
		return nil
	}
	if r := in.State.PrimaryLSN; r != nil && r.LSN == in.PG.WAL && r.Timeline == in.PG.Timeline && time.Since(l.lastLSNAt) < lsnKeepalive {
		return nil
	}
	l.lastLSNAt = time.Now()
	err := l.raft.Apply(raftfsm.SetPrimaryLSN{
		Member: l.cfg.Name, Epoch: in.State.Primary.Epoch, LSN: in.PG.WAL,
		Timeline: in.PG.Timeline, At: time.Now().UTC(),
	}, applyTimeout)
	if errors.Is(err, raftfsm.ErrRejected) {
		// A new timeline starts below the old one's position on the
		// record only in a bug; log it, do not fail the round.
		l.log.Warn("primary LSN not recorded", "err", err)
		return nil
	}
	return err
}

// upstream is the replication source at addr (host:port), streaming into
// this member's slot.
func (l *haLoop) upstream(addr string) (pgnode.Upstream, error) {
	host, port, err := splitHostPort(addr)
	if err != nil {
		return pgnode.Upstream{}, err
	}
	return pgnode.Upstream{Host: host, Port: port, Slot: pgnode.SlotName(l.cfg.Name)}, nil
}

func splitHostPort(hp string) (string, int, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: %w", hp, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: bad port", hp)
	}
	return h, port, nil
}

// sortedNames returns map keys in order.
func sortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
