package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/pgha/pgha/tlsconf"
	"github.com/urfave/cli/v2"
)

func tlsCommand() *cli.Command {
	return &cli.Command{
		Name:  "tls",
		Usage: "certificates for the cluster's TLS (Raft, REST API, PostgreSQL)",
		Subcommands: []*cli.Command{{
			Name:  "init",
			Usage: "create a private CA and one certificate per node (ECDSA P-256, no openssl needed)",
			Description: `Writes DIR/ca.crt and DIR/ca.key (the CA, valid 10 years) and, per node,
DIR/NAME.crt and DIR/NAME.key (valid 2 years, usable as server and client,
names: NAME, localhost, 127.0.0.1, ::1 and the node's --hosts). Keys are
0600, certificates 0644, DIR 0700. Existing node files are kept unless
--force; an existing CA in DIR is reused, which is how a node is added
later. Copy ca.crt, NAME.crt and NAME.key to each node; ca.key need not
leave this machine.`,
			ArgsUsage: " ",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "dir", Required: true, Usage: "output `DIR`"},
				&cli.StringSliceFlag{Name: "nodes", Required: true, Usage: "node `NAMES`, comma-separated, as in each node's name setting"},
				&cli.StringSliceFlag{Name: "hosts", Usage: "extra names of a node: `NAME=HOST[,HOST...]` (IP addresses or DNS names), repeatable"},
				&cli.StringFlag{Name: "install-dir", Usage: "`DIR` the files will be copied to on the nodes, for the printed configuration [default: --dir]"},
				&cli.BoolFlag{Name: "force", Usage: "replace existing node certificates and keys"},
			},
			Action: tlsInit,
			// main sets this on top-level commands only.
			OnUsageError: onUsageError,
		}},
	}
}

func tlsInit(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	hosts, err := parseHosts(c.StringSlice("hosts"))
	if err != nil {
		return err
	}
	var nodes []tlsconf.Node
	known := map[string]bool{}
	for _, name := range c.StringSlice("nodes") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		known[name] = true
		nodes = append(nodes, tlsconf.Node{Name: name, Hosts: hosts[name]})
	}
	if len(nodes) == 0 {
		return usagef("--nodes needs at least one name")
	}
	for name := range hosts {
		if !known[name] {
			return usagef("--hosts %s=...: %s is not in --nodes", name, name)
		}
	}
	g, err := tlsconf.Generate(tlsconf.GenerateOptions{Dir: c.String("dir"), Nodes: nodes, Force: c.Bool("force")})
	if err != nil {
		return err
	}
	w := stdout()
	if g.CAReused {
		fmt.Fprintf(w, "using the existing CA %s\n", g.CACert)
	} else {
		fmt.Fprintf(w, "wrote %s and %s (keep ca.key off the nodes)\n", g.CACert, g.CAKey)
	}
	for _, n := range nodes {
		p := g.NodeFiles[n.Name]
		fmt.Fprintf(w, "wrote %s and %s\n", p[0], p[1])
	}
	install := c.String("install-dir")
	for _, n := range nodes {
		where := "on this machine"
		if install != "" {
			where = "after copying " + strings.Join([]string{tlsconf.CACertFile, tlsconf.NodeCertFile(n.Name), tlsconf.NodeKeyFile(n.Name)}, ", ") +
				" to " + filepath.Clean(install) + " on the node (readable by the agent only)"
		}
		fmt.Fprintf(w, "\n# %s: node configuration, %s\n%s", n.Name, where, g.Snippet(n.Name, install))
	}
	return nil
}

// parseHosts reads --hosts values. urfave/cli splits every value at
// commas, so "n1=10.0.0.1,db1.example.com" arrives as two entries: an
// entry without '=' belongs to the node named last.
func parseHosts(vals []string) (map[string][]string, error) {
	out := map[string][]string{}
	cur := ""
	for _, v := range vals {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		if name, host, ok := strings.Cut(v, "="); ok {
			cur = strings.TrimSpace(name)
			if cur == "" {
				return nil, usagef("--hosts %q: write NAME=HOST[,HOST...]", v)
			}
			v = strings.TrimSpace(host)
			if v == "" {
				continue
			}
		} else if cur == "" {
			return nil, usagef("--hosts %q: write NAME=HOST[,HOST...]", v)
		}
		out[cur] = append(out[cur], v)
	}
	return out, nil
}

func keygenCommand() *cli.Command {
	return &cli.Command{
		Name:  "keygen",
		Usage: "print a new gossip encryption key (base64 of 32 random bytes) for gossip.key",
		Description: `The same key goes into every node's configuration, e.g.

   pgha keygen > /etc/pgha/gossip.key && chmod 600 /etc/pgha/gossip.key

and in the YAML: gossip: {key: "file:/etc/pgha/gossip.key"}`,
		ArgsUsage: " ",
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			key := make([]byte, 32)
			if _, err := rand.Read(key); err != nil {
				return err
			}
			fmt.Fprintln(stdout(), base64.StdEncoding.EncodeToString(key))
			return nil
		},
	}
}
