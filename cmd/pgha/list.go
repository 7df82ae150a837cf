package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgha/pgha/api"
	"github.com/urfave/cli/v2"
)

func listCommand() *cli.Command {
	cmd := readCommand("list", "show the members of the cluster, their roles, states and lag",
		func(ctx context.Context, cl *api.Client) (api.ClusterInfo, error) { return cl.Cluster(ctx) }, renderCluster)
	cmd.Flags = append(cmd.Flags,
		&cli.BoolFlag{Name: "watch", Aliases: []string{"W"}, Usage: "refresh every --interval until Ctrl-C"},
		&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "refresh `PERIOD` of --watch"})
	once := cmd.Action
	cmd.Action = func(c *cli.Context) error {
		if !c.Bool("watch") {
			return once(c)
		}
		return watch(c, once)
	}
	return cmd
}

// watch runs show every --interval until the command's context ends
// (Ctrl-C), clearing the screen between rounds on a terminal. An agent
// that does not answer is reported and retried: during a failover is
// when one watches.
func watch(c *cli.Context, show cli.ActionFunc) error {
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	c.Context = ctx
	interval := c.Duration("interval")
	if interval < 100*time.Millisecond {
		return usagef("--interval %s: use 100ms or more", interval)
	}
	tty := isTerminal(os.Stdout)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if tty {
			fmt.Fprint(stdout(), "\033[H\033[2J")
		}
		fmt.Fprintln(stdout(), time.Now().Format("2006-01-02 15:04:05"))
		if err := show(c); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintln(stdout(), "error:", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

var roleNames = map[string]string{"leader": "Leader", "replica": "Replica", "sync_standby": "Sync Standby", "witness": "Witness"}

// renderCluster prints the table of `pgha list`.
func renderCluster(w io.Writer, ci api.ClusterInfo) {
	title := "Cluster: " + ci.Cluster
	if ci.SystemID != 0 {
		title += " (" + strconv.FormatUint(ci.SystemID, 10) + ")"
	}
	t := &table{
		title:  title,
		header: []string{"Member", "Host", "Role", "State", "TL", "Lag in MB", "Raft", "Proxy w/r", "Tags"},
		right:  map[int]bool{4: true, 5: true},
	}
	var notes []string
	for _, m := range ci.Members {
		role := roleNames[m.Role]
		if role == "" {
			role = m.Role
		}
		tl, lag := "", ""
		if m.Timeline != 0 {
			tl = strconv.Itoa(int(m.Timeline))
		}
		if m.LagBytes != nil {
			lag = strconv.FormatInt(*m.LagBytes>>20, 10)
		}
		t.add(m.Name, m.Host, role, string(m.State), tl, lag, m.Raft, proxyPorts(m), formatTags(m.Tags))
		switch {
		case m.Error != "":
			notes = append(notes, fmt.Sprintf("%s: %s", m.Name, m.Error))
		case m.Waiting != "":
			notes = append(notes, fmt.Sprintf("%s: %s", m.Name, m.Waiting))
		case m.Ineligible != "" && m.State.Up():
			// A running replica that failover would pass over, and why.
			notes = append(notes, fmt.Sprintf("%s cannot be promoted: it %s", m.Name, m.Ineligible))
		}
	}
	t.render(w)
	if ci.Paused {
		fmt.Fprintln(w, " Maintenance mode: on (no automatic failover or restart)")
	}
	if sc := ci.ScheduledSwitchover; sc != nil {
		to := sc.Candidate
		if to == "" {
			to = "the best replica"
		}
		fmt.Fprintf(w, " Switchover scheduled at %s: %s -> %s (pgha switchover --cancel to drop it)\n", sc.At.UTC().Format(time.RFC3339), sc.From, to)
	}
	if ci.Sync != "" {
		fmt.Fprintln(w, " "+strings.ToUpper(ci.Sync[:1])+ci.Sync[1:])
	}
	if !ci.Initialized {
		fmt.Fprintln(w, " Cluster not initialised yet")
	}
	if ci.Leader == "" {
		fmt.Fprintln(w, " No Raft leader: fewer than a quorum of members are reachable from", ci.Observer)
	}
	for _, n := range notes {
		fmt.Fprintln(w, " "+n)
	}
}

func formatTags(tags map[string]any) string {
	if len(tags) == 0 {
		return ""
	}
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %v", k, tags[k])
	}
	return strings.Join(parts, ", ")
}

// proxyPorts shows a member's proxy ports as "5000/5001".
func proxyPorts(m api.MemberInfo) string {
	port := func(addr string) string {
		if i := strings.LastIndex(addr, ":"); i >= 0 {
			return addr[i+1:]
		}
		return addr
	}
	if m.Write == "" && m.Read == "" {
		return ""
	}
	return port(m.Write) + "/" + port(m.Read)
}
