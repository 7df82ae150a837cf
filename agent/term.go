package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/raft"
	"github.com/pgha/pgha/agent/decide"
	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/raftfsm"
)

// leaderTerm is what this node does as Raft leader during one term, in
// the way Consul's leader loop does it: the HA loop makes it once the
// term's Barrier has passed (see termFor) and drops it when leadership is
// lost, so none of its bookkeeping outlives the term it belongs to. Only
// the HA loop's goroutine (rounds and jobs) uses it.
//
// It bridges gossip to Raft (reconcile), asks the recorded primary's
// agent whether it lives (askPrimary), hands leadership over (transfer),
// and keeps the synchronous standby set (sync.go).
type leaderTerm struct {
	number  uint64
	self    string
	log     *slog.Logger
	raft    raftMembers
	allowed func(name string, m membership.Member) bool
	// ask asks a member's API for its health (askPrimary).
	ask func(ctx context.Context, addr string) (api.HealthInfo, error)
	// notify tells a member something it cannot learn otherwise (why it
	// is not added); best effort.
	notify func(member, text string)
	// noticed: when each refused member was last told why.
	noticed map[string]time.Time

	// nonvoters: when this term first saw each non-voter (promoted to
	// voter once it has caught up for nonvoterSettle).
	nonvoters map[string]time.Time
	// refused: the last refusal logged per member (join without proof,
	// a failed add), so a refusal retried every round is logged once.
	refused map[string]string
	// lastTransfer: when leadership was last handed over (at most every
	// transferEvery).
	lastTransfer time.Time
	// sync is the synchronous standby being added, if any.
	sync syncAdding
	// failed: the failed transfers in a row per target (askPrimary).
	failed map[string]*failedTransfers
}

func newLeaderTerm(number uint64, a *Agent) *leaderTerm {
	return &leaderTerm{
		number: number, self: a.cfg.Name, log: a.log.With("term", number), raft: a.raft,
		allowed: a.joinAllowed,
		ask: func(ctx context.Context, addr string) (api.HealthInfo, error) {
			h, _, err := a.apiClient(addr).Health(ctx)
			return h, err
		},
		notify: func(member, text string) {
			if err := a.gossip.Notify(member, text); err != nil {
				a.log.Debug("notify", "member", member, "err", err)
			}
		},
		nonvoters: map[string]time.Time{}, refused: map[string]string{}, noticed: map[string]time.Time{},
		failed: map[string]*failedTransfers{},
	}
}

// noticeEvery is how often a refused member is told why again: it may
// have restarted with a fixed configuration and lost the last notice.
const noticeEvery = 30 * time.Second

// tell sends name the reason it is refused, at most every noticeEvery.
func (t *leaderTerm) tell(name, reason string, now time.Time) {
	if t.notify == nil || now.Sub(t.noticed[name]) < noticeEvery {
		return
	}
	t.noticed[name] = now
	t.notify(name, reason)
}

// nonvoterSettle is how long a non-voter must have had Raft state before
// it is made a voter.
const nonvoterSettle = 2 * time.Second

// reconcile is the leader's bridge from gossip to Raft: it adds nodes
// that ask to join (first as non-voters, so an empty node never counts in
// a quorum), promotes them to voters once they have caught up, and keeps
// each member's addresses in the FSM current. It never removes anyone
// because gossip says they are gone: that is an operator's call.
func (t *leaderTerm) reconcile(gossip map[string]membership.Member, servers []raft.Server, now time.Time) {
	inRaft := map[string]raft.Server{}
	for _, s := range servers {
		inRaft[string(s.ID)] = s
	}
	st := t.raft.ClusterState()
	for _, name := range sortedNames(gossip) {
		m := gossip[name]
		if m.Meta.Leaving || !m.Alive {
			continue
		}
		srv, ok := inRaft[name]
		if !ok {
			if !m.Meta.Join || m.Meta.Raft == "" {
				continue
			}
			if !t.allowed(name, m) {
				if t.refuseOnce(name, m.Meta.JoinProof+"|"+m.Meta.Raft) {
					t.log.Warn("refusing to add a member: it did not prove it holds this cluster's API credentials (api.auth / api.token must match)",
						"member", name, "raft", m.Meta.Raft, "gossip", m.Addr)
				}
				t.tell(name, "not added to the cluster: this node did not prove it holds the cluster's API credentials; api.auth / api.token must be the same as on the other members", now)
				continue
			}
			t.log.Info("adding member to raft as non-voter", "member", name, "raft", m.Meta.Raft)
			if err := t.raft.AddNonvoter(name, m.Meta.Raft, applyTimeout); err != nil {
				// Retried every round: log a failure once per distinct reason
				// (a node from another CA is refused each second).
				if t.refuseOnce(name, err.Error()) {
					t.log.Warn("add non-voter", "member", name, "err", err)
				}
				t.tell(name, "not added to the cluster: adding it to Raft failed: "+err.Error(), now)
				continue
			}
			delete(t.refused, name)
			t.nonvoters[name] = now
			t.upsertMember(st, name, m)
			continue
		}
		if srv.Suffrage == raft.Nonvoter && m.Meta.HasRaft {
			since, seen := t.nonvoters[name]
			if !seen {
				t.nonvoters[name], since = now, now
			}
			if now.Sub(since) > nonvoterSettle {
				t.log.Info("promoting member to voter", "member", name)
				if err := t.raft.AddVoter(name, string(srv.Address), applyTimeout); err != nil {
					t.log.Warn("promote to voter", "member", name, "err", err)
				} else {
					delete(t.nonvoters, name)
				}
			}
		}
		t.upsertMember(st, name, m)
	}
}

