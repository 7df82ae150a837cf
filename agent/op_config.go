package agent

// The cluster-wide dynamic configuration (GET and PATCH /config): kept
// in Raft, changed only through the leader.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/cluster"
	"github.com/pgha/pgha/config"
	"github.com/pgha/pgha/pgnode"
	"github.com/pgha/pgha/raftfsm"
)

func toAPIConfig(st raftfsm.State) api.DynamicConfig {
	c := st.Config
	params := map[string]string{}
	for k, v := range c.Parameters {
		params[k] = v
	}
	return api.DynamicConfig{
		MaximumLagOnFailover:       c.MaximumLagOnFailover,
		SynchronousMode:            c.SynchronousMode,
		SynchronousNodeCount:       c.SynchronousNodeCount,
		SynchronousModeStrict:      c.SynchronousModeStrict,
		PrimaryUnresponsiveTimeout: int(c.UnresponsiveTimeout() / time.Second),
		PrimaryStartTimeout:        int(c.StartTimeout() / time.Second),
		Pause:                      st.Paused,
		PostgreSQL:                 api.PostgreSQLConfig{Parameters: params},
	}
}

// PatchConfig merges a JSON merge patch (RFC 7386) into the dynamic
// configuration and commits it. Unknown keys and wrong types are 400s
// naming the key; null removes a PostgreSQL parameter.
func (a *Agent) PatchConfig(ctx context.Context, patch map[string]json.RawMessage) (api.DynamicConfig, error) {
	if !a.isLeader() {
		return api.DynamicConfig{}, cluster.ErrNotLeader
	}
	st := a.raft.ClusterState()
	cfg, paused, err := mergeConfig(st, patch)
	if err != nil {
		return api.DynamicConfig{}, cluster.Invalidf("%v", err)
	}
	if err := a.raft.Apply(raftfsm.SetConfig{Config: cfg}, applyTimeout); err != nil {
		return api.DynamicConfig{}, domainErr(err)
	}
	if paused != st.Paused {
		if err := a.raft.Apply(raftfsm.SetPaused{Paused: paused}, applyTimeout); err != nil {
			return api.DynamicConfig{}, domainErr(err)
		}
	}
	a.log.Info("dynamic configuration changed", "patch", patchKeys(patch))
	a.poke()
	return toAPIConfig(a.raft.ClusterState()), nil
}

func patchKeys(p map[string]json.RawMessage) string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}

// mergeConfig applies patch to the state's configuration; pure, so it is
// unit-testable.
func mergeConfig(st raftfsm.State, patch map[string]json.RawMessage) (raftfsm.DynamicConfig, bool, error) {
	cfg := st.Config
	params := map[string]string{}
	for k, v := range cfg.Parameters {
		params[k] = v
	}
	paused := st.Paused
	strict := func(key string, raw json.RawMessage, v any) error {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			return fmt.Errorf("%s: %v", key, err)
		}
		return nil
	}
	for key, raw := range patch {
		var err error
		switch key {
		case "maximum_lag_on_failover":
			err = decodeSize(key, raw, &cfg.MaximumLagOnFailover)
		case "synchronous_mode":
			err = strict(key, raw, &cfg.SynchronousMode)
		case "synchronous_mode_strict":
			err = strict(key, raw, &cfg.SynchronousModeStrict)
		case "synchronous_node_count":
			err = strict(key, raw, &cfg.SynchronousNodeCount)
			if err == nil && cfg.SynchronousNodeCount < 1 {
				err = fmt.Errorf("%s: must be at least 1", key)
			}
		case "primary_unresponsive_timeout":
			err = decodeSeconds(key, raw, 3, &cfg.PrimaryUnresponsiveTimeout)
		case "primary_start_timeout":
			err = decodeSeconds(key, raw, 5, &cfg.PrimaryStartTimeout)
		case "pause":
			err = strict(key, raw, &paused)
		case "postgresql":
			var pg map[string]json.RawMessage
			if err = strict(key, raw, &pg); err != nil {
				break
			}
			for sub, sraw := range pg {
				if sub != "parameters" {
					return cfg, paused, fmt.Errorf("unknown key postgresql.%s (only postgresql.parameters is dynamic)", sub)
				}
				var ps map[string]*json.RawMessage
				if err = strict("postgresql.parameters", sraw, &ps); err != nil {
					break
				}
				var refused []string
				for _, name := range sortedNames(ps) {
					v := ps[name]
					if v == nil || string(*v) == "null" {
						continue
					}
					val, _ := paramValue(*v)
					if why := pgnode.DynamicParameterProblem(name, val); why != "" {
						refused = append(refused, fmt.Sprintf("%q: %s", name, why))
					}
				}
				if len(refused) > 0 {
					return cfg, paused, fmt.Errorf("postgresql.parameters refused (never applied): %s", strings.Join(refused, "; "))
				}
				for name, v := range ps {
					if v == nil || string(*v) == "null" {
						delete(params, name)
						continue
					}
					val, perr := paramValue(*v)
					if perr != nil {
						return cfg, paused, fmt.Errorf("postgresql.parameters.%s: %v", name, perr)
					}
					params[name] = val
				}
			}
		default:
			return cfg, paused, fmt.Errorf("unknown key %q (dynamic keys: maximum_lag_on_failover, synchronous_mode, synchronous_mode_strict, synchronous_node_count, primary_unresponsive_timeout, primary_start_timeout, pause, postgresql.parameters)", key)
		}
		if err != nil {
			return cfg, paused, err
		}
	}
	if len(params) == 0 {
		params = nil
	}
	cfg.Parameters = params
	if cfg.SynchronousNodeCount == 0 {
		cfg.SynchronousNodeCount = 1
	}
	return cfg, paused, nil
}

// decodeSeconds accepts whole seconds (a number, or a duration such as
// "10s" or "2m") between least and an hour.
func decodeSeconds(key string, raw json.RawMessage, least int, out *int) error {
	var n float64
	if err := json.Unmarshal(raw, &n); err != nil {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return fmt.Errorf("%s: want seconds or a duration such as \"10s\"", key)
		}
		d, derr := time.ParseDuration(s)
		if derr != nil {
			return fmt.Errorf("%s: %v", key, derr)
		}
		n = d.Seconds()
	}
	if n != float64(int(n)) || int(n) < least || n > 3600 {
		return fmt.Errorf("%s: must be whole seconds between %d and 3600, got %v", key, least, n)
	}
	*out = int(n)
	return nil
}

// decodeSize accepts a number of bytes or a PostgreSQL-style size ("16MB").
func decodeSize(key string, raw json.RawMessage, out *int64) error {
	var n int64
	if err := json.Unmarshal(raw, &n); err == nil {
		if n < 0 {
			return fmt.Errorf("%s: must be >= 0", key)
		}
		*out = n
		return nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return fmt.Errorf("%s: want bytes or a size such as \"16MB\"", key)
	}
	v, err := config.ParseSize(s)
	if err != nil {
		return fmt.Errorf("%s: %v", key, err)
	}
	*out = v
	return nil
}

// paramValue turns a JSON string, number or boolean into a setting value.
func paramValue(raw json.RawMessage) (string, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", err
	}
	switch x := v.(type) {
	case string:
		return x, nil
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), nil
	case bool:
		if x {
			return "on", nil
		}
		return "off", nil
	default:
		return "", fmt.Errorf("want a string, number or boolean")
	}
}
