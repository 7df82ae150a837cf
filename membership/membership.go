// Package membership wraps hashicorp/memberlist: discovery of the other
// pgha nodes, liveness, and each node's volatile status carried as gossip
// metadata (role, PostgreSQL state, WAL positions). None of this goes
// through Raft: it changes every loop and a stale value is harmless,
// because decisions that matter are committed to the Raft FSM.
package membership

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/memberlist"
	"github.com/pgha/pgha/cluster"
)

// Meta is a node's volatile status. Keys are short because memberlist
// refuses metadata over 512 bytes.
type Meta struct {
	Cluster string `json:"c"`
	Version string `json:"v,omitempty"`
	Raft    string `json:"r,omitempty"`  // raft address
	API     string `json:"a,omitempty"`  // REST API address
	PG      string `json:"p,omitempty"`  // PostgreSQL host:port
	Write   string `json:"pw,omitempty"` // proxy write address
	Read    string `json:"pr,omitempty"` // proxy read address
	Expect  int    `json:"e,omitempty"`  // bootstrap_expect
	HasRaft bool   `json:"hr,omitempty"` // has a Raft configuration
	Join    bool   `json:"j,omitempty"`  // asks the leader to add it to Raft
	// JoinProof shows that a joining node or a bootstrap candidate holds
	// the cluster's API credentials (see agent.joinProof); set only
	// before the node is in Raft.
	JoinProof string          `json:"jp,omitempty"`
	Leaving   bool            `json:"l,omitempty"`  // leaving: do not re-add
	Seen      string          `json:"ss,omitempty"` // hash of the bootstrap candidates this node sees
	Witness   bool            `json:"wi,omitempty"` // no PostgreSQL
	Role      cluster.Role    `json:"ro,omitempty"` // primary, replica, witness, or none
	PGState   cluster.PGState `json:"st,omitempty"` // running, streaming, stopped, cloning...
	Timeline  uint32          `json:"tl,omitempty"`
	WAL       uint64          `json:"w,omitempty"`  // primary: current LSN; replica: replay LSN
	Recv      uint64          `json:"rv,omitempty"` // replica: receive LSN
	SysID     uint64          `json:"sy,omitempty"` // system identifier of the local data dir
	NoFail    bool            `json:"nf,omitempty"`
	NoLB      bool            `json:"nl,omitempty"`
	Priority  int             `json:"fp,omitempty"`
	Pending   bool            `json:"rp,omitempty"` // restart pending
	Err       string          `json:"x,omitempty"`  // last error, shortened
	Wait      string          `json:"wt,omitempty"` // why the node is waiting, shortened
	At        int64           `json:"t,omitempty"`  // unix ms when the status was last published (the heartbeat renews it)
	// Host is set on the wire only: the host the addresses above share,
	// which they then carry as ":port" (EncodeMeta; DecodeMeta expands
	// them). Five 63-character host names would not fit otherwise.
	Host string `json:"h,omitempty"`
}

// MaxMeta is memberlist's limit on node metadata.
const MaxMeta = memberlist.MetaMaxSize

// EncodeMeta marshals m so that it fits in MaxMeta: the addresses share
// their host once, the wait reason is bounded, and the error, then the
// wait reason, are shortened as far as needed. What still does not fit
// (addresses too long, which Config validation prevents) is an error.
func EncodeMeta(m Meta) ([]byte, error) {
	compactAddrs(&m)
	if len(m.Version) > 24 {
		m.Version = truncate(m.Version, 24)
	}
	if len(m.Wait) > 160 {
		m.Wait = truncate(m.Wait, 157) + "..."
	}
	for {
		b, err := json.Marshal(m)
		if err != nil {
			return nil, err
		}
		if len(b) <= MaxMeta {
			return b, nil
		}
		field := &m.Err
		if m.Err == "" {
			field = &m.Wait
		}
		if *field == "" {
			return nil, fmt.Errorf("gossip metadata is %d bytes, over memberlist's %d (are the advertised addresses very long?)", len(b), MaxMeta)
		}
		// The overshoot counts JSON escapes, so it may exceed the raw
		// message: cut at most half of what is left per pass, so the loop
		// ends quickly and keeps as much of the message as fits.
		msg := strings.TrimSuffix(*field, "...")
		keep := len(msg) - (len(b) - MaxMeta) - 3
		if keep < len(msg)/2 {
			keep = len(msg) / 2
		}
		if keep <= 0 {
			*field = ""
			continue
		}
		*field = truncate(msg, keep) + "..."
	}
}

