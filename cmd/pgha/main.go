// Command pgha keeps a PostgreSQL cluster highly available with no
// external coordination service. main only maps errors to exit codes;
// each command lives in its own file.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/pgha/pgha/config"
	"github.com/urfave/cli/v2"
)

// exit codes: 1 for a failure, 2 for bad input (usage, configuration).
const (
	exitFailure = 1
	exitUsage   = 2
)

// usageError marks an error caused by the command line itself.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}

func newApp() *cli.App {
	app := &cli.App{
		Name:                 "pgha",
		Usage:                "PostgreSQL high availability in one binary: embedded Raft, gossip, supervisor and proxy",
		Version:              version,
		EnableBashCompletion: true,
		HideHelpCommand:      true,
		Commands: []*cli.Command{
			runCommand(),
			listCommand(),
			joinCommand(),
			leaveCommand(),
			removeCommand(),
			switchoverCommand(),
			failoverCommand(),
			pauseCommand(true),
			pauseCommand(false),
			historyCommand(),
			showConfigCommand(),
			editConfigCommand(),
			restartCommand(),
			reloadCommand(),
			reinitCommand(),
			checkCommand(),
			demoCommand(),
			tlsCommand(),
			keygenCommand(),
		},
		OnUsageError: onUsageError,
		// runMain turns errors into exit codes; urfave/cli would otherwise
		// call os.Exit itself on an ExitCoder.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	// urfave/cli uses each command's own handler for its flags.
	for _, cmd := range app.Commands {
		cmd.OnUsageError = onUsageError
	}
	return app
}

func onUsageError(c *cli.Context, err error, isSubcommand bool) error {
	return usageError{err.Error()}
}

// version is set with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(runMain(os.Args))
}

func runMain(args []string) int {
	err := newApp().Run(args)
	if err == nil {
		return 0
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintln(os.Stderr, "pgha:", msg)
	}
	var cerr *config.Error
	var uerr usageError
	if errors.As(err, &cerr) || errors.As(err, &uerr) {
		return exitUsage
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return exitFailure
}
