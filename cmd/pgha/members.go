package main

import (
	"context"
	"fmt"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/urfave/cli/v2"
)

func joinCommand() *cli.Command {
	return &cli.Command{
		Name:      "join",
		Usage:     "make the local agent join the cluster that ADDR (gossip host:port of any member) belongs to",
		ArgsUsage: "ADDR",
		Flags: append(clientFlags(),
			&cli.DurationFlag{Name: "timeout", Value: 60 * time.Second, Usage: "give up after this long"}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("join needs exactly one ADDR: the gossip host:port of any member (e.g. 10.0.0.1:7946)")
			}
			cl, err := apiClient(c)
			if err != nil {
				return err
			}
			timeout := c.Duration("timeout")
			ctx, cancel := context.WithTimeout(c.Context, timeout+5*time.Second)
			defer cancel()
			fmt.Fprintf(stdout(), "asking the agent at %s to join the cluster of %s...\n", cl.Addr(), c.Args().First())
			if err := cl.Join(ctx, api.JoinRequest{Addr: c.Args().First(), TimeoutSeconds: int(timeout.Seconds())}); err != nil {
				return err
			}
			fmt.Fprintln(stdout(), "joined: the node is in the Raft configuration and will clone and stream from the primary")
			return nil
		},
	}
}

func leaveCommand() *cli.Command {
	return &cli.Command{
		Name:      "leave",
		Usage:     "make the local node leave the cluster gracefully (removed from Raft, PostgreSQL stopped, agent exits)",
		ArgsUsage: " ",
		Flags:     clientFlags(),
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			if err := call(c, 90*time.Second, func(ctx context.Context, cl *api.Client) error { return cl.Leave(ctx) }); err != nil {
				return err
			}
			fmt.Fprintln(stdout(), "left the cluster; the agent is stopping (its PostgreSQL data stays on disk)")
			return nil
		},
	}
}

func removeCommand() *cli.Command {
	return &cli.Command{
		Name:      "remove",
		Usage:     "remove a dead member from the cluster (from any node)",
		ArgsUsage: "NAME",
		Flags: append(clientFlags(),
			&cli.BoolFlag{Name: "force", Usage: "remove even if the member looks alive"}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("remove needs exactly one member NAME")
			}
			req := api.RemoveRequest{Name: c.Args().First(), Force: c.Bool("force")}
			if err := call(c, 30*time.Second, func(ctx context.Context, cl *api.Client) error { return cl.Remove(ctx, req) }); err != nil {
				return err
			}
			fmt.Fprintf(stdout(), "removed %s (its replication slot is dropped by the primary)\n", c.Args().First())
			return nil
		},
	}
}
