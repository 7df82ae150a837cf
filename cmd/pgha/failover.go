package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/urfave/cli/v2"
)

func switchoverFlags() []cli.Flag {
	return append(clientFlags(),
		&cli.StringFlag{Name: "candidate", Usage: "member `NAME` to promote (switchover: the best replica when omitted)"},
		&cli.StringFlag{Name: "leader", Usage: "expected current primary `NAME` (refuse if it is another)"},
		&cli.BoolFlag{Name: "force", Usage: "skip the lag check (a switchover still waits for the candidate to catch up)"},
		outputFlag(),
	)
}

// parseWhen accepts RFC 3339 or a delay from now ("10m", "2h").
func parseWhen(s string, now time.Time) (string, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return "", usagef("--scheduled %q: the delay must be positive", s)
		}
		return now.Add(d).UTC().Format(time.RFC3339), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return "", usagef("--scheduled %q: want a time like 2026-11-27T22:00:00Z or a delay like 10m", s)
	}
	return t.UTC().Format(time.RFC3339), nil
}

func switchoverCommand() *cli.Command {
	return &cli.Command{
		Name:      "switchover",
		Usage:     "planned switchover: stop the primary cleanly, promote a caught-up replica, make the old primary follow it",
		ArgsUsage: " ",
		Flags: append(switchoverFlags(),
			&cli.StringFlag{Name: "scheduled", Usage: "run it at `TIME` (RFC 3339, or a delay such as 10m) instead of now"},
			&cli.BoolFlag{Name: "cancel", Usage: "cancel a scheduled switchover"}),
		Action: func(c *cli.Context) error {
			if c.Bool("cancel") {
				if err := call(c, 15*time.Second, func(ctx context.Context, cl *api.Client) error { return cl.CancelSwitchover(ctx) }); err != nil {
					return err
				}
				fmt.Fprintln(stdout(), "scheduled switchover cancelled")
				return nil
			}
			return runSwitchover(c, false)
		},
	}
}

func failoverCommand() *cli.Command {
	return &cli.Command{
		Name:      "failover",
		Usage:     "promote --candidate when the primary is unhealthy or gone (a switchover when it is healthy)",
		ArgsUsage: " ",
		Flags:     switchoverFlags(),
		Action: func(c *cli.Context) error {
			if c.String("candidate") == "" {
				return usagef("failover needs --candidate NAME")
			}
			return runSwitchover(c, true)
		},
	}
}

func runSwitchover(c *cli.Context, failover bool) error {
	if err := noArgs(c); err != nil {
		return err
	}
	format, err := outputFormat(c)
	if err != nil {
		return err
	}
	cl, err := apiClient(c)
	if err != nil {
		return err
	}
	req := api.SwitchoverRequest{Leader: c.String("leader"), Candidate: c.String("candidate"), Force: c.Bool("force")}
	if !failover && c.String("scheduled") != "" {
		if req.ScheduledAt, err = parseWhen(c.String("scheduled"), time.Now()); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(c.Context, 2*time.Minute)
	defer cancel()
	var res api.SwitchoverResult
	if failover {
		res, err = cl.Failover(ctx, req)
	} else {
		res, err = cl.Switchover(ctx, req)
	}
	if err != nil {
		return err
	}
	if format == "json" {
		return printJSON(stdout(), res)
	}
	if req.ScheduledAt != "" {
		fmt.Fprintln(stdout(), res.Message)
		return nil
	}
	fmt.Fprintf(stdout(), "%s (epoch %d", res.Message, res.Epoch)
	if res.WriteGapSec > 0 {
		fmt.Fprintf(stdout(), ", writes stopped for %.2fs", res.WriteGapSec)
	}
	fmt.Fprintln(stdout(), ")")
	return nil
}

func pauseCommand(paused bool) *cli.Command {
	name, usage := "pause", "maintenance mode on: no automatic failover, restart or promotion"
	if !paused {
		name, usage = "resume", "maintenance mode off: automatic actions resume"
	}
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: " ",
		Flags:     clientFlags(),
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			if err := call(c, 15*time.Second, func(ctx context.Context, cl *api.Client) error { return cl.SetPaused(ctx, paused) }); err != nil {
				return err
			}
			if paused {
				fmt.Fprintln(stdout(), "maintenance mode on: pgha takes no automatic action until `pgha resume`")
			} else {
				fmt.Fprintln(stdout(), "maintenance mode off")
			}
			return nil
		},
	}
}

func historyCommand() *cli.Command {
	return readCommand("history", "list every change of primary (time, old and new, timeline, LSN, reason, write downtime)",
		func(ctx context.Context, cl *api.Client) ([]api.HistoryEntry, error) { return cl.History(ctx) }, renderHistory)
}

func renderHistory(w io.Writer, h []api.HistoryEntry) {
	t := &table{header: []string{"Epoch", "Time (UTC)", "Old", "New", "TL", "LSN", "Reason", "Write downtime"}, right: map[int]bool{0: true, 4: true, 7: true}}
	for _, e := range h {
		down := ""
		if e.DowntimeSec != nil {
			down = fmt.Sprintf("%.2fs", *e.DowntimeSec)
		}
		tl := ""
		if e.Timeline != 0 {
			tl = fmt.Sprint(e.Timeline)
		}
		t.add(fmt.Sprint(e.Epoch), e.At.UTC().Format("2006-01-02 15:04:05.000"), e.Old, e.New, tl, e.LSN, e.Reason, down)
	}
	t.render(w)
}
