package decide

import (
	"fmt"
	"sort"
	"strings"

	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/membership"
	"github.com/pgha/pgha/raftfsm"
)

// The one eligibility rule. Automatic failover, `pgha switchover`, `pgha
// failover` and the proxy's read port all ask it, so they cannot drift
// apart: a member may become the primary only when it
//
//   - is a member of the cluster, reachable (its status is fresh), not a
//     witness and not already the primary;
//   - has no nofailover tag and is a Raft voter: only a voter can win the
//     leadership that a primary needs (safety rule 1), so promising the
//     record to a non-voter would leave the cluster without a primary;
//   - runs PostgreSQL as a replica (streaming, when the caller asks);
//   - is in the committed synchronous set when synchronous_mode is on:
//     nobody else is known to hold every acknowledged commit;
//   - is on the primary record's timeline: a replica on an older one may
//     hold WAL the new history never had (diverged), and one on a newer
//     one is not of this cluster's history at all;
//   - is within the lag bound of the reference position, measured as
//     (timeline, LSN): an LSN is comparable only on the same timeline or
//     a later one, never across a fork the member did not follow.
//
// Reads need less: reachable, a streaming replica without noloadbalance,
// on the record's timeline and within proxy.max_replica_lag.

// Position is a WAL position on a timeline.
type Position struct {
	Timeline uint32
	LSN      uint64
}

// Behind reports how many bytes p trails ref, and false when the two are
// not comparable: p is on an older timeline than ref, so its LSN may
// count WAL of a history ref does not share. Unknown timelines (0)
// compare by LSN alone.
func Behind(ref, p Position) (int64, bool) {
	if ref.Timeline != 0 && p.Timeline != 0 && p.Timeline < ref.Timeline {
		return 0, false
	}
	if ref.LSN > p.LSN {
		return int64(ref.LSN - p.LSN), true
	}
	return 0, true
}

// MemberView is a member as the eligibility rule judges it: its gossip
// status (or, for the judging node itself, its own fresher probe) and its
// Raft suffrage.
type MemberView struct {
	Name      string
	Reachable bool // its status is fresh (see agent.staleAfter)
	// Voter: a Raft voter. VoterKnown is false when the Raft
	// configuration could not be read; the rule then refuses promotion.
	Voter, VoterKnown bool
	Witness           bool
	NoFailover        bool
	NoLoadBalance     bool
	Priority          int
	Role              cluster.Role
	State             cluster.PGState
	Position          Position // timeline, and the most WAL it holds (received or replayed)
}

// Purpose says what a member is judged for.
type Purpose int

const (
	// ForPromotion: automatic failover, and the candidate of a manual one.
	ForPromotion Purpose = iota
	// ForSwitchover: promotion of a streaming replica while the primary
	// runs (the candidate must stream: it receives the last WAL).
	ForSwitchover
	// ForReads: the proxy's read port.
	ForReads
)

// Rule is the eligibility rule's parameters for one question.
type Rule struct {
	Purpose Purpose
	// Reference is the primary position lag is measured against:
	// the last recorded one (FSM) for a failover, the freshest known for
	// a switchover and for reads.
	Reference Position
	// MaxLag bounds how far behind Reference a member may be; negative
	// skips the bound (an operator's --force).
	MaxLag int64
}

// PromotionRule is the rule for promotion in state st, within
// maximum_lag_on_failover of a reference position. A failover (the
// primary is gone) measures against the last position committed to the
// FSM: every node reads the same one, so every node ranks alike and a
// leader never hands leadership to a node that judges itself otherwise.
// A switchover (the primary runs, and the judge is its own leader)
// measures against its freshest position (see PrimaryPosition).
func PromotionRule(st raftfsm.State, gossip map[string]membership.Member, p Purpose, force bool) Rule {
	ref := RecordedPosition(st)
	if p == ForSwitchover {
		ref = PrimaryPosition(st, gossip)
	}
	r := Rule{Purpose: p, Reference: ref, MaxLag: st.Config.MaximumLagOnFailover}
	if force {
		// An operator's --force takes a replica that is behind, or not
		// streaming (a switchover still waits for it to receive the
		// primary's last WAL), never one that breaks another rule.
		r.Purpose, r.MaxLag = ForPromotion, -1
	}
	return r
}

