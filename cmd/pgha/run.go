package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/config"
	"github.com/urfave/cli/v2"
)

func runCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "YAML configuration `FILE`", EnvVars: []string{"PGHA_CONFIG"}},
	}
	// Every configuration key is also a flag (--raft.addr ...). Their
	// environment variables are read by the config loader, which knows
	// where each value came from.
	for _, k := range config.Keys() {
		usage := k.Help + " (env " + k.Env + ")"
		if k.Default != "" && !k.Secret {
			usage += " [default " + k.Default + "]"
		}
		flags = append(flags, &cli.StringFlag{Name: k.Key, Usage: usage, Category: "settings"})
	}
	return &cli.Command{
		Name:      "run",
		Usage:     "run the agent of this node (Raft, gossip, PostgreSQL supervisor, REST API)",
		ArgsUsage: " ",
		Flags:     flags,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("run takes no arguments (got %q); settings go in -c FILE, PGHA_* or --key flags", c.Args().Slice())
			}
			set := map[string]string{}
			for _, k := range config.Keys() {
				if c.IsSet(k.Key) {
					set[k.Key] = c.String(k.Key)
				}
			}
			cfg, err := config.Load(c.String("config"), os.Environ(), set)
			if err != nil {
				return err
			}
			return runAgent(cfg, os.Stderr)
		},
	}
}

func newLogger(cfg *config.Config, out io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(out, opts)
	} else {
		h = slog.NewTextHandler(out, opts)
	}
	return slog.New(h).With("node", cfg.Name)
}

// runAgent runs until SIGINT/SIGTERM (graceful stop) or the node leaves; a
// second signal aborts at once.
func runAgent(cfg *config.Config, logOut io.Writer) error {
	logger := newLogger(cfg, logOut)
	agent.Version = version
	a, err := agent.New(cfg, logger, logOut)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		s, ok := <-sigs
		if !ok {
			return
		}
		logger.Info("signal received, stopping (send it again to abort)", "signal", s.String())
		cancel()
		if s, ok := <-sigs; ok {
			fmt.Fprintf(os.Stderr, "pgha: second %s, aborting\n", s)
			os.Exit(exitFailure)
		}
	}()
	return a.Run(ctx)
}
