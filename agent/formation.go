package agent

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/pgha/pgha/membership"
)

// bootstrapSettle is how long the candidate set must stay the same on
// every candidate before the chosen node bootstraps.
const bootstrapSettle = 300 * time.Millisecond

// formation forms a new cluster without any external service: when
// exactly bootstrap_expect nodes with no Raft state see each other, agree
// on that set (each publishes a hash of the set it sees), and the set has
// been stable for bootstrapSettle, the node with the smallest name
// bootstraps Raft with all of them as voters. The others wait for its
// leader to contact them. If any visible node already has Raft state, the
// cluster exists and nobody bootstraps: this node asks to join instead.
// Owned by the HA loop.
type formation struct {
	seenSet   string // the candidate set seen last round
	seenSince time.Time
}

// formationInput is what one formation step looks at.
type formationInput struct {
	Self     string
	Cluster  string
	Expect   int  // bootstrap_expect (0: join an existing cluster)
	HadState bool // Raft state was on disk at start
	Members  []membership.Member
	// Allowed says whether a candidate proved it holds the cluster's API
	// credentials (see joinAllowed).
	Allowed func(name string, m membership.Member) bool
	Now     time.Time
}

// formationStep is the outcome of one step: Bootstrap, when not nil, is
// the voter set to bootstrap with now; Join asks to be added to an
// existing cluster; Wait says why nothing happens yet.
type formationStep struct {
	Bootstrap []raft.Server
	Join      bool
	Wait      string
}

// step decides one round of formation.
func (f *formation) step(in formationInput) formationStep {
	if in.Expect == 0 {
		return formationStep{Wait: "waiting for a leader to add this node (pgha join ADDR, or gossip.join)"}
	}
	if in.HadState {
		return formationStep{Wait: "raft state on disk: waiting for the other members"}
	}
	var cands []membership.Member
	var others []string
	for _, m := range in.Members {
		if !m.MetaOK || m.Meta.Cluster != in.Cluster {
			continue
		}
		if m.Meta.HasRaft {
			return formationStep{Join: true, Wait: fmt.Sprintf("cluster already formed (%s has Raft state): asking to join", m.Name)}
		}
		if m.Meta.Leaving {
			continue
		}
		if m.Meta.Expect != in.Expect {
			others = append(others, fmt.Sprintf("%s (bootstrap_expect=%d)", m.Name, m.Meta.Expect))
			continue
		}
		if in.Allowed != nil && !in.Allowed(m.Name, m) {
			// Forming a cluster makes every candidate a voter: the same
			// proof of the API credentials as a join.
			others = append(others, fmt.Sprintf("%s (no proof of this cluster's API credentials)", m.Name))
			continue
		}
		cands = append(cands, m)
	}
	names := make([]string, len(cands))
	for i, c := range cands {
		names[i] = c.Name
	}
	set := strings.Join(names, ",")
	if set != f.seenSet {
		f.seenSet, f.seenSince = set, in.Now
	}
	expect := in.Expect
	switch {
	case len(others) > 0 && len(cands) < expect:
		return formationStep{Wait: fmt.Sprintf("%d of %d nodes visible; these disagree on bootstrap_expect: %s", len(cands), expect, strings.Join(others, ", "))}
	case len(cands) < expect:
		return formationStep{Wait: fmt.Sprintf("waiting for the cluster to form: %d of %d nodes visible (%s)", len(cands), expect, set)}
	case len(cands) > expect:
		return formationStep{Wait: fmt.Sprintf("%d nodes visible but bootstrap_expect is %d: refusing to guess which ones form the cluster; fix bootstrap_expect or start the extra nodes with bootstrap_expect: 0", len(cands), expect)}
	case names[0] != in.Self:
		return formationStep{Wait: fmt.Sprintf("waiting for %s to bootstrap the cluster", names[0])}
	}
	mine := f.seenHash()
	for _, c := range cands {
		if c.Name != in.Self && c.Meta.Seen != mine {
			return formationStep{Wait: fmt.Sprintf("waiting for %s to see the same %d nodes", c.Name, expect)}
		}
	}
	if in.Now.Sub(f.seenSince) < bootstrapSettle {
		return formationStep{Wait: "candidate set seen; letting it settle"}
	}
	servers := make([]raft.Server, 0, len(cands))
	for _, c := range cands {
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(c.Name), Address: raft.ServerAddress(c.Meta.Raft)})
	}
	return formationStep{Bootstrap: servers}
}

// seenHash is what this node publishes of the candidate set it sees.
func (f *formation) seenHash() string {
	if f.seenSet == "" {
		return ""
	}
	h := fnv.New64a()
	h.Write([]byte(f.seenSet))
	return strconv.FormatUint(h.Sum64(), 36)
}

// formationStep runs one step of formation and carries it out; it
// returns why the node is still waiting ("" once bootstrapped).
func (l *haLoop) formationStep() string {
	s := l.form.step(formationInput{
		Self: l.cfg.Name, Cluster: l.cfg.Cluster, Expect: l.cfg.BootstrapExpect,
		HadState: l.raft.HadState(), Members: l.gossip.Members(), Allowed: l.joinAllowed, Now: time.Now(),
	})
	if s.Join {
		l.wantJoin.Store(true)
	}
	if s.Bootstrap == nil {
		return s.Wait
	}
	l.log.Info("bootstrapping the cluster", "voters", l.form.seenSet)
	if err := l.raft.Bootstrap(s.Bootstrap); err != nil {
		l.log.Error("bootstrap failed", "err", err)
		return "bootstrap failed: " + err.Error()
	}
	return ""
}

// startFormation puts a node without Raft state on fast Raft timers: a
// new cluster has no leader to lose, so its first election may be quick.
func (l *haLoop) startFormation() {
	if l.raft.HadState() {
		return
	}
	if err := l.raft.SetFormationTimeouts(true); err != nil {
		l.log.Warn("fast first election", "err", err)
		return
	}
	l.fastTimers = true
}

// endFormation restores the configured Raft timers once a leader exists.
func (l *haLoop) endFormation() {
	if !l.fastTimers {
		return
	}
	if id, _ := l.raft.Leader(); id == "" {
		return
	}
	if err := l.raft.SetFormationTimeouts(false); err != nil {
		l.log.Warn("restore raft timeouts", "err", err)
	}
	l.fastTimers = false
}
