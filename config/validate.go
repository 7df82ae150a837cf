package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Resolve fills the defaults that depend on other settings. Load calls it
// after merging all sources; call it yourself when building a Config by
// other means. It is idempotent.
func (c *Config) Resolve() {
	if c.PostgreSQL.DataDir == "" && c.DataDir != "" {
		c.PostgreSQL.DataDir = filepath.Join(c.DataDir, "pgdata")
		c.inheritOrigin("postgresql.data_dir", "data_dir")
	}
	pg := &c.PostgreSQL
	// listen_addresses may be a list or a wildcard; then there is no
	// single address to give to others and Validate asks for one.
	if pg.ConnectAddress == "" && !wildcardHost(pg.Listen) && !strings.ContainsAny(pg.Listen, ", ") &&
		pg.Port > 0 && pg.Port <= 65535 {
		pg.ConnectAddress = net.JoinHostPort(pg.Listen, strconv.Itoa(pg.Port))
		c.inheritOrigin("postgresql.connect_address", "postgresql.listen")
	}
	c.defaultAdvertise(&c.Raft.Advertise, c.Raft.Addr, "raft")
	c.defaultAdvertise(&c.Gossip.Advertise, c.Gossip.Addr, "gossip")
	c.defaultAdvertise(&c.API.Advertise, c.API.Addr, "api")
	if len(pg.AllowedNetworks) == 0 {
		pg.AllowedNetworks = []string{"127.0.0.1/32", "::1/128"}
	}
}

// defaultAdvertise copies addr to *adv unless addr listens on every
// interface, which is no address a peer could dial.
func (c *Config) defaultAdvertise(adv *string, addr, section string) {
	if *adv != "" {
		return
	}
	// An invalid addr is reported once, on addr, not again on a copy.
	if host, _, _ := net.SplitHostPort(addr); checkHostPort(addr, false) != "" || wildcardHost(host) {
		return
	}
	*adv = addr
	c.inheritOrigin(section+".advertise", section+".addr")
}

// inheritOrigin makes a derived value cite the setting it came from.
func (c *Config) inheritOrigin(dst, src string) {
	if _, ok := c.origins[dst]; ok {
		return
	}
	if o, ok := c.origins[src]; ok {
		c.setOrigin(dst, o)
	}
}

