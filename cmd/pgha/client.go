package main

import (
	"encoding/json"
	"io"
	"os"

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
