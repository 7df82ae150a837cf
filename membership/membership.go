// Package membership wraps hashicorp/memberlist: discovery of the other
// pgha nodes, liveness, and each node's volatile status carried as gossip
// metadata (role, PostgreSQL state, WAL positions). None of this goes
// through Raft: it changes every loop and a stale value is harmless,
// because decisions that matter are committed to the Raft FSM.
package membership

import (
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
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Meta is a node's volatile status. Keys are short because memberlist
// refuses metadata over 512 bytes.
type Meta struct {
	Cluster  string `json:"c"`
	Version  string `json:"v,omitempty"`
	Raft     string `json:"r,omitempty"`  // raft address
	API      string `json:"a,omitempty"`  // REST API address
	PG       string `json:"p,omitempty"`  // PostgreSQL host:port
	Write    string `json:"pw,omitempty"` // proxy write address
	Read     string `json:"pr,omitempty"` // proxy read address
	Expect   int    `json:"e,omitempty"`  // bootstrap_expect
	HasRaft  bool   `json:"hr,omitempty"` // has a Raft configuration
	Join     bool   `json:"j,omitempty"`  // asks the leader to add it to Raft
	Leaving  bool   `json:"l,omitempty"`  // leaving: do not re-add
	Seen     string `json:"ss,omitempty"` // hash of the bootstrap candidates this node sees
	Witness  bool   `json:"wi,omitempty"` // no PostgreSQL
	Role     string `json:"ro,omitempty"` // primary, replica, or empty
	PGState  string `json:"st,omitempty"` // running, streaming, stopped, cloning...
	Timeline uint32 `json:"tl,omitempty"`
	WAL      uint64 `json:"w,omitempty"`  // primary: current LSN; replica: replay LSN
	Recv     uint64 `json:"rv,omitempty"` // replica: receive LSN
	SysID    uint64 `json:"sy,omitempty"` // system identifier of the local data dir
	NoFail   bool   `json:"nf,omitempty"`
	NoLB     bool   `json:"nl,omitempty"`
	Priority int    `json:"fp,omitempty"`
	Pending  bool   `json:"rp,omitempty"` // restart pending
	Err      string `json:"x,omitempty"`  // last error, shortened
	At       int64  `json:"t,omitempty"`  // unix ms when the status was read
}

// MaxMeta is memberlist's limit on node metadata.
const MaxMeta = memberlist.MetaMaxSize

// EncodeMeta marshals m, shortening Err so the result fits in MaxMeta.
func EncodeMeta(m Meta) ([]byte, error) {
	for {
		b, err := json.Marshal(m)
		if err != nil {
			return nil, err
		}
		if len(b) <= MaxMeta {
			return b, nil
		}
		if m.Err == "" {
			return nil, fmt.Errorf("gossip metadata is %d bytes, over memberlist's %d", len(b), MaxMeta)
		}
		cut := len(m.Err) - (len(b) - MaxMeta) - 3
		if cut < 0 {
			cut = 0
		}
		m.Err = m.Err[:cut] + "..."
		if cut == 0 {
			m.Err = ""
		}
	}
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
	return m, nil
}

// Member is one gossip peer as seen now.
type Member struct {
	Name   string
	Addr   string // gossip host:port
	Alive  bool   // false while suspected
	Meta   Meta
	MetaOK bool
}

// Options configures the gossip layer.
type Options struct {
	Name      string
	Cluster   string // memberlist label: other clusters' packets are dropped
	BindAddr  string // host:port
	Advertise string // host:port; default BindAddr
	Logger    *slog.Logger
	// LogOutput receives memberlist's own log lines.
	LogOutput io.Writer
}

// Gossip is the running memberlist plus pgha's delegates.
type Gossip struct {
	ml     *memberlist.Memberlist
	logger *slog.Logger
	meta   *metaDelegate
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
	// Faster than the LAN defaults: status changes (a new role, a
	// replica that starts streaming) should reach peers within ~200 ms.
	c.GossipInterval = 100 * time.Millisecond
	c.ProbeInterval = 500 * time.Millisecond
	c.ProbeTimeout = 250 * time.Millisecond
	c.PushPullInterval = 10 * time.Second
	if o.LogOutput != nil {
		c.Logger = log.New(o.LogOutput, "", log.LstdFlags)
	} else {
		c.LogOutput = io.Discard
	}

	ctx, cancel := context.WithCancel(context.Background())
	g := &Gossip{logger: o.Logger, events: make(chan struct{}, 1), ctx: ctx, cancel: cancel}
	g.meta = &metaDelegate{}
	if _, err := EncodeMeta(initial); err != nil {
		cancel()
		return nil, err
	}
	g.meta.set(initial)
	c.Delegate = g.meta
	c.Events = &eventDelegate{ch: g.events}
	ml, err := memberlist.Create(c)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("start gossip on %s: %w", o.BindAddr, err)
	}
	g.ml = ml
	return g, nil
}

