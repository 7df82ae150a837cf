package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/pgnode"
)

// checkInput is everything the operator's check looks at, gathered
// first so that evaluateCheck is a pure function (unit-tested).
type checkInput struct {
	Now    time.Time
	Health api.HealthInfo
	// RaftContact is the time since the leader was heard from (0 on the
	// leader, negative when never).
	RaftContact time.Duration
	Initialized bool
	Witness     bool
	// Writable names the members reporting PostgreSQL accepting writes.
	Writable []string
	// Replicas are the members that should stream from this primary
	// (database members other than this one).
	Replicas []string
	// SyncSet is the committed synchronous standby set ("" when off).
	SyncMode bool
	SyncSet  []string
	// Inspect is the SQL inspection; InspectErr why it failed.
	Inspect    *pgnode.Inspection
	InspectErr string
}

// checkCacheFor is how long an inspection is reused: GET /check may be
// open to anyone (health-style), and each inspection costs a superuser
// connection; those must stay free for failover work.
const checkCacheFor = time.Second

// checkCache is the last inspection, shared by the API's goroutines.
type checkCache struct {
	mu sync.Mutex // one inspection at a time
	in checkInput
	at time.Time
}

// Check runs the operator's health check: `pgha check`, Nagios, cron.
// One inspection at a time, reused for checkCacheFor.
func (a *Agent) Check(ctx context.Context, o api.CheckOptions) api.CheckResult {
	a.check.mu.Lock()
	defer a.check.mu.Unlock()
	if time.Since(a.check.at) < checkCacheFor {
		return evaluateCheck(a.check.in, o)
	}
	a.check.in, a.check.at = a.gatherCheck(ctx), time.Now()
	return evaluateCheck(a.check.in, o)
}

func (a *Agent) gatherCheck(ctx context.Context) checkInput {
	st := a.raft.ClusterState()
	in := checkInput{
		Now:         time.Now(),
		Health:      a.Health(),
		RaftContact: -1,
		Initialized: st.Primary != nil,
		Witness:     a.cfg.Witness,
		Writable:    a.Status().Writable,
		SyncMode:    st.Config.SynchronousMode,
		SyncSet:     st.SyncSet,
	}
	if a.raft.IsLeader() {
		in.RaftContact = 0
	} else if lc := a.raft.LastContact(); !lc.IsZero() {
		in.RaftContact = time.Since(lc)
	}
	for name, m := range st.Members {
		if name != a.cfg.Name && !m.Witness {
			in.Replicas = append(in.Replicas, name)
		}
	}
	slices.Sort(in.Replicas)
	if a.pg != nil && in.Health.PGRunning && in.Health.State != cluster.StateUnresponsive {
		insp, err := a.pg.Inspect(ctx)
		if err != nil {
			in.InspectErr = err.Error()
		} else {
			in.Inspect = &insp
		}
	}
	return in
}

// Raft contact thresholds: a follower normally hears from the leader
// every heartbeat (well under a second).
const (
	raftContactWarn = 3 * time.Second
	raftContactCrit = 10 * time.Second
)

func evaluateCheck(in checkInput, o api.CheckOptions) api.CheckResult {
	h := in.Health
	res := api.CheckResult{Name: h.Name, Role: h.Role}
	add := func(component, status, format string, args ...any) {
		res.Checks = append(res.Checks, api.CheckItem{Component: component, Status: status, Message: fmt.Sprintf(format, args...)})
	}

	// The agent: its loop runs, and says nothing is wrong.
	switch age := in.Now.Sub(h.LoopAt); {
	case h.LoopAt.IsZero():
		add("agent", api.CheckCritical, "the HA loop has not run yet")
	case age > api.LivenessWindow:
		add("agent", api.CheckCritical, "the HA loop last ran %s ago", age.Round(time.Second))
	case h.Error != "":
		add("agent", api.CheckCritical, "%s", h.Error)
	case h.Waiting != "":
		add("agent", api.CheckWarning, "%s", h.Waiting)
	default:
		add("agent", api.CheckOK, "HA loop ran %s ago", age.Round(time.Millisecond))
	}

	// Raft: a leader is known and heard from.
	switch c := in.RaftContact; {
	case h.Leader == "":
		add("raft", api.CheckCritical, "no Raft leader known (state %s); is a quorum of members up?", h.Raft)
	case c == 0:
		add("raft", api.CheckOK, "leader")
	case c < 0 || c > raftContactCrit:
		add("raft", api.CheckCritical, "%s, leader %s not heard from in %s", h.Raft, h.Leader, contactText(c))
	case c > raftContactWarn:
		add("raft", api.CheckWarning, "%s, leader %s last heard from %s ago", h.Raft, h.Leader, c.Round(time.Millisecond))
	default:
		add("raft", api.CheckOK, "%s, leader %s", strings.ToLower(h.Raft), h.Leader)
	}

	// Exactly one writable member in the whole cluster.
	switch w := in.Writable; {
	case len(w) > 1:
		add("writable", api.CheckCritical, "%d members accept writes: %s (split brain)", len(w), strings.Join(w, ", "))
	case len(w) == 0 && in.Initialized:
		add("writable", api.CheckCritical, "no member accepts writes")
	case len(w) == 0:
		add("writable", api.CheckWarning, "cluster not initialized yet")
	default:
		add("writable", api.CheckOK, "%s accepts writes", w[0])
	}

	if in.Witness {
		add("postgresql", api.CheckOK, "witness: no PostgreSQL")
		return finish(res)
	}
	if !h.PGRunning {
		add("postgresql", api.CheckCritical, "PostgreSQL is not running (%s)", h.State)
		return finish(res)
	}
	if h.State == cluster.StateUnresponsive {
		// Not inspected: every query would wait out its timeout.
		add("postgresql", api.CheckCritical, "PostgreSQL runs but does not answer its agent's probe (hung? a primary is failed over after primary_unresponsive_timeout)")
		return finish(res)
	}
	if in.Inspect == nil {
		add("postgresql", api.CheckCritical, "cannot inspect PostgreSQL: %s", in.InspectErr)
		return finish(res)
	}
	insp := in.Inspect
	role := "replica"
	if !insp.InRecovery {
		role = "primary"
	}
	add("postgresql", api.CheckOK, "running as %s, timeline %d", role, h.Timeline)
	checkConnections(insp, o, add)
	if insp.InRecovery {
		checkReplica(h, insp, o, add)
	} else {
		checkPrimary(in, insp, add)
	}
	return finish(res)
}

