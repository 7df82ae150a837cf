package api

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/pgha/pgha/cluster"
)

// Health endpoints with Patroni's semantics, so that HAProxy checks,
// Kubernetes probes and monitoring written for Patroni work unchanged.
// Each answers 200 or 503 with the same body (HealthInfo); HEAD and
// OPTIONS answer with the status only. They never need credentials: load
// balancers call them every second.
//
// The decision is a pure function of the node's HealthInfo and the query,
// so it is unit-tested without an agent.

// LivenessWindow is how stale the HA loop's last round may be before
// /liveness fails. The loop runs every second or faster; a clone or a
// PostgreSQL start can hold one round for longer, so the window is wide.
const LivenessWindow = 30 * time.Second

// healthCheck answers whether h passes the check for one endpoint,
// and if not, why (for the log of an operator who curls it).
type healthCheck func(h *HealthInfo, q url.Values, now time.Time) (bool, string)

// healthRoutes maps each path (aliases included) to its check.
var healthRoutes = map[string]healthCheck{
	"/":               checkPrimary,
	"/primary":        checkPrimary,
	"/master":         checkPrimary,
	"/leader":         checkPrimary,
	"/read-write":     checkPrimary,
	"/standby-leader": checkStandbyLeader,
	"/standby_leader": checkStandbyLeader,
	"/replica":        checkReplica,
	"/read-only":      checkReadOnly,
	"/synchronous":    checkSync,
	"/sync":           checkSync,
	"/read-only-sync": checkReadOnlySync,
	"/asynchronous":   checkAsync,
	"/async":          checkAsync,
	"/health":         checkRunning,
	"/liveness":       checkLiveness,
	"/readiness":      checkReadiness,
	"/patroni":        func(*HealthInfo, url.Values, time.Time) (bool, string) { return true, "" },
}

// EvalHealth runs the check of path against h with the query q. ok is
// false with a reason; err is a malformed query (a 400).
func EvalHealth(path string, h *HealthInfo, q url.Values, now time.Time) (ok bool, reason string, err error) {
	check, found := healthRoutes[path]
	if !found {
		return false, "", Errorf(http.StatusNotFound, "no health endpoint %s", path)
	}
	if err := validateHealthQuery(q); err != nil {
		return false, "", err
	}
	ok, reason = check(h, q, now)
	return ok, reason, nil
}

func checkPrimary(h *HealthInfo, _ url.Values, _ time.Time) (bool, string) {
	switch {
	case !h.Primary:
		return false, "not the primary"
	case !h.PGRunning:
		return false, "PostgreSQL is not running"
	case h.State == cluster.StateUnresponsive:
		return false, "PostgreSQL does not answer"
	case h.InRecovery:
		return false, "PostgreSQL is still in recovery"
	}
	return true, ""
}

// pgha has no standby clusters (a cluster that replicates from another
// cluster); the endpoint exists so checks written for Patroni get a
// clean 503 rather than a 404.
func checkStandbyLeader(*HealthInfo, url.Values, time.Time) (bool, string) {
	return false, "pgha runs no standby cluster"
}

func checkRunning(h *HealthInfo, _ url.Values, _ time.Time) (bool, string) {
	if h.Role == cluster.RoleWitness {
		return true, "" // a witness has no PostgreSQL: healthy while its agent answers
	}
	if !h.PGRunning {
		return false, "PostgreSQL is not running"
	}
	if h.State == cluster.StateUnresponsive {
		return false, "PostgreSQL does not answer"
	}
	return true, ""
}

// replicaOK is the core of /replica, /sync, /async: a running replica
// that streams from the primary, within ?lag and matching the tag_
// filters and ?replication_state.
func replicaOK(h *HealthInfo, q url.Values) (bool, string) {
	switch {
	case h.Role != cluster.RoleReplica || !h.InRecovery:
		return false, "not a replica"
	case !h.PGRunning:
		return false, "PostgreSQL is not running"
	case h.State == cluster.StateUnresponsive:
		return false, "PostgreSQL does not answer"
	}
	if want := q.Get("replication_state"); want != "" && want != h.ReplicationState {
		return false, fmt.Sprintf("replication state is %q, not %q", h.ReplicationState, want)
	}
	if ok, why := lagOK(h, q.Get("lag")); !ok {
		return false, why
	}
	return tagsOK(h, q)
}

func checkReplica(h *HealthInfo, q url.Values, _ time.Time) (bool, string) {
	if ok, why := replicaOK(h, q); !ok {
		return false, why
	}
	if b, _ := h.Tags["noloadbalance"].(bool); b {
		return false, "tagged noloadbalance"
	}
	if h.ReplicationState != "streaming" {
		return false, "not streaming from the primary"
	}
	return true, ""
}

func checkReadOnly(h *HealthInfo, q url.Values, now time.Time) (bool, string) {
	if ok, _ := checkPrimary(h, q, now); ok {
		return true, ""
	}
	return checkReplica(h, q, now)
}