// refuseOnce records reason for name and reports whether it is new.
func (t *leaderTerm) refuseOnce(name, reason string) bool {
	if t.refused[name] == reason {
		return false
	}
	t.refused[name] = reason
	return true
}

// forget drops a removed member's bookkeeping.
func (t *leaderTerm) forget(name string) {
	delete(t.nonvoters, name)
	delete(t.refused, name)
	delete(t.noticed, name)
}

// upsertMember records a member's addresses in the FSM when they changed.
func (t *leaderTerm) upsertMember(st raftfsm.State, name string, g membership.Member) {
	want := raftfsm.Member{
		Name: name, RaftAddr: g.Meta.Raft, GossipAddr: g.Addr, APIAddr: g.Meta.API,
		PGAddr: g.Meta.PG, Witness: g.Meta.Witness,
	}
	if cur, ok := st.Members[name]; ok {
		want.JoinedAt = cur.JoinedAt
		if cur == want {
			return
		}
	} else {
		want.JoinedAt = time.Now().UTC()
	}
	if err := t.raft.Apply(raftfsm.UpsertMember{Member: want}, applyTimeout); err != nil {
		t.log.Warn("record member", "member", name, "err", err)
	}
}

// askTimeout bounds the leader's question to the old primary's agent.
const askTimeout = 300 * time.Millisecond

// askPrimary asks the recorded primary's agent, through its REST API,
// whether it is alive. Only an answer from that very member counts, and
// a member that says it yields counts as silent.
func (t *leaderTerm) askPrimary(ctx context.Context, st raftfsm.State) decide.OldPrimary {
	m, ok := st.Members[st.Primary.Member]
	if !ok || m.APIAddr == "" {
		return decide.OldPrimarySilent
	}
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	if f := t.failed[st.Primary.Member]; f != nil && time.Since(f.last) > failedForget {
		delete(t.failed, st.Primary.Member)
	}
	if f := t.failed[st.Primary.Member]; f != nil && f.n >= maxFailedTransfers {
		// Alive (its API answers) but unable to lead: a one-way partition,
		// its Raft port blocked, its Raft loop stuck. Handing leadership
		// back forever would leave the cluster without a primary; not
		// being leader, it has fenced itself, so it counts as lost.
		if !f.logged {
			t.log.Warn("the primary's agent answers but it could not take Raft leadership; treating it as lost",
				"primary", st.Primary.Member, "failed_transfers", f.n)
			f.logged = true
		}
		return decide.OldPrimarySilent
	}
	h, err := t.ask(ctx, m.APIAddr)
	if err == nil && h.Name == st.Primary.Member && !h.Yield {
		return decide.OldPrimaryAlive
	}
	return decide.OldPrimarySilent
}

// maxFailedTransfers is how many leadership transfers in a row may fail
// to make a live record holder leader before it counts as lost.
const maxFailedTransfers = 3

// failedForget is how long after the last failed transfer the count is
// forgotten, so a holder that recovers gets leadership back.
const failedForget = 30 * time.Second

// failedTransfers counts the leadership transfers in a row to one target
// that did not make it leader (see askPrimary).
type failedTransfers struct {
	n      int
	last   time.Time // when the last of them failed
	logged bool      // "treating it as lost" was said
}

// transferEvery is how often the HA loop may hand leadership over: a
// transfer takes a moment to show in the FSM and gossip.
const transferEvery = 2 * time.Second

// transfer hands Raft leadership to target, at most every transferEvery.
func (t *leaderTerm) transfer(target, reason string, now time.Time) error {
	if now.Sub(t.lastTransfer) < transferEvery {
		return nil
	}
	t.lastTransfer = now
	t.log.Info("transferring raft leadership", "to", target, "reason", reason)
	err := t.transferTo(target)
	if err != nil {
		f := t.failed[target]
		if f == nil {
			f = &failedTransfers{}
			t.failed[target] = f
		}
		f.n, f.last = f.n+1, now
		return err
	}
	delete(t.failed, target)
	return nil
}

// transferTo hands Raft leadership to a voter of the configuration and
// checks that it won.
func (t *leaderTerm) transferTo(name string) error {
	return transferLeadership(t.raft, name)
}

// transferLeadership hands leadership to voter name (raftfsm checks the
// winner: hashicorp/raft may report success while another node won).
func transferLeadership(r raftMembers, name string) error {
	servers, err := r.Servers()
	if err != nil {
		return err
	}
	for _, s := range servers {
		if string(s.ID) != name {
			continue
		}
		if s.Suffrage != raft.Voter {
			return fmt.Errorf("cannot hand leadership to %s: not a voter", name)
		}
		return r.TransferLeadership(name, string(s.Address), 5*time.Second)
	}
	return fmt.Errorf("cannot hand leadership to %s: not in the raft configuration", name)
}
