package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/config"
	"github.com/urfave/cli/v2"
)

// clientFlags are shared by every command that talks to an agent.
func clientFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "api", Usage: "REST API `ADDR` (host:port) of an agent [default: from --config, else 127.0.0.1:8008]", EnvVars: []string{"PGHA_API"}},
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "read the agent's API address from this configuration `FILE`", EnvVars: []string{"PGHA_CONFIG"}},
	}
}

// apiClient resolves which agent to talk to: --api, PGHA_API, the
// configuration file's api address, then the default.
func apiClient(c *cli.Context) (*api.Client, error) {
	if addr := c.String("api"); addr != "" {
		return api.NewClient(addr), nil
	}
	if path := c.String("config"); path != "" {
		cfg, err := config.LoadFile(path)
		if err != nil {
			return nil, err
		}
		cfg.Resolve()
		addr := cfg.API.Advertise
		if addr == "" {
			addr = cfg.API.Addr
		}
		return api.NewClient(addr), nil
	}
	return api.NewClient(config.Default().API.Addr), nil
}

// outputFlag is -o table|json.
func outputFlag() cli.Flag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "output `FORMAT`: table or json"}
}

func outputFormat(c *cli.Context) (string, error) {
	switch f := c.String("output"); f {
	case "table", "json":
		return f, nil
	default:
		return "", usagef("-o %q: use table or json", f)
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func stdout() io.Writer { return os.Stdout }

func noArgs(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("%s takes no arguments (got %q)", c.Command.Name, c.Args().Slice())
	}
	return nil
}

// call runs do against the agent chosen by --api/--config, within timeout.
func call(c *cli.Context, timeout time.Duration, do func(ctx context.Context, cl *api.Client) error) error {
	cl, err := apiClient(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, timeout)
	defer cancel()
	return do(ctx, cl)
}

// readCommand builds a command that fetches one thing from an agent and
// prints it: render for people, -o json for scripts.
func readCommand[T any](name, usage string, fetch func(context.Context, *api.Client) (T, error), render func(io.Writer, T)) *cli.Command {
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: " ",
		Flags:     append(clientFlags(), outputFlag()),
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			format, err := outputFormat(c)
			if err != nil {
				return err
			}
			return call(c, 10*time.Second, func(ctx context.Context, cl *api.Client) error {
				v, err := fetch(ctx, cl)
				if err != nil {
					return err
				}
				if format == "json" {
					return printJSON(stdout(), v)
				}
				render(stdout(), v)
				return nil
			})
		},
	}
}