// Join contacts the given gossip addresses and returns how many answered.
func (g *Gossip) Join(addrs []string) (int, error) {
	if len(addrs) == 0 {
		return 0, nil
	}
	n, err := g.ml.Join(addrs)
	if n > 0 {
		return n, nil
	}
	if err == nil {
		err = errors.New("no member answered")
	}
	return 0, fmt.Errorf("gossip join %v: %w", addrs, err)
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
		for {
			if g.ml.NumMembers() < 2 {
				n, err := g.Join(others)
				if n > 0 {
					g.logger.Info("gossip joined", "contacted", n, "members", g.ml.NumMembers())
					backoff = 200 * time.Millisecond
				} else {
					g.logger.Debug("gossip join retry", "err", err)
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
	if !g.meta.set(m) {
		return nil
	}
	// UpdateNode broadcasts the new metadata; its timeout only bounds the
	// wait for the broadcast to be queued, it never blocks the caller long.
	if err := g.ml.UpdateNode(time.Second); err != nil {
		return fmt.Errorf("gossip update: %w", err)
	}
	return nil
}

// LocalMeta returns the metadata this node publishes.
func (g *Gossip) LocalMeta() Meta { return g.meta.get() }

// Members returns the live (alive or suspect) members, sorted by name.
func (g *Gossip) Members() []Member {
	nodes := g.ml.Members()
	out := make([]Member, 0, len(nodes))
	for _, n := range nodes {
		m := Member{Name: n.Name, Addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))), Alive: n.State == memberlist.StateAlive}
		if meta, err := DecodeMeta(n.Meta); err == nil {
			m.Meta, m.MetaOK = meta, true
		}
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
	mu   sync.Mutex
	meta Meta
	raw  []byte
}

// set stores m and reports whether the encoded form changed.
func (d *metaDelegate) set(m Meta) bool {
	b, err := EncodeMeta(m)
	if err != nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.meta = m
	if string(b) == string(d.raw) {
		return false
	}
	d.raw = b
	return true
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
func (d *metaDelegate) NotifyMsg([]byte)                           {}
func (d *metaDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *metaDelegate) LocalState(join bool) []byte                { return nil }
func (d *metaDelegate) MergeRemoteState(buf []byte, join bool)     {}

// eventDelegate turns memberlist events into a coalesced wake-up. It must
// not block: memberlist calls it with its own locks held.
type eventDelegate struct{ ch chan struct{} }

func (e *eventDelegate) poke() {
	select {
	case e.ch <- struct{}{}:
	default:
	}
}
func (e *eventDelegate) NotifyJoin(*memberlist.Node)   { e.poke() }
func (e *eventDelegate) NotifyLeave(*memberlist.Node)  { e.poke() }
func (e *eventDelegate) NotifyUpdate(*memberlist.Node) { e.poke() }

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
