package config

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// ApplyEnv overlays PGHA_* variables from environ (os.Environ() format) on
// cfg. Lists are separated by KeyInfo.Sep (a comma, ";" for pg_hba lines);
// PGHA_POSTGRESQL_PARAMETERS="work_mem=8MB,shared_buffers=32MB" adds to or
// replaces individual parameters.
//
// Variables that are empty are ignored like unset ones, because container
// tooling often passes VAR= for "not configured". PGHA_* variables that
// are not settings (PGHA_CONFIG, typos) are ignored too: cmd owns some of
// them; see UnknownEnv to warn about the rest.
func ApplyEnv(cfg *Config, environ []string) error {
	var errs []error
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || value == "" {
			continue
		}
		f := schema.byEnv[name]
		if f == nil {
			continue
		}
		if err := cfg.set(f, f.Key, value, origin{source: name}); err != nil {
			errs = append(errs, err)
		}
	}
	return joinErrors(errs)
}

// UnknownEnv returns the PGHA_* variables in environ that are not
// settings, minus those listed in known (the ones cmd reads itself), so
// cmd can warn about likely typos.
func UnknownEnv(environ []string, known ...string) []string {
	var out []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, EnvPrefix) && schema.byEnv[name] == nil && !slices.Contains(known, name) {
			out = append(out, name)
		}
	}
	return out
}

// ApplyFlags overlays flag values on cfg. Keys are dotted keys without
// dashes ("raft.addr"); values are written as in env vars. A map entry can
// also be set alone: "postgresql.parameters.work_mem" -> "8MB". Only flags
// the user actually gave belong in the map, or their defaults would
// override the file and env. Errors name the flag ("--raft.addr").
func ApplyFlags(cfg *Config, flags map[string]string) error {
	keys := make([]string, 0, len(flags))
	for k := range flags {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic error order
	var errs []error
	for _, key := range keys {
		o := origin{source: "--" + key}
		f := schema.byKey[key]
		if f == nil || f.section {
			if mf, name := mapEntry(key); mf != nil {
				if err := cfg.setMapEntry(mf, name, flags[key], o); err != nil {
					errs = append(errs, err)
				}
				continue
			}
			errs = append(errs, o.errorf(key, ErrUnknownKey, "unknown key"))
			continue
		}
		if err := cfg.set(f, key, flags[key], o); err != nil {
			errs = append(errs, err)
		}
	}
	return joinErrors(errs)
}

// mapEntry splits "postgresql.parameters.work_mem" into the map setting
// and the entry name. Entry names may contain dots (extension parameters
// such as pg_stat_statements.max), so the longest map key prefix wins.
func mapEntry(key string) (*field, string) {
	for i := len(key) - 1; i > 0; i-- {
		if key[i] != '.' {
			continue
		}
		if f := schema.byKey[key[:i]]; f != nil && f.Kind == KindMap && i+1 < len(key) {
			return f, key[i+1:]
		}
	}
	return nil, ""
}

// set parses value for f and stores it, recording o as its origin.
func (c *Config) set(f *field, key, value string, o origin) error {
	v := c.leaf(f)
	switch f.Kind {
	case KindString:
		v.SetString(value)
	case KindInt:
		i, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
		if err != nil || v.OverflowInt(i) {
			return o.errorf(key, err, "invalid integer %s", quote(value))
		}
		v.SetInt(i)
	case KindBool:
		b, err := strconv.ParseBool(strings.TrimSpace(value))
		if err != nil {
			return o.errorf(key, err, "invalid boolean %s (use true or false)", quote(value))
		}
		v.SetBool(b)
	case KindDuration:
		d, msg, err := parseDuration(strings.TrimSpace(value))
		if err != nil {
			return o.errorf(key, err, "%s", msg)
		}
		v.Set(reflect.ValueOf(Duration{d}))
	case KindSize:
		b, err := ParseSize(value)
		if err != nil {
			return o.errorf(key, err, "invalid size %s: write e.g. 16MB, 512kB or a number of bytes", quote(value))
		}
		v.Set(reflect.ValueOf(Size{b}))
	case KindList:
		items := splitList(value, f.Sep)
		v.Set(reflect.ValueOf(items))
		c.forgetEntries(f.Key)
	case KindMap:
		entries, err := parseMapValue(value, f.Sep)
		if err != nil {
			return o.errorf(key, nil, "%v", err)
		}
		// Entries are merged rather than replacing the map: one variable
		// can then add work_mem without repeating the file's parameters.
		for _, e := range entries {
			if err := c.setMapEntry(f, e[0], e[1], o); err != nil {
				return err
			}
		}
		return nil
	default:
		return o.errorf(key, nil, "unsupported setting kind %s", f.Kind)
	}
	c.setOrigin(f.Key, o)
	return nil
}

func (c *Config) setMapEntry(f *field, name, value string, o origin) error {
	key := f.Key + "." + name
	if name == "" {
		return o.errorf(key, nil, "empty name")
	}
	v := c.leaf(f)
	// Copy before writing: the map may be shared with a Config this one
	// was copied from.
	m := make(map[string]string, v.Len()+1)
	if !v.IsNil() {
		maps.Copy(m, v.Interface().(map[string]string))
	}
	m[name] = value
	v.Set(reflect.ValueOf(m))
	c.setOrigin(key, o)
	return nil
}

// splitList splits a list value, trimming blanks around items and
// dropping empty ones so "a, b," is [a b].
func splitList(value, sep string) []string {
	items := []string{}
	for _, s := range strings.Split(value, sep) {
		if s = strings.TrimSpace(s); s != "" {
			items = append(items, s)
		}
	}
	return items
}

// parseMapValue parses "a=1,b=2" into name/value pairs. A piece without
// "=" continues the previous value, because parameter values are often
// lists themselves: "shared_preload_libraries=pg_stat_statements,auto_explain".
func parseMapValue(value, sep string) ([][2]string, error) {
	var out [][2]string
	for _, piece := range strings.Split(value, sep) {
		piece = strings.TrimSpace(piece)
		if piece == "" {
			continue
		}
		name, val, ok := strings.Cut(piece, "=")
		if !ok {
			if len(out) == 0 {
				return nil, fmt.Errorf("expected NAME=VALUE, got %s", quote(piece))
			}
			out[len(out)-1][1] += sep + piece
			continue
		}
		name = strings.TrimSpace(name)
		if name == "" {
			return nil, fmt.Errorf("expected NAME=VALUE, got %s", quote(piece))
		}
		out = append(out, [2]string{name, strings.TrimSpace(val)})
	}
	return out, nil
}
