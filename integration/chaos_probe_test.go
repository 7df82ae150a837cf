//go:build chaos && linux

package integration

// The chaos test's two observers: a split-brain probe that tries a write
// directly on every node's PostgreSQL every 100 ms, and a client workload
// that inserts unique ids through the proxies' write ports and records
// every acknowledged commit.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// probeRec is one direct write attempt on one node.
type probeRec struct {
	Node       string
	Start, End time.Time // as seen by the test process
	OK         bool
	// From and To bracket the commit (OK only): the server's clock before
	// the INSERT ran, and its clock after the commit (or the local end
	// when that second query failed). Every node runs on this machine,
	// so server and test clocks are the same clock.
	From, To time.Time
	Err      string
}

type prober struct {
	mu   sync.Mutex
	recs []probeRec
}

func (p *prober) add(r probeRec) {
	p.mu.Lock()
	p.recs = append(p.recs, r)
	p.mu.Unlock()
}

func (p *prober) snapshot() []probeRec {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]probeRec(nil), p.recs...)
}

// runProbe tries a write on nd's PostgreSQL every 100 ms until ctx ends,
// over one kept connection (re-opened after any error but a read-only
// refusal). In namespaces it connects from inside nd's namespace, so an
// isolated node is probed too. The session commits with
// synchronous_commit=local: the probe asks whether the node accepts
// writes, not whether they replicate.
func (e *chaosEnv) runProbe(ctx context.Context, nd *Node, p *prober) {
	cfg, err := e.pgConfig(nd, nd.PG, true, map[string]string{"synchronous_commit": "local", "statement_timeout": "1000", "application_name": "chaos-probe"})
	if err != nil {
		p.add(probeRec{Node: nd.Name, Start: time.Now(), End: time.Now(), Err: err.Error()})
		return
	}
	var conn *pgx.Conn
	closeConn := func() { closeQuickly(conn); conn = nil }
	defer closeConn()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for seq := int64(1); ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		r := probeRec{Node: nd.Name, Start: time.Now()}
		octx, cancel := context.WithTimeout(ctx, time.Second)
		var err error
		if conn == nil {
			if c, cerr := pgx.ConnectConfig(octx, cfg); cerr != nil {
				err = cerr
			} else {
				conn = c
			}
		}
		if err == nil {
			err = conn.QueryRow(octx, "INSERT INTO chaos_probe (node, seq) VALUES ($1, $2) RETURNING clock_timestamp()", nd.Name, seq).Scan(&r.From)
			if err == nil {
				r.OK = true
				if qerr := conn.QueryRow(octx, "SELECT clock_timestamp()").Scan(&r.To); qerr != nil {
					r.To = time.Now()
					err = qerr // reconnect next time, but the write was accepted
				}
			}
		}
		cancel()
		r.End = time.Now()
		if err != nil {
			var pe *pgconn.PgError
			if r.Err == "" {
				r.Err = firstLine(err.Error())
			}
			if !errors.As(err, &pe) || pe.Code != "25006" { // 25006: read-only transaction
				closeConn()
			}
		}
		if ctx.Err() != nil && !r.OK {
			return // the end of the run, not a refusal
		}
		p.add(r)
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 160 {
		s = s[:160]
	}
	return s
}

// sbWindow is a time window in which two nodes both accepted writes.
type sbWindow struct {
	Nodes       [2]string `json:"nodes"`
	Start       time.Time `json:"start"`
	End         time.Time `json:"end"`
	StartOffset float64   `json:"start_offset_sec"`
	LengthSec   float64   `json:"length_sec"`
	Probes      [2]int    `json:"accepted_probes"` // accepted writes of each node in its overlapping period
	Detail      string    `json:"detail,omitempty"`
}

// windowDetail lists the accepted probes inside w (at most 8), with the
// offsets of the server-side bracket of each commit.
func windowDetail(recs []probeRec, w sbWindow, t0 time.Time) string {
	var parts []string
	for _, p := range recs {
		if !p.OK || (p.Node != w.Nodes[0] && p.Node != w.Nodes[1]) || p.To.Before(w.Start) || p.From.After(w.End) {
			continue
		}
		if len(parts) == 8 {
			parts = append(parts, "...")
			break
		}
		parts = append(parts, fmt.Sprintf("%s accepted a write between +%.3fs and +%.3fs (probe sent +%.3fs)",
			p.Node, p.From.Sub(t0).Seconds(), p.To.Sub(t0).Seconds(), p.Start.Sub(t0).Seconds()))
	}
	return strings.Join(parts, "; ")
}

// acceptPeriod is a run of accepted probes on one node with no refused
// probe in between (and no gap over 1 s): the node took writes over
// [From, To].
type acceptPeriod struct {
	node     string
	from, to time.Time
	n        int
}

