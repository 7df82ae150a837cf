package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/config"
	"github.com/urfave/cli/v2"
)

// checkCommand is the check an operator runs from cron or Nagios: one
// line per component, exit status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
// (the agent cannot be reached or the answer is unreadable).
func checkCommand() *cli.Command {
	def := api.DefaultCheckOptions()
	return &cli.Command{
		Name:      "check",
		Usage:     "check this node's health (Nagios conventions: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)",
		ArgsUsage: " ",
		Description: "Checks the agent and Raft everywhere; on the primary its replication slots, WAL senders and\n" +
			"connections; on a replica its WAL receiver and lag; and that exactly one member accepts writes.",
		Flags: append(clientFlags(), outputFlag(),
			&cli.StringFlag{Name: "warn-lag", Value: "16MB", Usage: "replica lag `SIZE` that is a WARNING"},
			&cli.StringFlag{Name: "crit-lag", Value: "64MB", Usage: "replica lag `SIZE` that is CRITICAL"},
			&cli.IntFlag{Name: "warn-conn", Value: def.WarnConnPct, Usage: "`PERCENT` of max_connections in use that is a WARNING"},
			&cli.IntFlag{Name: "crit-conn", Value: def.CritConnPct, Usage: "`PERCENT` of max_connections in use that is CRITICAL"},
		),
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			format, err := outputFormat(c)
			if err != nil {
				return err
			}
			o := api.CheckOptions{WarnConnPct: c.Int("warn-conn"), CritConnPct: c.Int("crit-conn")}
			if o.WarnLag, err = config.ParseSize(c.String("warn-lag")); err != nil || o.WarnLag < 0 {
				return usagef("--warn-lag %q: write e.g. 16MB", c.String("warn-lag"))
			}
			if o.CritLag, err = config.ParseSize(c.String("crit-lag")); err != nil || o.CritLag < 0 {
				return usagef("--crit-lag %q: write e.g. 64MB", c.String("crit-lag"))
			}
			if o.WarnLag > o.CritLag || o.WarnConnPct > o.CritConnPct {
				return usagef("a --warn-* threshold is above its --crit-* one")
			}
			var res api.CheckResult
			err = call(c, 15*time.Second, func(ctx context.Context, cl *api.Client) error {
				var err error
				res, err = cl.Check(ctx, o)
				return err
			})
			if err != nil {
				// Nagios: the check itself could not run.
				res = api.CheckResult{Status: api.CheckUnknown, Checks: []api.CheckItem{{Component: "agent", Status: api.CheckUnknown, Message: err.Error()}}}
			}
			if format == "json" {
				if err := printJSON(stdout(), res); err != nil {
					return err
				}
			} else {
				renderCheck(stdout(), res)
			}
			if code := api.CheckExitCode(res.Status); code != 0 {
				return cli.Exit("", code)
			}
			return nil
		},
	}
}

// renderCheck prints the Nagios summary line first (what a monitoring
// system shows), then one line per component.
func renderCheck(w io.Writer, res api.CheckResult) {
	var worst string
	for _, c := range res.Checks {
		if c.Status == res.Status && worst == "" {
			worst = c.Component + ": " + c.Message
		}
	}
	who := res.Name
	if res.Role != "" {
		who += " (" + string(res.Role) + ")"
	}
	if res.Status == api.CheckOK {
		worst = fmt.Sprintf("%d checks passed", len(res.Checks))
	}
	if who == "" {
		fmt.Fprintf(w, "PGHA %s - %s\n", res.Status, worst)
	} else {
		fmt.Fprintf(w, "PGHA %s - %s: %s\n", res.Status, who, worst)
	}
	t := &table{header: []string{"Component", "Status", "Message"}}
	for _, c := range res.Checks {
		t.add(c.Component, c.Status, c.Message)
	}
	t.render(w)
}
