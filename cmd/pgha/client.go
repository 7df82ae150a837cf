package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/config"
	"github.com/pgha/pgha/tlsconf"
	"github.com/urfave/cli/v2"
)

// clientFlags are shared by every command that talks to an agent.
func clientFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "api", Usage: "REST API `ADDR` (host:port or URL) of an agent [default: from --config, else 127.0.0.1:8008]", EnvVars: []string{"PGHA_API"}},
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "read the agent's API address, credentials and TLS files from this configuration `FILE`", EnvVars: []string{"PGHA_CONFIG"}},
		&cli.StringFlag{Name: "api-auth", Usage: "`USER:PASSWORD` for the API's basic auth (file:PATH reads it from a file)", EnvVars: []string{"PGHA_API_AUTH"}},
		&cli.StringFlag{Name: "api-token", Usage: "bearer `TOKEN` for the API (file:PATH reads it from a file)", EnvVars: []string{"PGHA_API_TOKEN"}},
		&cli.StringFlag{Name: "ca-file", Usage: "verify the agent's https certificate with this CA `FILE` (turns https on)", EnvVars: []string{"PGHA_TLS_CA_FILE"}},
		&cli.BoolFlag{Name: "insecure", Usage: "https without verifying the agent's certificate (testing only)"},
	}
}

// apiClient resolves which agent to talk to and how: the address from
// --api, PGHA_API, the configuration file's api address, then the
// default; credentials from --api-auth/--api-token (or their variables),
// else the configuration file's; https when --ca-file or --insecure is
// given or the configuration file has TLS.
func apiClient(c *cli.Context) (*api.Client, error) {
	addr := c.String("api")
	var cfg *config.Config
	if path := c.String("config"); path != "" {
		var err error
		if cfg, err = config.LoadFile(path); err != nil {
			return nil, err
		}
		if err := cfg.ReadSecretFiles(); err != nil {
			return nil, err
		}
		cfg.Resolve()
		if addr == "" {
			addr = cfg.API.Advertise
			if addr == "" {
				addr = cfg.API.Addr
			}
		}
	}
	if addr == "" {
		addr = config.Default().API.Addr
	}
	if !strings.Contains(addr, "://") {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			// "--api db1": the API's default port, not http's 80.
			_, port, _ := net.SplitHostPort(config.Default().API.Addr)
			addr = net.JoinHostPort(addr, port)
		}
	}
	var o api.ClientOptions
	var err error
	if o.Auth, err = secretFlag(c, "api-auth"); err != nil {
		return nil, err
	}
	if o.Token, err = secretFlag(c, "api-token"); err != nil {
		return nil, err
	}
	if o.Auth != "" && !strings.Contains(o.Auth, ":") {
		return nil, usagef("--api-auth wants USER:PASSWORD")
	}
	if o.Auth == "" && o.Token == "" && cfg != nil {
		o.Auth, o.Token = cfg.API.Auth, cfg.API.Token
	}
	switch {
	case c.Bool("insecure"):
		o.TLS = &tls.Config{InsecureSkipVerify: true, MinVersion: tlsconf.MinVersion} //nolint:gosec // asked for by --insecure
	case c.String("ca-file") != "":
		pool, err := tlsconf.CAPool(c.String("ca-file"))
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		o.TLS = &tls.Config{RootCAs: pool, MinVersion: tlsconf.MinVersion}
	case cfg != nil && cfg.TLS.Enabled():
		b, err := tlsconf.Load(tlsconf.Files(cfg.TLS))
		if err != nil {
			return nil, err
		}
		o.TLS = b.PeerClient()
	}
	return api.NewClientWith(addr, o), nil
}

// secretFlag reads a flag that may name a file ("file:PATH").
func secretFlag(c *cli.Context, name string) (string, error) {
	v := c.String(name)
	path, ok := strings.CutPrefix(v, config.SecretFilePrefix)
	if !ok {
		return v, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", name, err)
	}
	return strings.TrimRight(string(data), "\r\n"), nil
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