// addrFields are the addresses compactAddrs shares the host of.
func addrFields(m *Meta) []*string { return []*string{&m.Raft, &m.API, &m.PG, &m.Write, &m.Read} }

// compactAddrs writes the host most addresses share once (m.Host) and
// those addresses as ":port".
func compactAddrs(m *Meta) {
	count := map[string]int{}
	for _, f := range addrFields(m) {
		if h, _, err := net.SplitHostPort(*f); err == nil && h != "" {
			count[h]++
		}
	}
	best := ""
	for h, n := range count {
		if n > count[best] || (n == count[best] && h < best) {
			best = h
		}
	}
	if count[best] < 2 {
		return
	}
	m.Host = best
	for _, f := range addrFields(m) {
		if h, port, err := net.SplitHostPort(*f); err == nil && h == best {
			*f = ":" + port
		}
	}
}

// expandAddrs undoes compactAddrs.
func expandAddrs(m *Meta) {
	if m.Host == "" {
		return
	}
	for _, f := range addrFields(m) {
		if strings.HasPrefix(*f, ":") {
			*f = net.JoinHostPort(m.Host, (*f)[1:])
		}
	}
	m.Host = ""
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// DecodeMeta parses metadata from a peer. Unknown keys are ignored (a
// newer peer may send more).
func DecodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) == 0 {
		return m, errors.New("empty metadata")
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("decode gossip metadata: %w", err)
	}
	expandAddrs(&m)
	return m, nil
}

// Member is one gossip peer as seen now.
type Member struct {
	Name   string
	Addr   string // gossip host:port
	Alive  bool   // memberlist considers it alive (not dead or left)
	Meta   Meta
	MetaOK bool
	// LastUpdate is when this node last received the member's metadata
	// (local clock). Agents republish every loop, so an old LastUpdate
	// means a silent member long before memberlist declares it dead.
	LastUpdate time.Time
}

// Options configures the gossip layer.
type Options struct {
	Name      string
	Cluster   string // memberlist label: other clusters' packets are dropped
	BindAddr  string // host:port
	Advertise string // host:port; default BindAddr
	Logger    *slog.Logger
	// LogOutput receives memberlist's own log lines; nil drops them.
	// Either way refusals for a wrong gossip key also go to Logger at
	// warn level (at most once a minute).
	LogOutput io.Writer
	// Key is the gossip encryption key (AES-GCM, 16, 24 or 32 bytes); nil
	// means no encryption. With a key every message must be encrypted
	// with it, both ways: a node with another key or none is refused.
	Key []byte
	// OnNotice receives the notices other members send this one with
	// Notify. It runs on memberlist's receive path: it must not block.
	OnNotice func(from, text string)
}

// ErrGossipKey marks a join that failed because the two sides do not use
// the same gossip key (or one has none).
var ErrGossipKey = errors.New("is gossip.key the same on every node?")

// Gossip is the running memberlist plus pgha's delegates.
type Gossip struct {
	ml     *memberlist.Memberlist
	logger *slog.Logger
	meta   *metaDelegate
	view   *eventDelegate
	events chan struct{}
	ctx    context.Context // ends background join loops
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New starts memberlist on the bind address. It does not join anyone;
// call Join or RetryJoin.
func New(o Options, initial Meta) (*Gossip, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	host, port, err := splitHostPort(o.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q: %w", o.BindAddr, err)
	}
	c := memberlist.DefaultLANConfig()
	c.Name = o.Name
	c.BindAddr = host
	c.BindPort = port
	c.Label = o.Cluster
	if o.Advertise != "" {
		ahost, aport, err := splitHostPort(o.Advertise)
		if err != nil {
			return nil, fmt.Errorf("gossip advertise address %q: %w", o.Advertise, err)
		}
		c.AdvertiseAddr, c.AdvertisePort = ahost, aport
	} else {
		c.AdvertiseAddr, c.AdvertisePort = host, port
	}
	// Faster than the LAN defaults where it matters: status changes (a
	// new role, a replica that starts streaming) reach peers within a few
	// hundred ms, as broadcasts go out every 200 ms (the write port does
	// not wait for them: a promotion reaches it through Raft, see
	// agent/routing). Failure detection is not memberlist's job here
	// (Raft detects a dead leader, a status older than a few seconds
	// marks a silent member), so probes run at the LAN pace, and the
	// small metadata is not worth compressing.
	c.GossipInterval = 200 * time.Millisecond
	c.ProbeInterval = 2 * time.Second
	c.ProbeTimeout = 500 * time.Millisecond
	c.PushPullInterval = 10 * time.Second
	c.EnableCompression = false
	// Key refusals reach Logger whatever happens to the raw lines: on
	// the accepting side they are the only sign of a node with the wrong
	// key knocking.
	keyLog := &keyErrorLog{logger: o.Logger}
	if o.LogOutput != nil {
		c.Logger = log.New(io.MultiWriter(o.LogOutput, keyLog), "", log.LstdFlags)
	} else {
		c.Logger = log.New(keyLog, "", 0)
	}
	if len(o.Key) > 0 {
		// memberlist checks the length (16, 24 or 32) when it builds the
		// keyring from SecretKey.
		c.SecretKey = append([]byte(nil), o.Key...)
		// Both default to true; spelled out because they are what makes
		// a node without the key unable to join or inject anything.
		c.GossipVerifyIncoming = true
		c.GossipVerifyOutgoing = true
	}

	ctx, cancel := context.WithCancel(context.Background())
	g := &Gossip{logger: o.Logger, events: make(chan struct{}, 1), ctx: ctx, cancel: cancel}
	g.meta = &metaDelegate{onNotice: o.OnNotice}
	if _, err := g.meta.set(initial); err != nil {
		cancel()
		return nil, err
	}
	c.Delegate = g.meta
	g.view = &eventDelegate{ch: g.events, nodes: map[string]nodeCopy{}}
	c.Events = g.view
	ml, err := memberlist.Create(c)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("start gossip on %s: %w", o.BindAddr, err)
	}
	g.ml = ml
	return g, nil
}

