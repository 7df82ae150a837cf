package config

import (
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Kind is the type of a configuration value, which decides how it is
// written in an env var or flag.
type Kind string

// Value kinds. Lists and maps are written in env vars and flags as
// separated items (see KeyInfo.Sep); maps as NAME=VALUE items.
const (
	KindString   Kind = "string"
	KindInt      Kind = "int"
	KindBool     Kind = "bool"
	KindDuration Kind = "duration"
	KindSize     Kind = "size"
	KindList     Kind = "list"
	KindMap      Kind = "map"
)

// KeyInfo describes one leaf setting.
type KeyInfo struct {
	// Key is the dotted YAML key, also the flag name: "raft.addr".
	Key string
	// Env is the environment variable: "PGHA_RAFT_ADDR".
	Env string
	// Kind is the value's type.
	Kind Kind
	// Sep separates list items and map entries in env vars and flags;
	// empty for scalar kinds.
	Sep string
	// Help is a one-line description.
	Help string
	// Default is the built-in default as it would be written in an env
	// var; derived defaults (see Resolve) are not shown here.
	Default string
	// Secret marks passwords: never print the value.
	Secret bool
}

// secretKeys are the settings, besides every "password", whose values are
// never printed (show-config, logs, error messages).
var secretKeys = map[string]bool{"api.auth": true, "api.token": true, "gossip.key": true}

// SecretFilePrefix marks a secret value read from a file: "file:/etc/pgha/key".
const SecretFilePrefix = "file:"

// EnvPrefix starts every environment variable the loader reads.
const EnvPrefix = "PGHA_"

var envReplacer = strings.NewReplacer(".", "_", "-", "_")

// EnvName returns the environment variable for a dotted key:
// "raft.addr" -> "PGHA_RAFT_ADDR".
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(envReplacer.Replace(key))
}

// Keys lists every leaf setting in struct order.
func Keys() []KeyInfo {
	out := make([]KeyInfo, len(schema.leaves))
	for i, f := range schema.leaves {
		out[i] = f.KeyInfo
	}
	return out
}

// help is the one-line description of each key, shown by --help. The field
// comments in config.go are the full story; keep these in step with them
// (a test fails when a key has no entry).
var help = map[string]string{
	"name":             "member name, unique and stable (lower-case; Raft ID, gossip name, slot suffix)",
	"cluster":          "cluster name; gossip from other clusters is refused",
	"data_dir":         "directory for Raft state, PostgreSQL data (pgdata/) and logs",
	"bootstrap_expect": "number of nodes that bootstrap a new cluster together; 0 = only join",
	"witness":          "Raft voter without PostgreSQL (never primary)",
	"log_level":        "log level: debug, info, warn or error",
	"log_format":       "log format: text or json",

	"raft.addr":                 "host:port the Raft transport listens on",
	"raft.advertise":            "host:port peers use to reach Raft (default raft.addr)",
	"raft.heartbeat_timeout":    "Raft heartbeat timeout, e.g. 1s",
	"raft.election_timeout":     "Raft election timeout, e.g. 1s (>= heartbeat timeout)",
	"raft.leader_lease_timeout": "Raft leader lease, e.g. 500ms (<= heartbeat timeout)",
	"raft.snapshot_threshold":   "Raft log entries between snapshots",

	"gossip.addr":      "host:port memberlist binds (TCP and UDP)",
	"gossip.advertise": "host:port peers use to reach gossip (default gossip.addr)",
	"gossip.join":      "gossip addresses (host:port) of members to contact at start",
	"gossip.key":       "gossip encryption key, base64 of 16/24/32 bytes (pgha keygen); file:PATH reads it from a file",

	"api.addr":          "host:port the REST API listens on",
	"api.advertise":     "host:port members and the CLI use for the REST API (default api.addr)",
	"api.auth":          "USER:PASSWORD required (HTTP basic auth) by mutating endpoints and joins; file:PATH reads it from a file",
	"api.token":         "bearer token accepted like api.auth; file:PATH reads it from a file",
	"api.protect_reads": "require credentials on read endpoints too (health endpoints stay open)",

	"postgresql.bin_dir":                "directory of initdb, postgres, pg_basebackup (default: pg_config --bindir)",
	"postgresql.data_dir":               "PostgreSQL data directory (default data_dir/pgdata)",
	"postgresql.listen":                 "PostgreSQL listen_addresses",
	"postgresql.port":                   "PostgreSQL port",
	"postgresql.connect_address":        "host:port others use to reach this PostgreSQL (default listen:port)",
	"postgresql.os_user":                "OS user that runs PostgreSQL when the agent runs as root",
	"postgresql.superuser.username":     "PostgreSQL superuser role",
	"postgresql.superuser.password":     "PostgreSQL superuser password",
	"postgresql.replication.username":   "PostgreSQL replication role",
	"postgresql.replication.password":   "PostgreSQL replication password",
	"postgresql.parameters":             "extra postgresql.conf settings, NAME=VALUE",
	"postgresql.pg_hba":                 "extra pg_hba.conf lines, after the managed ones",
	"postgresql.allowed_networks":       "CIDRs allowed to connect with a password (default loopback)",
	"postgresql.max_slot_wal_keep_size": "WAL a replication slot may retain, e.g. 4GB (-1: unlimited)",
	"postgresql.start_timeout":          "time allowed for PostgreSQL to start, crash recovery included",

	"proxy.write_addr":            "host:port of the proxy port that leads to the primary",
	"proxy.read_addr":             "host:port of the proxy port that leads to replicas",
	"proxy.hold_timeout":          "how long a new write connection waits for a primary before it is refused",
	"proxy.max_replica_lag":       "replicas further behind than this (e.g. 16MB) leave the read port",
	"proxy.read_fallback_primary": "send reads to the primary when no replica is healthy",
	"proxy.max_conn":              "client connection limit of each proxy port",
	"proxy.allowed_networks":      "client CIDRs the proxy relays for (default and upper bound: postgresql.allowed_networks)",
	"proxy.event_loops":           "event loops (each a goroutine with its own epoll set) that copy the proxied bytes (default 1; 0: two goroutines per connection)",

	"tls.ca_file":   "PEM file of the cluster CA; peers must present a certificate it signed",
	"tls.cert_file": "PEM certificate of this node (Raft, API and PostgreSQL server and client)",
	"tls.key_file":  "PEM private key of tls.cert_file",

	"tags.nofailover":        "never promote this member",
	"tags.noloadbalance":     "keep this member out of the read proxy",
	"tags.failover_priority": "preference among promotion candidates (higher is preferred)",
}