// wildcardHost reports whether host means "all interfaces".
func wildcardHost(host string) bool {
	if host == "" || host == "*" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

var (
	// The name becomes part of a replication slot name, which PostgreSQL
	// limits to 63 bytes of lower-case letters, digits and '_'. '-' is
	// allowed because host names use it; slot naming must map it to '_'.
	nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	// A PostgreSQL size: an integer with an optional memory unit (the
	// default unit of max_slot_wal_keep_size is MB), or -1 for no limit.
	pgSizeRE = regexp.MustCompile(`^(-1|[0-9]+ *(B|kB|MB|GB|TB)?)$`)
	// A GUC name, optionally prefixed with an extension name.
	paramNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$`)
)

// managedParams are postgresql.conf settings pgha writes itself (from a
// dedicated key or from cluster state); setting them in parameters would
// fight the agent.
var managedParams = map[string]string{
	"port":                   "set postgresql.port",
	"listen_addresses":       "set postgresql.listen",
	"data_directory":         "set postgresql.data_dir",
	"max_slot_wal_keep_size": "set postgresql.max_slot_wal_keep_size",
	"hba_file":               "pgha manages pg_hba.conf; use postgresql.pg_hba",
	"config_file":            "pgha manages postgresql.conf",
	"primary_conninfo":       "pgha manages replication",
	"primary_slot_name":      "pgha manages replication",
}

// Raft refuses timeouts below this (raft.ValidateConfig).
const minRaftTimeout = 5 * time.Millisecond

// Validate checks the merged configuration. Call Resolve first. Every
// problem is reported, as *Error values that cite the file line, env var
// or flag the value came from.
func (c *Config) Validate() error {
	v := &validator{c: c}

	switch {
	case c.Name == "":
		v.fail("name", "required")
	case !nameRE.MatchString(c.Name):
		v.fail("name", "invalid name %s: use 1-63 lower-case letters, digits, '_' or '-', starting with a letter or digit (it is part of a replication slot name)", quote(c.Name))
	}
	switch {
	case c.Cluster == "":
		v.fail("cluster", "required")
	case len(c.Cluster) > 63:
		// It travels in every gossip status, which must fit 512 bytes.
		v.fail("cluster", "longer than 63 bytes")
	}
	if c.DataDir == "" {
		v.fail("data_dir", "required")
	}
	if c.BootstrapExpect < 0 {
		v.fail("bootstrap_expect", "must be 0 (join only) or more, got %d", c.BootstrapExpect)
	}
	v.oneOf("log_level", c.LogLevel, "debug", "info", "warn", "error")
	v.oneOf("log_format", c.LogFormat, "text", "json")

	v.listenAddr("raft.addr", c.Raft.Addr)
	v.advertiseAddr("raft.advertise", c.Raft.Advertise, "raft.addr", c.Raft.Addr)
	v.raftTimeouts()
	if c.Raft.SnapshotThreshold <= 0 {
		v.fail("raft.snapshot_threshold", "must be positive, got %d", c.Raft.SnapshotThreshold)
	}

	v.listenAddr("gossip.addr", c.Gossip.Addr)
	v.advertiseAddr("gossip.advertise", c.Gossip.Advertise, "gossip.addr", c.Gossip.Addr)
	for i, a := range c.Gossip.Join {
		if msg := checkHostPort(a, true); msg != "" {
			v.failAt(fmt.Sprintf("gossip.join[%d]", i), "gossip.join", "entry %d: %s", i+1, msg)
		}
	}

	v.listenAddr("api.addr", c.API.Addr)
	v.advertiseAddr("api.advertise", c.API.Advertise, "api.addr", c.API.Addr)

	v.postgres()

	v.listenAddr("proxy.write_addr", c.Proxy.WriteAddr)
	v.listenAddr("proxy.read_addr", c.Proxy.ReadAddr)
	if c.Proxy.HoldTimeout.Duration <= 0 {
		v.fail("proxy.hold_timeout", "must be positive, got %s", c.Proxy.HoldTimeout.Duration)
	}
	if c.Proxy.MaxConn < 1 {
		v.fail("proxy.max_conn", "must be at least 1, got %d", c.Proxy.MaxConn)
	}
	if c.Proxy.EventLoops < 0 || c.Proxy.EventLoops > 64 {
		v.fail("proxy.event_loops", "must be between 0 and 64, got %d", c.Proxy.EventLoops)
	}
	v.proxyNetworks()

	if c.Tags.FailoverPriority < 0 {
		v.fail("tags.failover_priority", "must be 0 or more, got %d", c.Tags.FailoverPriority)
	}

	v.validateSecurity()
	v.portConflicts()
	v.controlChars()
	return joinErrors(v.errs)
}

type validator struct {
	c    *Config
	errs []error
}

func (v *validator) fail(key, format string, args ...any) {
	v.failAt(key, key, format, args...)
}

// failAt reports a problem with key, located where originKey was set (a
// list entry, or the setting a derived value came from).
func (v *validator) failAt(originKey, key, format string, args ...any) {
	v.errs = append(v.errs, v.c.originOf(originKey).errorf(key, nil, format, args...))
}

func (v *validator) oneOf(key, val string, allowed ...string) {
	for _, a := range allowed {
		if val == a {
			return
		}
	}
	v.fail(key, "invalid value %s: use %s", quote(val), strings.Join(allowed, ", "))
}

// checkHostPort returns why s is not a usable host:port, or "". A dialed
// address needs a concrete host; a listen address may leave it empty.
func checkHostPort(s string, dialed bool) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return fmt.Sprintf("invalid address %s: %s", quote(s), ae.Err)
		}
		return fmt.Sprintf("invalid address %s: %v", quote(s), err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Sprintf("invalid address %s: port must be 1-65535", quote(s))
	}
	if host == "*" {
		// Fine for listen_addresses, but Go's listeners do not know it.
		return fmt.Sprintf("invalid address %s: write 0.0.0.0 or leave the host empty for all interfaces", quote(s))
	}
	if dialed && wildcardHost(host) {
		return fmt.Sprintf("invalid address %s: needs a host others can reach, not a wildcard", quote(s))
	}
	return ""
}

func (v *validator) listenAddr(key, addr string) {
	if addr == "" {
		v.fail(key, "required")
		return
	}
	if msg := checkHostPort(addr, false); msg != "" {
		v.fail(key, "%s", msg)
	}
}

// advertiseAddr checks an advertised address. When it is empty, Resolve
// could not derive it from a wildcard listen address, so the error points
// at that address's origin.
func (v *validator) advertiseAddr(key, adv, addrKey, addr string) {
	if adv == "" {
		host, _, _ := net.SplitHostPort(addr)
		switch {
		case checkHostPort(addr, false) != "":
			// Reported on addr.
		case wildcardHost(host):
			v.failAt(addrKey, key, "required because %s %s listens on all interfaces", addrKey, quote(addr))
		default:
			v.fail(key, "required (Resolve fills it in from %s)", addrKey)
		}
		return
	}
	if msg := checkHostPort(adv, true); msg != "" {
		v.fail(key, "%s", msg)
	}
}

func (v *validator) raftTimeouts() {
	r := v.c.Raft
	ok := true
	for _, t := range []struct {
		key string
		d   time.Duration
	}{
		{"raft.heartbeat_timeout", r.HeartbeatTimeout.Duration},
		{"raft.election_timeout", r.ElectionTimeout.Duration},
		{"raft.leader_lease_timeout", r.LeaderLeaseTimeout.Duration},
	} {
		if t.d < minRaftTimeout {
			v.fail(t.key, "must be at least %s, got %s", minRaftTimeout, t.d)
			ok = false
		}
	}
	if !ok {
		return
	}
	// hashicorp/raft refuses to start otherwise; say so now, with the
	// line to fix, instead of failing at Raft start-up.
	if r.LeaderLeaseTimeout.Duration > r.HeartbeatTimeout.Duration {
		v.fail("raft.leader_lease_timeout", "%s is longer than raft.heartbeat_timeout (%s)", r.LeaderLeaseTimeout, r.HeartbeatTimeout)
	}
	if r.ElectionTimeout.Duration < r.HeartbeatTimeout.Duration {
		v.fail("raft.election_timeout", "%s is shorter than raft.heartbeat_timeout (%s)", r.ElectionTimeout, r.HeartbeatTimeout)
	}
}

func (v *validator) postgres() {
	pg := v.c.PostgreSQL
	if pg.Port < 1 || pg.Port > 65535 {
		v.fail("postgresql.port", "must be 1-65535, got %d", pg.Port)
	}
	// Without data_dir there is nothing to derive from; that is reported
	// once, on data_dir.
	if pg.DataDir == "" && v.c.DataDir != "" {
		v.fail("postgresql.data_dir", "required")
	}
	switch {
	case pg.ConnectAddress == "" && (pg.Port < 1 || pg.Port > 65535):
		// Reported on postgresql.port: there was nothing to derive from.
	case pg.ConnectAddress == "" && (wildcardHost(pg.Listen) || strings.ContainsAny(pg.Listen, ", ")):
		v.failAt("postgresql.listen", "postgresql.connect_address",
			"required because postgresql.listen %s is not a single address others can reach", quote(pg.Listen))
	case pg.ConnectAddress == "":
		v.fail("postgresql.connect_address", "required (Resolve fills it in from postgresql.listen)")
	default:
		if msg := checkHostPort(pg.ConnectAddress, true); msg != "" {
			v.fail("postgresql.connect_address", "%s", msg)
		}
	}
	if pg.Superuser.Username == "" {
		v.fail("postgresql.superuser.username", "required")
	}
	if pg.Replication.Username == "" {
		v.fail("postgresql.replication.username", "required")
	}
	for _, name := range sortedKeys(pg.Parameters) {
		key := "postgresql.parameters." + name
		if !paramNameRE.MatchString(name) {
			v.fail(key, "invalid parameter name %s", quote(name))
		} else if hint, ok := managedParams[strings.ToLower(name)]; ok {
			v.fail(key, "managed by pgha: %s", hint)
		}
	}
	v.cidrs("postgresql.allowed_networks", pg.AllowedNetworks)
	if v.c.TLS.Enabled() {
		// With TLS, every TCP door of PostgreSQL requires it; a user's
		// host or hostnossl line would open one without.
		for i, l := range pg.PgHBA {
			f := strings.Fields(l)
			if len(f) == 0 {
				continue
			}
			switch typ := strings.Trim(f[0], `"`); typ {
			case "host", "hostnossl", "hostgssenc", "hostnogssenc":
				v.failAt(fmt.Sprintf("postgresql.pg_hba[%d]", i), "postgresql.pg_hba",
					"entry %d: %s lines accept sessions without TLS while tls is set; write hostssl", i+1, typ)
			case "include", "include_if_exists", "include_dir":
				v.failAt(fmt.Sprintf("postgresql.pg_hba[%d]", i), "postgresql.pg_hba",
					"entry %d: %s is not allowed: pgha checks every line of pg_hba.conf, so write the lines here", i+1, typ)
			}
		}
	}
	if !pgSizeRE.MatchString(pg.MaxSlotWalKeepSize) {
		v.fail("postgresql.max_slot_wal_keep_size", "invalid size %s: write e.g. 4GB, 512MB or -1 (no limit)", quote(pg.MaxSlotWalKeepSize))
	}
	if pg.StartTimeout.Duration <= 0 {
		v.fail("postgresql.start_timeout", "must be positive, got %s", pg.StartTimeout)
	}
}