// Join contacts the given gossip addresses and returns how many answered.
// When none did, the error has one line per address; a failure that
// comes from a gossip key mismatch wraps ErrGossipKey and says so.
func (g *Gossip) Join(addrs []string) (int, error) {
	if len(addrs) == 0 {
		return 0, nil
	}
	var errs []error
	n := 0
	// One address at a time: memberlist's combined error names each
	// address in a multi-line list, and the key hint belongs to each.
	for _, a := range addrs {
		k, err := g.ml.Join([]string{a})
		if k > 0 {
			n += k
			continue
		}
		if err == nil {
			err = errors.New("no answer")
		}
		errs = append(errs, joinError(a, err))
	}
	if n > 0 {
		return n, nil
	}
	return 0, errors.Join(errs...)
}

// joinError describes why joining via addr failed. memberlist returns a
// multierror whose entries read "failed to join ADDR: reason"; the reason
// alone is kept.
func joinError(addr string, err error) error {
	msgs := []string{err.Error()}
	if me, ok := err.(interface{ WrappedErrors() []error }); ok && len(me.WrappedErrors()) > 0 {
		msgs = msgs[:0]
		for _, e := range me.WrappedErrors() {
			m := e.Error()
			if rest, ok := cutPrefixFold(m, "failed to join "); ok {
				if _, reason, ok := strings.Cut(rest, ": "); ok {
					m = reason
				}
			}
			msgs = append(msgs, m)
		}
	}
	msg := strings.Join(msgs, "; ")
	if isKeyError(msg) {
		return fmt.Errorf("gossip join via %s failed: %s (%w)", addr, msg, ErrGossipKey)
	}
	return fmt.Errorf("gossip join via %s failed: %s", addr, msg)
}

// cutPrefixFold is strings.CutPrefix ignoring case (memberlist has
// spelled "Failed to join" both ways).
func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}

// isKeyError recognises memberlist's messages for a message it could not
// decrypt, or an encrypted one it did not expect, or the reverse.
func isKeyError(msg string) bool {
	return strings.Contains(msg, "decrypt") || strings.Contains(msg, "encrypt")
}

