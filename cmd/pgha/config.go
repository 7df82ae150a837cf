package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/urfave/cli/v2"
)

func showConfigCommand() *cli.Command {
	return readCommand("show-config", "print the cluster-wide dynamic configuration kept in Raft",
		func(ctx context.Context, cl *api.Client) (api.DynamicConfig, error) { return cl.Config(ctx) }, printConfig)
}

func printConfig(w io.Writer, dc api.DynamicConfig) {
	fmt.Fprintf(w, "maximum_lag_on_failover: %d\n", dc.MaximumLagOnFailover)
	fmt.Fprintf(w, "synchronous_mode: %v\n", dc.SynchronousMode)
	fmt.Fprintf(w, "synchronous_mode_strict: %v\n", dc.SynchronousModeStrict)
	fmt.Fprintf(w, "synchronous_node_count: %d\n", dc.SynchronousNodeCount)
	fmt.Fprintf(w, "primary_unresponsive_timeout: %d\n", dc.PrimaryUnresponsiveTimeout)
	fmt.Fprintf(w, "primary_start_timeout: %d\n", dc.PrimaryStartTimeout)
	fmt.Fprintf(w, "pause: %v\n", dc.Pause)
	fmt.Fprintln(w, "postgresql:")
	fmt.Fprintln(w, "  parameters:")
	keys := make([]string, 0, len(dc.PostgreSQL.Parameters))
	for k := range dc.PostgreSQL.Parameters {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "    %s: %q\n", k, dc.PostgreSQL.Parameters[k])
	}
}

func editConfigCommand() *cli.Command {
	return &cli.Command{
		Name:      "edit-config",
		Usage:     "change the dynamic configuration through Raft: --set key=value, --pg name=value (name= removes it)",
		ArgsUsage: " ",
		Flags: append(clientFlags(),
			&cli.StringSliceFlag{Name: "set", Usage: "`KEY=VALUE` of the dynamic configuration (maximum_lag_on_failover, synchronous_mode, synchronous_mode_strict, synchronous_node_count, primary_unresponsive_timeout, primary_start_timeout)"},
			&cli.StringSliceFlag{Name: "pg", Usage: "PostgreSQL parameter `NAME=VALUE` for every member; NAME= removes it"},
			outputFlag()),
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			format, err := outputFormat(c)
			if err != nil {
				return err
			}
			patch, err := buildPatch(c.StringSlice("set"), c.StringSlice("pg"))
			if err != nil {
				return err
			}
			cl, err := apiClient(c)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(c.Context, 15*time.Second)
			defer cancel()
			dc, err := cl.PatchConfig(ctx, patch)
			if err != nil {
				return err
			}
			if format == "json" {
				return printJSON(stdout(), dc)
			}
			fmt.Fprintln(stdout(), "configuration changed; members apply it within a second (a reload, or \"pending restart\" in pgha list)")
			printConfig(stdout(), dc)
			return nil
		},
	}
}

// buildPatch turns --set and --pg flags into a JSON merge patch. Values
// that parse as JSON (true, 3, "x") are sent as such, others as strings.
func buildPatch(sets, pgs []string) (map[string]any, error) {
	patch := map[string]any{}
	for _, kv := range sets {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usagef("--set %q: want KEY=VALUE", kv)
		}
		var parsed any
		if err := json.Unmarshal([]byte(v), &parsed); err != nil {
			parsed = v
		}
		patch[k] = parsed
	}
	if len(pgs) > 0 {
		params := map[string]any{}
		for _, kv := range pgs {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return nil, usagef("--pg %q: want NAME=VALUE (NAME= removes it)", kv)
			}
			if v == "" {
				params[k] = nil
			} else {
				params[k] = v
			}
		}
		patch["postgresql"] = map[string]any{"parameters": params}
	}
	if len(patch) == 0 {
		return nil, usagef("nothing to change: give --set KEY=VALUE or --pg NAME=VALUE")
	}
	return patch, nil
}

// memberCommand builds restart/reload: on NAME, or on every member
// (replicas first) when NAME is omitted.
func memberCommand(name, usage string, do func(*api.Client, context.Context) error) *cli.Command {
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "[NAME]",
		Flags:     clientFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return usagef("%s takes at most one member NAME", name)
			}
			cl, err := apiClient(c)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(c.Context, 3*time.Minute)
			defer cancel()
			ci, err := cl.Cluster(ctx)
			if err != nil {
				return err
			}
			var targets []api.MemberInfo
			for _, m := range ci.Members {
				if m.Role == "witness" || m.API == "" {
					continue
				}
				if c.NArg() == 1 && m.Name != c.Args().First() {
					continue
				}
				targets = append(targets, m)
			}
			if len(targets) == 0 {
				return usagef("no member named %q", c.Args().First())
			}
			sort.SliceStable(targets, func(i, j int) bool { return targets[i].Role != "leader" && targets[j].Role == "leader" })
			for _, m := range targets {
				if err := do(cl.WithAddr(m.API), ctx); err != nil {
					return fmt.Errorf("%s on %s: %w", name, m.Name, err)
				}
				fmt.Fprintf(stdout(), "%s: %s done\n", m.Name, name)
			}
			return nil
		},
	}
}

func restartCommand() *cli.Command {
	return memberCommand("restart", "restart PostgreSQL on NAME, or on every member (replicas first)", func(cl *api.Client, ctx context.Context) error {
		return cl.Restart(ctx)
	})
}

func reloadCommand() *cli.Command {
	return memberCommand("reload", "reload PostgreSQL's configuration on NAME, or on every member", func(cl *api.Client, ctx context.Context) error {
		return cl.Reload(ctx)
	})
}

func reinitCommand() *cli.Command {
	cmd := memberCommand("reinit", "re-clone replica NAME from the primary (its old data directory is moved aside, not deleted)", func(cl *api.Client, ctx context.Context) error {
		return cl.Reinitialize(ctx)
	})
	cmd.ArgsUsage = "NAME"
	cmd.Before = func(c *cli.Context) error {
		if c.NArg() != 1 {
			return usagef("reinit takes the member NAME to re-clone")
		}
		return nil
	}
	return cmd
}