// splitBrainWindows finds every overlap between accept periods of two
// different nodes.
func splitBrainWindows(recs []probeRec, t0 time.Time) []sbWindow {
	byNode := map[string][]probeRec{}
	for _, r := range recs {
		byNode[r.Node] = append(byNode[r.Node], r)
	}
	var periods []acceptPeriod
	for node, rs := range byNode {
		sort.Slice(rs, func(i, j int) bool { return rs[i].Start.Before(rs[j].Start) })
		var cur *acceptPeriod
		var lastStart time.Time
		for _, r := range rs {
			if !r.OK {
				if cur != nil {
					periods = append(periods, *cur)
					cur = nil
				}
				continue
			}
			if cur != nil && r.Start.Sub(lastStart) > time.Second {
				periods = append(periods, *cur)
				cur = nil
			}
			if cur == nil {
				cur = &acceptPeriod{node: node, from: r.From, to: r.To}
			}
			if r.From.Before(cur.from) {
				cur.from = r.From
			}
			if r.To.After(cur.to) {
				cur.to = r.To
			}
			cur.n++
			lastStart = r.Start
		}
		if cur != nil {
			periods = append(periods, *cur)
		}
	}
	var out []sbWindow
	for i := range periods {
		for j := i + 1; j < len(periods); j++ {
			a, b := periods[i], periods[j]
			if a.node == b.node {
				continue
			}
			s, e := a.from, a.to
			if b.from.After(s) {
				s = b.from
			}
			if b.to.Before(e) {
				e = b.to
			}
			if !s.Before(e) {
				continue
			}
			if a.node > b.node {
				a, b = b, a
			}
			w := sbWindow{Nodes: [2]string{a.node, b.node}, Start: s, End: e,
				StartOffset: s.Sub(t0).Seconds(), LengthSec: e.Sub(s).Seconds(), Probes: [2]int{a.n, b.n}}
			w.Detail = windowDetail(recs, w, t0)
			out = append(out, w)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// ackRec is one commit the workload saw acknowledged.
type ackRec struct {
	ID         int64
	Start, End time.Time
	Via        string // node whose proxy carried it
	// Warned: PostgreSQL acknowledged it with a warning that the wait for
	// the synchronous standby was cancelled (committed locally only).
	Warned bool
}

type workload struct {
	mu       sync.Mutex
	acks     []ackRec
	attempts int64
	failures int64
	lastErr  string
}

// acksSince returns the first acknowledged commit whose attempt started
// at or after t.
func (w *workload) firstAckSince(t time.Time) (ackRec, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := sort.Search(len(w.acks), func(i int) bool { return !w.acks[i].Start.Before(t) })
	if i < len(w.acks) {
		return w.acks[i], true
	}
	return ackRec{}, false
}

// longestGap returns the longest time without an acknowledged commit
// within [from, to] (measured from from, and up to the first ack after
// to when there is none inside) and when it ended.
func (w *workload) longestGap(from, to time.Time) (time.Duration, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	prev := from
	var longest time.Duration
	var end time.Time
	i := sort.Search(len(w.acks), func(i int) bool { return w.acks[i].End.After(from) })
	for ; i < len(w.acks); i++ {
		a := w.acks[i]
		if g := a.End.Sub(prev); g > longest {
			longest, end = g, a.End
		}
		prev = a.End
		if a.End.After(to) {
			break
		}
	}
	return longest, end
}

// lastVia names the proxy that carried the latest acknowledged commit.
func (w *workload) lastVia() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.acks) == 0 {
		return ""
	}
	return w.acks[len(w.acks)-1].Via
}

// ackedIDs returns the ids of the acknowledged commits, without those
// acknowledged with a cancelled synchronous wait, and how many of those
// there were.
func (w *workload) ackedIDs() (ids, warned []int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, a := range w.acks {
		if a.Warned {
			warned = append(warned, a.ID)
		} else {
			ids = append(ids, a.ID)
		}
	}
	return ids, warned
}

func (w *workload) counts() (attempts, failures int64, acked int, lastErr string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.attempts, w.failures, len(w.acks), w.lastErr
}

// run inserts one unique id per transaction through a proxy's write port
// until ctx ends, 5 ms apart, like an application: one connection kept
// open, and on any error a new connection to the next node's proxy.
func (e *chaosEnv) runWorkload(ctx context.Context, w *workload) {
	var warned atomic.Bool
	var conn *pgx.Conn
	closeConn := func() { closeQuickly(conn); conn = nil }
	defer closeConn()
	nodes := e.c.Nodes
	cur := 0
	var id int64
	fail := func(err error) {
		w.mu.Lock()
		w.failures++
		w.lastErr = fmt.Sprintf("via %s: %s", nodes[cur].Name, firstLine(err.Error()))
		w.mu.Unlock()
		closeConn()
		cur = (cur + 1) % len(nodes)
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	for ctx.Err() == nil {
		if conn == nil {
			cfg, err := e.pgConfig(nodes[cur], nodes[cur].Write, false, map[string]string{"application_name": "chaos-workload"})
			if err != nil {
				fail(err)
				continue
			}
			cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
				if strings.Contains(n.Message, "synchronous replication") {
					warned.Store(true)
				}
			}
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			conn, err = pgx.ConnectConfig(cctx, cfg)
			cancel()
			if err != nil {
				conn = nil
				if ctx.Err() == nil {
					fail(err)
				}
				continue
			}
		}
		id++
		warned.Store(false)
		a := ackRec{ID: id, Start: time.Now(), Via: nodes[cur].Name}
		ictx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := conn.Exec(ictx, "INSERT INTO chaos_w (id) VALUES ($1)", id)
		cancel()
		a.End = time.Now()
		w.mu.Lock()
		w.attempts++
		w.mu.Unlock()
		if err != nil {
			if ctx.Err() == nil {
				fail(err)
			}
			continue
		}
		a.Warned = warned.Load()
		w.mu.Lock()
		w.acks = append(w.acks, a)
		w.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// missingOnPrimary returns the ids (of ids) absent from chaos_w on nd.
func (e *chaosEnv) missingOn(nd *Node, ids []int64) ([]int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := e.connectPG(ctx, nd)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT a.id FROM unnest($1::bigint[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM chaos_w w WHERE w.id = a.id) ORDER BY a.id", ids)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// closeQuickly closes a probe's kept connection, waiting at most 300 ms
// for the server (it may be frozen or cut off); nil is a no-op.
func closeQuickly(conn *pgx.Conn) {
	if conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	conn.Close(ctx)
}