func contactText(c time.Duration) string {
	if c < 0 {
		return "ever"
	}
	return c.Round(time.Millisecond).String()
}

type addFunc func(component, status, format string, args ...any)

func checkConnections(insp *pgnode.Inspection, o api.CheckOptions, add addFunc) {
	if insp.MaxConnections <= 0 {
		add("connections", api.CheckUnknown, "max_connections unknown")
		return
	}
	pct := 100 * insp.Connections / insp.MaxConnections
	status := api.CheckOK
	switch {
	case pct >= o.CritConnPct:
		status = api.CheckCritical
	case pct >= o.WarnConnPct:
		status = api.CheckWarning
	}
	add("connections", status, "%d of %d client connections in use (%d%%)", insp.Connections, insp.MaxConnections, pct)
}

func checkReplica(h api.HealthInfo, insp *pgnode.Inspection, o api.CheckOptions, add addFunc) {
	if insp.Receiver == "streaming" {
		add("wal_receiver", api.CheckOK, "streaming from %s", insp.ReceiverHost)
	} else {
		status := insp.Receiver
		if status == "" {
			status = "no WAL receiver"
		}
		add("wal_receiver", api.CheckCritical, "not streaming (%s)", status)
	}
	switch {
	case h.LagBytes == nil:
		add("lag", api.CheckWarning, "lag unknown: no primary position to compare with")
	case *h.LagBytes >= o.CritLag:
		add("lag", api.CheckCritical, "%s behind the primary (critical at %s)", sizeText(*h.LagBytes), sizeText(o.CritLag))
	case *h.LagBytes >= o.WarnLag:
		add("lag", api.CheckWarning, "%s behind the primary (warning at %s)", sizeText(*h.LagBytes), sizeText(o.WarnLag))
	default:
		add("lag", api.CheckOK, "%s behind the primary", sizeText(*h.LagBytes))
	}
}

func checkPrimary(in checkInput, insp *pgnode.Inspection, add addFunc) {
	// Slots: one per member, active while its replica streams. An
	// inactive slot retains WAL until max_slot_wal_keep_size; a lost one
	// means that replica must be re-cloned.
	var inactive, lost []string
	for _, s := range insp.Slots {
		switch {
		case s.WALStatus == "lost":
			lost = append(lost, s.Name)
		case !s.Active:
			inactive = append(inactive, fmt.Sprintf("%s (retains %s)", s.Name, sizeText(s.RetainedBytes)))
		}
	}
	switch {
	case len(lost) > 0:
		add("slots", api.CheckCritical, "WAL lost for slots %s: their replicas must be re-cloned (pgha reinit)", strings.Join(lost, ", "))
	case len(inactive) > 0:
		add("slots", api.CheckWarning, "%d of %d slots inactive: %s", len(inactive), len(insp.Slots), strings.Join(inactive, ", "))
	default:
		add("slots", api.CheckOK, "%d slots, all active", len(insp.Slots))
	}

	streaming := map[string]bool{}
	for _, s := range insp.Senders {
		if s.State == "streaming" {
			streaming[s.Name] = true
		}
	}
	var missing []string
	for _, r := range in.Replicas {
		if !streaming[r] {
			missing = append(missing, r)
		}
	}
	switch {
	case len(in.Replicas) == 0:
		add("wal_senders", api.CheckOK, "no replicas configured")
	case len(missing) == len(in.Replicas):
		add("wal_senders", api.CheckCritical, "no replica streams (expected %s)", strings.Join(in.Replicas, ", "))
	case len(missing) > 0:
		add("wal_senders", api.CheckWarning, "%d of %d replicas stream; not streaming: %s", len(in.Replicas)-len(missing), len(in.Replicas), strings.Join(missing, ", "))
	default:
		add("wal_senders", api.CheckOK, "%d of %d replicas streaming", len(in.Replicas), len(in.Replicas))
	}
	if in.SyncMode {
		var syncing []string
		for _, s := range in.SyncSet {
			if streaming[s] {
				syncing = append(syncing, s)
			}
		}
		if len(syncing) == 0 {
			add("synchronous", api.CheckCritical, "synchronous mode on but no synchronous standby streams (set: %s)", strings.Join(in.SyncSet, ", "))
		} else {
			add("synchronous", api.CheckOK, "synchronous standbys: %s", strings.Join(syncing, ", "))
		}
	}
}

func finish(res api.CheckResult) api.CheckResult {
	res.Status = api.CheckOK
	for _, c := range res.Checks {
		if api.CheckRank(c.Status) > api.CheckRank(res.Status) {
			res.Status = c.Status
		}
	}
	return res
}

// sizeText writes bytes for people: 0 B, 12 kB, 3.4 MB, 1.2 GB.
func sizeText(n int64) string {
	switch {
	case n < 0:
		return "unknown"
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.0f kB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GB", float64(n)/(1<<30))
}