func checkSync(h *HealthInfo, q url.Values, _ time.Time) (bool, string) {
	if ok, why := replicaOK(h, q); !ok {
		return false, why
	}
	if !h.SyncStandby {
		return false, "not a synchronous standby"
	}
	return true, ""
}

func checkReadOnlySync(h *HealthInfo, q url.Values, now time.Time) (bool, string) {
	if ok, _ := checkPrimary(h, q, now); ok {
		return true, ""
	}
	return checkSync(h, q, now)
}

func checkAsync(h *HealthInfo, q url.Values, _ time.Time) (bool, string) {
	if ok, why := replicaOK(h, q); !ok {
		return false, why
	}
	if h.SyncStandby {
		return false, "a synchronous standby"
	}
	return true, ""
}

func checkLiveness(h *HealthInfo, _ url.Values, now time.Time) (bool, string) {
	if h.LoopAt.IsZero() {
		return false, "the HA loop has not run yet"
	}
	if age := now.Sub(h.LoopAt); age > LivenessWindow {
		return false, fmt.Sprintf("the HA loop last ran %s ago", age.Round(time.Second))
	}
	return true, ""
}

// checkReadiness: the primary, or a replica that streams and is within
// ?lag (default maximum_lag_on_failover) of the primary.
func checkReadiness(h *HealthInfo, q url.Values, now time.Time) (bool, string) {
	if ok, _ := checkPrimary(h, q, now); ok {
		return true, ""
	}
	if h.Role == cluster.RoleWitness {
		return checkLiveness(h, q, now)
	}
	if h.Role != cluster.RoleReplica || !h.PGRunning || h.State == cluster.StateUnresponsive {
		return false, "neither a running primary nor a running replica"
	}
	if h.ReplicationState != "streaming" {
		return false, "not streaming from the primary"
	}
	lag := q.Get("lag")
	if lag == "" && h.MaxLagOnFailover > 0 {
		lag = strconv.FormatInt(h.MaxLagOnFailover, 10)
	}
	return lagOK(h, lag)
}

func lagOK(h *HealthInfo, lag string) (bool, string) {
	if lag == "" {
		return true, ""
	}
	limit, _ := parseLag(lag) // validated before
	if h.LagBytes == nil {
		return false, "lag unknown (no primary position to compare with)"
	}
	if *h.LagBytes > limit {
		return false, fmt.Sprintf("%d bytes behind the primary (limit %d)", *h.LagBytes, limit)
	}
	return true, ""
}

// tagsOK applies Patroni's tag filters: ?tag_KEY=VALUE passes only when
// the node has tag KEY with that value (booleans compared case-blind).
func tagsOK(h *HealthInfo, q url.Values) (bool, string) {
	for k, vals := range q {
		key, ok := strings.CutPrefix(k, "tag_")
		if !ok {
			continue
		}
		have, set := h.Tags[key]
		if !set {
			return false, fmt.Sprintf("no tag %s", key)
		}
		if got := fmt.Sprint(have); !strings.EqualFold(got, vals[0]) {
			return false, fmt.Sprintf("tag %s is %s, not %s", key, got, vals[0])
		}
	}
	return true, ""
}

// validateHealthQuery rejects a malformed lag (a typo must not turn a
// check green or red silently).
func validateHealthQuery(q url.Values) error {
	if l := q.Get("lag"); l != "" {
		if _, err := parseLag(l); err != nil {
			return Errorf(http.StatusBadRequest, "lag=%q: %v", l, err)
		}
	}
	return nil
}

// parseLag reads bytes as Patroni does: a plain integer, or a number
// with a unit kB, MB, GB, TB (powers of 1024; case-blind; "B" optional).
func parseLag(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return !unicode.IsDigit(r) })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("want bytes, e.g. 1048576, 1024kB, 16MB or 1GB")
	}
	mult := int64(1)
	switch strings.ToUpper(strings.TrimSuffix(strings.TrimSuffix(unit, "B"), "b")) {
	case "":
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	case "T":
		mult = 1 << 40
	default:
		return 0, fmt.Errorf("unknown unit %q: want kB, MB, GB or TB", unit)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("too large")
	}
	return n * mult, nil
}

// handleHealthCheck serves every health endpoint.
func (s *Server) handleHealthCheck(w http.ResponseWriter, r *http.Request) {
	h := s.backend.Health()
	ok, reason, err := EvalHealth(r.URL.Path, &h, r.URL.Query(), time.Now())
	if err != nil {
		writeError(w, err)
		return
	}
	code := http.StatusOK
	if !ok {
		code = http.StatusServiceUnavailable
		w.Header().Set("X-Pgha-Reason", reason)
	}
	if r.Method != http.MethodGet {
		// HEAD and OPTIONS: the status is the answer.
		w.WriteHeader(code)
		return
	}
	writeJSON(w, code, h)
}