// RecordedPosition is the last primary position committed to the FSM
// (zero when none).
func RecordedPosition(st raftfsm.State) Position {
	if st.PrimaryLSN == nil {
		return Position{}
	}
	return Position{Timeline: st.PrimaryLSN.Timeline, LSN: st.PrimaryLSN.LSN}
}

// Later returns the later of two positions: the newer timeline, or on
// the same timeline the higher LSN.
func Later(a, b Position) Position {
	switch {
	case a.Timeline != b.Timeline && a.Timeline != 0 && b.Timeline != 0:
		if a.Timeline > b.Timeline {
			return a
		}
		return b
	case a.LSN >= b.LSN:
		return a
	}
	return b
}

// Eligible applies the rule to m in state st: nil when m qualifies, else
// why not.
func Eligible(st raftfsm.State, m MemberView, r Rule) *cluster.IneligibleError {
	no := func(format string, args ...any) *cluster.IneligibleError {
		return &cluster.IneligibleError{Member: m.Name, Reason: fmt.Sprintf(format, args...)}
	}
	promote := r.Purpose != ForReads
	if _, ok := st.Members[m.Name]; !ok {
		return no("is not a member of the cluster")
	}
	if st.IsPrimary(m.Name) {
		return no("is the primary")
	}
	switch {
	case !m.Reachable:
		return no("is not reachable (no fresh status)")
	case m.Witness:
		return no("is a witness (no PostgreSQL)")
	case promote && m.NoFailover:
		return no("has the nofailover tag")
	case promote && !m.VoterKnown:
		return no("has an unknown Raft suffrage (the Raft configuration could not be read)")
	case promote && !m.Voter:
		return no("is not a Raft voter (yet): only a voter can lead, and the primary must")
	case m.Role != cluster.RoleReplica || !m.State.Up():
		return no("is not a running replica (%s)", describe(m.Role, m.State))
	case !promote && m.NoLoadBalance:
		return no("has the noloadbalance tag")
	case promote && st.Config.SynchronousMode && !st.InSyncSet(m.Name):
		return no("is not in the synchronous set (%s): it may miss acknowledged commits", setText(st.SyncSet))
	case r.Purpose != ForPromotion && m.State != cluster.StateStreaming:
		return no("is not streaming (%s)", m.State)
	}
	if st.Primary != nil && st.Primary.Timeline != 0 {
		tl := st.Primary.Timeline
		newest := tl
		if !promoted(st) {
			// The holder may have promoted (one timeline up) and died
			// before it could record it; replicas may have followed it.
			newest = tl + 1
		}
		switch {
		case m.Position.Timeline == 0:
			return no("reports no timeline (the cluster is on %d)", tl)
		case m.Position.Timeline < tl:
			return no("is on timeline %d, older than the cluster's %d", m.Position.Timeline, tl)
		case m.Position.Timeline > newest:
			return no("is on timeline %d, newer than the cluster's %d: not this cluster's history", m.Position.Timeline, tl)
		}
	}
	if r.MaxLag >= 0 {
		lag, ok := Behind(r.Reference, m.Position)
		switch {
		case !ok:
			return no("is on timeline %d, older than the recorded primary position's %d", m.Position.Timeline, r.Reference.Timeline)
		case lag > r.MaxLag:
			bound := "maximum_lag_on_failover"
			if !promote {
				bound = "proxy.max_replica_lag"
			}
			return no("is %d bytes behind the primary (%s %d)", lag, bound, r.MaxLag)
		}
	}
	return nil
}