// listSep overrides the comma for lists whose items may contain commas:
// a pg_hba line can list databases or users as "db1,db2".
var listSep = map[string]string{
	"postgresql.pg_hba": ";",
}

// field is a node of the key tree: a section (struct) or a leaf.
type field struct {
	KeyInfo
	index   []int // reflect index path from Config
	section bool
}

type keySchema struct {
	leaves []*field
	byKey  map[string]*field // leaves and sections
	byEnv  map[string]*field // leaves
}

// schema is derived from the struct tags once, so a new field gets a key,
// env var and flag without further code.
var schema = buildSchema()

var (
	durationType = reflect.TypeFor[Duration]()
	sizeType     = reflect.TypeFor[Size]()
)

func buildSchema() *keySchema {
	s := &keySchema{byKey: map[string]*field{}, byEnv: map[string]*field{}}
	s.walk(reflect.TypeFor[Config](), nil, "", reflect.ValueOf(Default()))
	return s
}

// walk panics on a field it cannot handle: that is a programming error in
// config.go, caught by the package tests before it can ship.
func (s *keySchema) walk(t reflect.Type, index []int, prefix string, def reflect.Value) {
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			panic(fmt.Sprintf("config: field %s.%s has no yaml tag", t.Name(), sf.Name))
		}
		key := joinKey(prefix, name)
		f := &field{index: append(slices.Clip(index), i)}
		f.Key = key
		s.byKey[key] = f
		if sf.Type.Kind() == reflect.Struct && sf.Type != durationType && sf.Type != sizeType {
			f.section = true
			s.walk(sf.Type, f.index, key, def.Field(i))
			continue
		}
		f.Kind = kindOf(sf.Type)
		if f.Kind == "" {
			panic(fmt.Sprintf("config: field %s.%s has unsupported type %s", t.Name(), sf.Name, sf.Type))
		}
		if f.Kind == KindList || f.Kind == KindMap {
			f.Sep = ","
			if sep, ok := listSep[key]; ok {
				f.Sep = sep
			}
		}
		f.Env = EnvName(key)
		f.Help = help[key]
		f.Secret = name == "password" || secretKeys[key]
		f.Default = formatValue(def.Field(i), f)
		if other, dup := s.byEnv[f.Env]; dup {
			panic(fmt.Sprintf("config: keys %s and %s share env var %s", other.Key, key, f.Env))
		}
		s.byEnv[f.Env] = f
		s.leaves = append(s.leaves, f)
	}
}

func kindOf(t reflect.Type) Kind {
	switch {
	case t == durationType:
		return KindDuration
	case t == sizeType:
		return KindSize
	case t.Kind() == reflect.String:
		return KindString
	case t.Kind() == reflect.Int:
		return KindInt
	case t.Kind() == reflect.Bool:
		return KindBool
	// Exact types only: the code handles lists and maps as []string and
	// map[string]string; a named type would need conversions everywhere.
	case t == reflect.TypeFor[[]string]():
		return KindList
	case t == reflect.TypeFor[map[string]string]():
		return KindMap
	}
	return ""
}

// formatValue writes v as it would be given in an env var.
func formatValue(v reflect.Value, f *field) string {
	switch f.Kind {
	case KindString:
		return v.String()
	case KindInt:
		return strconv.FormatInt(v.Int(), 10)
	case KindBool:
		return strconv.FormatBool(v.Bool())
	case KindDuration:
		return v.Interface().(Duration).String()
	case KindSize:
		return v.Interface().(Size).String()
	case KindList:
		return strings.Join(v.Interface().([]string), f.Sep)
	case KindMap:
		m := v.Interface().(map[string]string)
		items := make([]string, 0, len(m))
		for k, val := range m {
			items = append(items, k+"="+val)
		}
		sort.Strings(items)
		return strings.Join(items, f.Sep)
	}
	return ""
}

func joinKey(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// leaf returns the settable value of f inside c.
func (c *Config) leaf(f *field) reflect.Value {
	return reflect.ValueOf(c).Elem().FieldByIndex(f.index)
}

// setOrigin records where key was set, creating the map on first use so
// that a Config built by hand (Default()) works too.
func (c *Config) setOrigin(key string, o origin) {
	if c.origins == nil {
		c.origins = map[string]origin{}
	}
	c.origins[key] = o
}

// originOf returns where key was set; a list entry "key[i]" falls back to
// the list's own origin.
func (c *Config) originOf(key string) origin {
	if o, ok := c.origins[key]; ok {
		return o
	}
	if base, _, ok := strings.Cut(key, "["); ok {
		return c.origins[base]
	}
	return origin{}
}

// forgetEntries drops the per-entry origins of a list or map that is being
// replaced, so that validation does not cite lines that no longer apply.
func (c *Config) forgetEntries(key string) {
	for k := range c.origins {
		if strings.HasPrefix(k, key+"[") || strings.HasPrefix(k, key+".") {
			delete(c.origins, k)
		}
	}
}