// cidrs checks a list of networks.
func (v *validator) cidrs(key string, list []string) {
	for i, n := range list {
		originKey := fmt.Sprintf("%s[%d]", key, i)
		p, err := netip.ParsePrefix(n)
		switch {
		case err != nil:
			v.failAt(originKey, key, "entry %d: invalid CIDR %s (write e.g. 10.0.0.0/8 or 10.1.2.3/32)", i+1, quote(n))
		case p.Masked() != p:
			// PostgreSQL ignores the host bits; someone who wrote
			// 10.1.2.3/8 most likely meant a single host, not a /8.
			v.failAt(originKey, key, "entry %d: %s has host bits set; write %s for the network or %s for one host",
				i+1, quote(n), p.Masked(), netip.PrefixFrom(p.Addr(), p.Addr().BitLen()))
		}
	}
}

// proxyNetworks checks that proxy.allowed_networks only narrows
// postgresql.allowed_networks: the proxy must not let through a client
// PostgreSQL itself would refuse.
func (v *validator) proxyNetworks() {
	var outer []netip.Prefix // postgres() reports the bad ones
	for _, n := range v.c.PostgreSQL.AllowedNetworks {
		if p, err := netip.ParsePrefix(n); err == nil {
			outer = append(outer, p)
		}
	}
	v.cidrs("proxy.allowed_networks", v.c.Proxy.AllowedNetworks)
	for i, n := range v.c.Proxy.AllowedNetworks {
		p, err := netip.ParsePrefix(n)
		if err != nil || p.Masked() != p {
			continue // reported by cidrs
		}
		inside := false
		for _, o := range outer {
			if o.Bits() <= p.Bits() && o.Contains(p.Addr()) {
				inside = true
				break
			}
		}
		if !inside {
			v.failAt(fmt.Sprintf("proxy.allowed_networks[%d]", i), "proxy.allowed_networks",
				"entry %d: %s is not inside postgresql.allowed_networks (%s): the proxy would let through clients PostgreSQL refuses",
				i+1, p, strings.Join(v.c.PostgreSQL.AllowedNetworks, ", "))
		}
	}
}