// promoted reports whether the record holder has recorded its promotion
// in the current epoch (the first primary, which initdb made, has no
// history entry and needs none).
func promoted(st raftfsm.State) bool {
	for i := len(st.History) - 1; i >= 0; i-- {
		if h := st.History[i]; h.Epoch == st.Primary.Epoch {
			return !h.PromotedAt.IsZero()
		}
	}
	return true
}

func describe(r cluster.Role, s cluster.PGState) string {
	if r == cluster.RoleNone {
		return string(s)
	}
	return string(r) + " " + string(s)
}

func setText(set []string) string {
	if len(set) == 0 {
		return "empty"
	}
	return strings.Join(set, ", ")
}

// ViewOf builds the MemberView of gossip member g. voters is the Raft
// configuration's voter set (nil: unknown).
func ViewOf(g membership.Member, voters map[string]bool) MemberView {
	m := g.Meta
	v := MemberView{
		Name: g.Name, Reachable: g.Alive && g.MetaOK,
		Witness: m.Witness, NoFailover: m.NoFail, NoLoadBalance: m.NoLB, Priority: m.Priority,
		Role: m.Role, State: m.PGState,
		Position: Position{Timeline: m.Timeline, LSN: max(m.Recv, m.WAL)},
	}
	if voters != nil {
		v.Voter, v.VoterKnown = voters[g.Name], true
	}
	return v
}

// Views builds the views of every member of st from the gossip members
// (members without gossip are unreachable), replacing this node's own
// entry with self when given (its probe is fresher than its gossip).
func Views(st raftfsm.State, gossip map[string]membership.Member, voters map[string]bool, self *MemberView) []MemberView {
	out := make([]MemberView, 0, len(st.Members))
	for _, name := range st.MemberNames() {
		var v MemberView
		switch g, ok := gossip[name]; {
		case self != nil && name == self.Name:
			v = *self
		case ok:
			v = ViewOf(g, voters)
		default:
			v = MemberView{Name: name, Witness: st.Members[name].Witness}
			if voters != nil {
				v.Voter, v.VoterKnown = voters[name], true
			}
		}
		out = append(out, v)
	}
	return out
}

// Best ranks the eligible members of views and returns the best one, or
// "" and why nobody qualifies. Highest failover priority wins, then the
// highest (timeline, LSN), then the smallest name, so that every node
// ranks alike.
func Best(st raftfsm.State, views []MemberView, r Rule) (string, string) {
	var cands []MemberView
	var why []string
	for _, v := range views {
		if v.Witness || st.IsPrimary(v.Name) {
			continue // never candidates, and not worth a reason
		}
		if err := Eligible(st, v, r); err != nil {
			why = append(why, err.Error())
			continue
		}
		cands = append(cands, v)
	}
	if len(cands) == 0 {
		sort.Strings(why)
		if len(why) == 0 {
			why = []string{"no other database member"}
		}
		return "", strings.Join(why, "; ")
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if a.Priority != b.Priority {
			return a.Priority > b.Priority
		}
		if a.Position.Timeline != b.Position.Timeline {
			return a.Position.Timeline > b.Position.Timeline
		}
		if a.Position.LSN != b.Position.LSN {
			return a.Position.LSN > b.Position.LSN
		}
		return a.Name < b.Name
	})
	return cands[0].Name, ""
}

// PrimaryPosition is the primary's last known position: the later of the
// one last committed to the FSM (every 2 s) and the one the primary last
// gossiped (every second, and still the last word of a primary that just
// died); zero when neither is known. Promotion and reads both measure
// lag against it, so a candidate is never judged against a position older
// than one the cluster has seen.
func PrimaryPosition(st raftfsm.State, gossip map[string]membership.Member) Position {
	if st.Primary == nil {
		return Position{}
	}
	p := RecordedPosition(st)
	if g, ok := gossip[st.Primary.Member]; ok && g.MetaOK && g.Meta.Role == cluster.RolePrimary && g.Meta.WAL != 0 {
		p = Later(p, Position{Timeline: g.Meta.Timeline, LSN: g.Meta.WAL})
	}
	return p
}