// keyErrorLog receives memberlist's log lines and turns the ones about a
// gossip key mismatch into one warning a minute (memberlist writes one
// per packet).
type keyErrorLog struct {
	logger     *slog.Logger
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (w *keyErrorLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if !strings.Contains(line, "[ERR]") || !isKeyError(line) {
		return len(p), nil
	}
	w.mu.Lock()
	now := time.Now()
	if !w.last.IsZero() && now.Sub(w.last) < time.Minute {
		w.suppressed++
		w.mu.Unlock()
		return len(p), nil
	}
	suppressed := w.suppressed
	w.last, w.suppressed = now, 0
	w.mu.Unlock()
	_, detail, _ := strings.Cut(line, "memberlist: ")
	w.logger.Warn("gossip: refused a message from a node with another gossip key or none ("+ErrGossipKey.Error()+")",
		"detail", detail, "refused_since_last_log", suppressed)
	return len(p), nil
}

// RetryJoin keeps trying to join addrs in the background until another
// member answers, and afterwards tries again whenever this node finds
// itself alone (after a long partition peers may have forgotten it).
// Nodes start in any order, so the first tries may find nobody. It stops
// when Close is called and returns immediately.
func (g *Gossip) RetryJoin(addrs []string) {
	self := g.ml.LocalNode().Address()
	var others []string
	for _, a := range addrs {
		if a != self {
			others = append(others, a)
		}
	}
	if len(others) == 0 {
		return
	}
	ctx := g.ctx
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		backoff := 200 * time.Millisecond
		var keyWarned time.Time
		for {
			if g.ml.NumMembers() < 2 {
				n, err := g.Join(others)
				if n > 0 {
					g.logger.Info("gossip joined", "contacted", n, "members", g.ml.NumMembers())
					backoff = 200 * time.Millisecond
					keyWarned = time.Time{}
				} else {
					if errors.Is(err, ErrGossipKey) && time.Since(keyWarned) > time.Minute {
						// Not a peer that is still starting: this will
						// not fix itself, so say it, but not every time.
						g.logger.Warn("gossip join failed", "err", err)
						keyWarned = time.Now()
					} else {
						g.logger.Debug("gossip join retry", "err", err)
					}
					if backoff < 2*time.Second {
						backoff *= 2
					}
				}
			} else {
				backoff = 5 * time.Second
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
		}
	}()
}

// SetMeta publishes a new status. Peers see it within a few gossip rounds.
func (g *Gossip) SetMeta(m Meta) error {
	changed, err := g.meta.set(m)
	if err != nil {
		return err
	}
	if !changed {
		return nil
	}
	// UpdateNode broadcasts the new metadata; its timeout only bounds the
	// wait for the broadcast to be queued, it never blocks the caller long.
	if err := g.ml.UpdateNode(time.Second); err != nil {
		return fmt.Errorf("gossip update: %w", err)
	}
	return nil
}

// Touch republishes the current metadata with a new timestamp (unix ms),
// atomically with respect to SetMeta, so a heartbeat never overwrites a
// newer status with an older one.
func (g *Gossip) Touch(at int64) error {
	g.meta.mu.Lock()
	m := g.meta.meta
	g.meta.mu.Unlock()
	m.At = at
	changed, err := g.meta.setIf(m, func(cur Meta) bool { return cur.At < at })
	if err != nil || !changed {
		return err
	}
	if err := g.ml.UpdateNode(time.Second); err != nil {
		return fmt.Errorf("gossip update: %w", err)
	}
	return nil
}

// noticeTag starts every notice; maxNotice bounds its text so the whole
// message fits one UDP packet.
const (
	noticeTag = "pgha-notice1\x00"
	maxNotice = 512
)

// Notify sends member to a short notice (best effort, one UDP packet,
// encrypted with the gossip key when there is one): for a member that
// needs to know something and has no other way to learn it, e.g. why
// the leader will not add it.
func (g *Gossip) Notify(to, text string) error {
	if len(text) > maxNotice {
		text = text[:maxNotice]
	}
	for _, n := range g.ml.Members() {
		if n.Name == to {
			msg := append([]byte(noticeTag+g.ml.LocalNode().Name+"\x00"), text...)
			return g.ml.SendBestEffort(n, msg)
		}
	}
	return fmt.Errorf("notify %s: not a gossip member", to)
}

// LocalMeta returns the metadata this node publishes.
func (g *Gossip) LocalMeta() Meta { return g.meta.get() }

// Members returns the members memberlist knows alive, sorted by name.
// It serves copies taken by the event delegate under memberlist's lock:
// the *memberlist.Node values memberlist hands out are rewritten in place
// when a peer's metadata changes (hashicorp/memberlist#306).
func (g *Gossip) Members() []Member {
	nodes := g.view.snapshot()
	out := make([]Member, 0, len(nodes))
	for name, n := range nodes {
		m := Member{Name: name, Addr: net.JoinHostPort(n.addr.String(), strconv.Itoa(int(n.port))), Alive: true, LastUpdate: n.seen,
			Meta: n.parsed, MetaOK: n.ok}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Events receives a value after members joined, left or changed metadata.
// It is coalesced and never blocks memberlist.
func (g *Gossip) Events() <-chan struct{} { return g.events }

// Leave tells the others this node is leaving, then waits up to timeout
// for the message to spread.
func (g *Gossip) Leave(timeout time.Duration) error {
	if err := g.ml.Leave(timeout); err != nil {
		return fmt.Errorf("gossip leave: %w", err)
	}
	return nil
}

// Close stops the join loop and memberlist.
func (g *Gossip) Close() error {
	g.cancel()
	g.wg.Wait()
	return g.ml.Shutdown()
}

type metaDelegate struct {
	mu       sync.Mutex
	meta     Meta
	raw      []byte
	failed   bool // the last set could not be encoded (see setIf)
	onNotice func(from, text string)
}

// set stores m and reports whether the encoded form changed. Metadata
// that cannot be encoded is refused and the old value kept.
func (d *metaDelegate) set(m Meta) (bool, error) {
	return d.setIf(m, nil)
}

// setIf is set, applied only when ok (if given) approves the current
// value; checked under the same lock as the write.
func (d *metaDelegate) setIf(m Meta, ok func(cur Meta) bool) (bool, error) {
	b, err := EncodeMeta(m)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		// The published status is now older than the node's: it must
		// not look fresh, so the heartbeat stops renewing it (Touch)
		// until a status is published again.
		d.failed = true
		return false, err
	}
	if ok != nil {
		if d.failed {
			return false, errors.New("the last status could not be published; not renewing the previous one")
		}
		// Only the timestamp may move: anything else changed meanwhile
		// means a newer status was published; keep it.
		cur := d.meta
		cur.At = m.At
		if cur != m || !ok(d.meta) {
			return false, nil
		}
	}
	d.meta = m
	if ok == nil {
		d.failed = false
	}
	if string(b) == string(d.raw) {
		return false, nil
	}
	d.raw = b
	return true, nil
}

func (d *metaDelegate) get() Meta {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.meta
}

func (d *metaDelegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.raw) > limit {
		return nil
	}
	return append([]byte(nil), d.raw...)
}

// NotifyMsg receives a user message: a notice sent with Notify.
func (d *metaDelegate) NotifyMsg(b []byte) {
	rest, ok := bytes.CutPrefix(b, []byte(noticeTag))
	if !ok || d.onNotice == nil {
		return
	}
	from, text, ok := bytes.Cut(rest, []byte{0})
	if !ok || len(from) == 0 || len(from) > 63 || !utf8.Valid(text) {
		return
	}
	d.onNotice(string(from), string(text))
}

func (d *metaDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *metaDelegate) LocalState(join bool) []byte                { return nil }
func (d *metaDelegate) MergeRemoteState(buf []byte, join bool)     {}

// eventDelegate keeps a copy of every live node and turns memberlist
// events into a coalesced wake-up. It must not block: memberlist calls it
// with its own locks held, which is also what makes reading the node's
// fields safe here.
type eventDelegate struct {
	ch    chan struct{}
	mu    sync.Mutex
	nodes map[string]nodeCopy
}

type nodeCopy struct {
	addr   net.IP
	port   uint16
	meta   []byte
	parsed Meta // meta decoded once, here, rather than on every read
	ok     bool
	seen   time.Time
}

func (e *eventDelegate) poke() {
	select {
	case e.ch <- struct{}{}:
	default:
	}
}

func (e *eventDelegate) store(n *memberlist.Node) {
	c := nodeCopy{addr: append(net.IP(nil), n.Addr...), port: n.Port, meta: append([]byte(nil), n.Meta...), seen: time.Now()}
	if m, err := DecodeMeta(c.meta); err == nil {
		c.parsed, c.ok = m, true
	}
	e.mu.Lock()
	old, had := e.nodes[n.Name]
	e.nodes[n.Name] = c
	e.mu.Unlock()
	// Every agent republishes its status each second with a new
	// timestamp and WAL positions; only a change of anything else (role,
	// state, addresses...) is worth waking the HA loop for.
	if !had || !old.addr.Equal(c.addr) || old.port != c.port || old.ok != c.ok || significant(old.parsed) != significant(c.parsed) {
		e.poke()
	}
}

// significant returns the metadata without its ever-changing fields.
func significant(m Meta) Meta {
	m.At, m.WAL, m.Recv = 0, 0, 0
	return m
}

func (e *eventDelegate) snapshot() map[string]nodeCopy {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]nodeCopy, len(e.nodes))
	for k, v := range e.nodes {
		out[k] = v
	}
	return out
}

func (e *eventDelegate) NotifyJoin(n *memberlist.Node)   { e.store(n) }
func (e *eventDelegate) NotifyUpdate(n *memberlist.Node) { e.store(n) }
func (e *eventDelegate) NotifyLeave(n *memberlist.Node) {
	e.mu.Lock()
	delete(e.nodes, n.Name)
	e.mu.Unlock()
	e.poke()
}

func splitHostPort(hp string) (string, int, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return h, port, nil
}