// ProxyAllowed is the proxy's client allow list: proxy.allowed_networks
// when set, else postgresql.allowed_networks. Call after Validate.
func (c *Config) ProxyAllowed() []netip.Prefix {
	list := c.Proxy.AllowedNetworks
	if len(list) == 0 {
		list = c.PostgreSQL.AllowedNetworks
	}
	var out []netip.Prefix
	for _, n := range list {
		if p, err := netip.ParsePrefix(n); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// portConflicts reports two listeners of this node on the same port,
// which would otherwise surface as "address already in use" at start-up,
// after half the agent is running.
func (v *validator) portConflicts() {
	c := v.c
	type listener struct{ key, host, port string }
	var ls []listener
	add := func(key, addr string) {
		if host, port, err := net.SplitHostPort(addr); err == nil {
			ls = append(ls, listener{key, host, port})
		}
	}
	add("raft.addr", c.Raft.Addr)
	add("gossip.addr", c.Gossip.Addr)
	add("api.addr", c.API.Addr)
	add("proxy.write_addr", c.Proxy.WriteAddr)
	add("proxy.read_addr", c.Proxy.ReadAddr)
	for _, h := range strings.Split(c.PostgreSQL.Listen, ",") {
		if h = strings.TrimSpace(h); h == "" {
			continue // no TCP listener (Unix socket only)
		}
		add("postgresql.port", net.JoinHostPort(h, strconv.Itoa(c.PostgreSQL.Port)))
	}
	for i, a := range ls {
		for _, b := range ls[:i] {
			if a.key != b.key && a.port == b.port && (a.host == b.host || wildcardHost(a.host) || wildcardHost(b.host)) {
				v.fail(a.key, "port %s is also used by %s", a.port, b.key)
				break
			}
		}
	}
}

// controlChars rejects control characters in every text setting: the
// values end up in postgresql.conf, pg_hba.conf, .pgpass and log lines,
// where a newline would inject a line. Tabs are fine (pg_hba columns).
func (v *validator) controlChars() {
	bad := func(s string) bool {
		return strings.ContainsFunc(s, func(r rune) bool { return (r < 0x20 && r != '\t') || r == 0x7f })
	}
	for _, f := range schema.leaves {
		val := v.c.leaf(f)
		switch f.Kind {
		case KindString:
			if bad(val.String()) {
				v.fail(f.Key, "contains a control character (newline?)")
			}
		case KindList:
			for i, s := range val.Interface().([]string) {
				if bad(s) {
					v.failAt(fmt.Sprintf("%s[%d]", f.Key, i), f.Key, "entry %d contains a control character (newline?)", i+1)
				}
			}
		case KindMap:
			m := val.Interface().(map[string]string)
			for _, k := range sortedKeys(m) {
				if bad(m[k]) {
					v.fail(f.Key+"."+k, "contains a control character (newline?)")
				}
			}
		}
	}
}

// sortedKeys gives map checks a stable order, so the same file always
// yields the same error list.
func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}
