// Package pgnode manages the local PostgreSQL instance of a pgha member:
// binaries, initdb, pg_basebackup, the managed configuration files, the
// postmaster process (a direct child of the agent, fenced with a
// parent-death signal), status probes and replication slots. It knows
// nothing about Raft: the agent decides, pgnode does. See DESIGN.md.
package pgnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/jackc/pgx/v5"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgha/pgha/internal/safefile"
)

// Sentinel errors; match them with errors.Is.
var (
	// ErrNotEmpty: Bootstrap or Clone was asked to write into a data
	// directory that already holds something.
	ErrNotEmpty = errors.New("data directory is not empty")
	// ErrNoData: the operation needs a valid PostgreSQL data directory.
	ErrNoData = errors.New("no valid data directory")
	// ErrNotRunning: no postmaster is running for DataDir.
	ErrNotRunning = errors.New("postgres is not running")
	// ErrNotPrimary: the operation is only valid on a primary.
	ErrNotPrimary = errors.New("postgres is not a primary")
	// ErrNotStandby: the operation is only valid on a server in recovery.
	ErrNotStandby = errors.New("postgres is not a standby")
	// ErrRunning: the operation needs PostgreSQL stopped.
	ErrRunning = errors.New("postgres is running")
	// ErrClosed: the Node was closed.
	ErrClosed = errors.New("pgnode closed")
)

// defaultBinDir is where Debian's postgresql-15 package installs.
const defaultBinDir = "/usr/lib/postgresql/15/bin"

// requiredBinaries are checked by New so a missing package is reported at
// start-up, not in the middle of a failover.
var requiredBinaries = []string{"initdb", "postgres", "pg_ctl", "pg_basebackup", "pg_rewind", "pg_controldata"}

// Node manages one local PostgreSQL instance. Its methods are safe for
// concurrent use; Bootstrap, Clone and WriteConfig are serialized with
// each other.
type Node struct {
	cfg     Config
	log     *slog.Logger
	binDir  string
	version int // major version, e.g. 15

	// asRoot: the agent runs as root, so PostgreSQL and its tools run as
	// cfg.OSUser through cred, and the files we create are chowned to it.
	asRoot bool
	cred   *syscall.Credential
	home   string

	dataMu sync.Mutex // serializes Bootstrap, Clone, WriteConfig
	opMu   sync.Mutex // serializes postmaster launch and stop

	mu     sync.Mutex // guards pm, closed
	pm     *postmaster
	closed bool

	statusMu   sync.Mutex // guards statusConn
	statusConn *pgx.Conn  // management connection kept for Status

	closeCtx    context.Context // cancelled by Close to abort waits
	closeCancel context.CancelFunc
	wg          sync.WaitGroup // owner goroutines
}

// New checks the configuration, finds the binaries and the OS user, and
// checks that the OS user can reach DataDir and RunDir. It does not touch
// PostgreSQL or create anything.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	n := &Node{cfg: cfg, log: cfg.Logger.With("component", "pgnode", "member", cfg.Name)}

	dir, err := findBinDir(cfg.BinDir)
	if err != nil {
		return nil, err
	}
	n.binDir = dir
	if os.Geteuid() == 0 {
		// Root runs postgres -V itself: binaries another user can replace
		// would be a way to root.
		for _, b := range append([]string{""}, requiredBinaries...) {
			if err := rootOnly(filepath.Join(dir, b)); err != nil {
				return nil, fmt.Errorf("pgnode: bin dir %s: %v: only root may be able to change the PostgreSQL binaries the agent runs", dir, err)
			}
		}
	}
	if n.version, err = postgresMajor(filepath.Join(dir, "postgres")); err != nil {
		return nil, err
	}
	if n.version < 13 {
		return nil, fmt.Errorf("pgnode: postgres %d in %s is too old: need 13 or later (apt-get install -y postgresql-15)", n.version, dir)
	}

	if os.Geteuid() == 0 {
		if err := n.lookupOSUser(); err != nil {
			return nil, err
		}
		if err := n.checkTraverse(); err != nil {
			return nil, err
		}
	} else {
		n.home = os.Getenv("HOME")
	}
	n.closeCtx, n.closeCancel = context.WithCancel(context.Background())
	return n, nil
}

// Config returns the configuration in use, defaults filled in.
func (n *Node) Config() Config { return n.cfg }

// BinDir returns the directory the PostgreSQL binaries are taken from.
func (n *Node) BinDir() string { return n.binDir }

// Version returns the PostgreSQL major version of the binaries.
func (n *Node) Version() int { return n.version }

func findBinDir(configured string) (string, error) {
	const install = "install PostgreSQL (apt-get install -y postgresql-15) or set the bin dir"
	if configured != "" {
		if missing := missingBinaries(configured); len(missing) > 0 {
			return "", fmt.Errorf("pgnode: bin dir %s: missing %s: %s", configured, strings.Join(missing, ", "), install)
		}
		return configured, nil
	}
	var tried []string
	if pgConfig, err := exec.LookPath("pg_config"); err == nil {
		out, err := exec.Command(pgConfig, "--bindir").Output()
		if d := strings.TrimSpace(string(out)); err == nil && d != "" {
			if len(missingBinaries(d)) == 0 {
				return d, nil
			}
			tried = append(tried, d+" (from pg_config --bindir)")
		}
	}
	if len(missingBinaries(defaultBinDir)) == 0 {
		return defaultBinDir, nil
	}
	tried = append(tried, defaultBinDir)
	return "", fmt.Errorf("pgnode: PostgreSQL binaries (%s) not found in %s: %s",
		strings.Join(requiredBinaries, ", "), strings.Join(tried, ", "), install)
}

// rootOnly checks that path (followed, as exec follows it) belongs to
// root and that nobody else may write it.
func rootOnly(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && (sys.Uid != 0 || st.Mode().Perm()&0o022 != 0) {
		return fmt.Errorf("%s is owned by uid %d with mode %#o", path, sys.Uid, st.Mode().Perm())
	}
	return nil
}

func missingBinaries(dir string) []string {
	var missing []string
	for _, b := range requiredBinaries {
		st, err := os.Stat(filepath.Join(dir, b))
		if err != nil || st.IsDir() || st.Mode().Perm()&0o111 == 0 {
			missing = append(missing, b)
		}
	}
	return missing
}

var versionRe = regexp.MustCompile(`\(PostgreSQL\) (\d+)`)

// postgresMajor runs `postgres -V`, which is allowed as root.
func postgresMajor(bin string) (int, error) {
	out, err := exec.Command(bin, "-V").Output()
	if err != nil {
		return 0, fmt.Errorf("pgnode: %s -V: %w", bin, err)
	}
	m := versionRe.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("pgnode: %s -V: unexpected output %q", bin, bytes.TrimSpace(out))
	}
	v, _ := strconv.Atoi(string(m[1]))
	return v, nil
}

func (n *Node) lookupOSUser() error {
	u, err := user.Lookup(n.cfg.OSUser)
	if err != nil {
		return fmt.Errorf("pgnode: os user %q (PostgreSQL refuses to run as root; create the user or install postgresql-15, which does): %w", n.cfg.OSUser, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("pgnode: os user %q: non-numeric uid/gid %s/%s", n.cfg.OSUser, u.Uid, u.Gid)
	}
	if uid == 0 {
		return fmt.Errorf("pgnode: os user %q is root: PostgreSQL refuses to run as root", n.cfg.OSUser)
	}
	// Supplementary groups matter, e.g. ssl-cert for reading TLS keys.
	var groups []uint32
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.ParseUint(s, 10, 32); err == nil {
				groups = append(groups, uint32(g))
			}
		}
	}
	n.asRoot = true
	n.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}
	n.home = u.HomeDir
	return nil
}

// checkTraverse verifies that the OS user can walk down to DataDir and
// RunDir. A root-owned 0700 directory on the way (t.TempDir, a node dir
// created by hand) otherwise surfaces much later as an obscure
// "permission denied" from initdb or the walreceiver.
func (n *Node) checkTraverse() error {
	check := func(dir string) error {
		st, err := os.Stat(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // created later, by us, with usable permissions
		}
		if err != nil {
			return fmt.Errorf("pgnode: stat %s: %w", dir, err)
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !ok || !st.IsDir() {
			return nil
		}
		if !n.mayTraverse(st.Mode().Perm(), sys.Uid, sys.Gid) {
			return fmt.Errorf("pgnode: os user %s cannot traverse %s (mode %#o, owner uid %d): run chmod o+x %s",
				n.cfg.OSUser, dir, st.Mode().Perm(), sys.Uid, dir)
		}
		return nil
	}
	// Every ancestor of both directories, plus RunDir itself: postgres
	// reads RunDir/pgpass. DataDir itself is chowned when we fill it.
	seen := map[string]bool{}
	for _, d := range append(ancestors(n.cfg.DataDir), append(ancestors(n.cfg.RunDir), n.cfg.RunDir)...) {
		if seen[d] {
			continue
		}
		seen[d] = true
		if err := check(d); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) mayTraverse(perm fs.FileMode, uid, gid uint32) bool {
	switch {
	case uid == n.cred.Uid:
		return perm&0o100 != 0
	case gid == n.cred.Gid || containsU32(n.cred.Groups, gid):
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}

func containsU32(s []uint32, v uint32) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// ancestors returns the parents of an absolute path, root first.
func ancestors(p string) []string {
	var out []string
	for d := filepath.Dir(p); ; d = filepath.Dir(d) {
		out = append([]string{d}, out...)
		if d == "/" || d == "." {
			return out
		}
	}
}

// command builds a PostgreSQL tool invocation that runs as the OS user
// when we are root, from "/" (the agent's cwd may be unreadable to it),
// with a clean environment: no PG* variables (a stray PGPASSWORD or
// PGHOST must not change what we connect to) and the C locale (we parse
// the output).
func (n *Node) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(n.binDir, name), args...)
	cmd.Dir = "/"
	cmd.Env = n.childEnv()
	cmd.WaitDelay = 5 * time.Second
	if n.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: n.cred}
	}
	return cmd
}

func (n *Node) childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") || k == "LANG" || k == "LANGUAGE" {
			continue
		}
		if n.asRoot && (k == "HOME" || k == "USER" || k == "LOGNAME") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "LC_ALL=C")
	if n.asRoot {
		env = append(env, "HOME="+n.home, "USER="+n.cfg.OSUser, "LOGNAME="+n.cfg.OSUser)
	}
	return env
}

// run executes a tool and returns its stdout; on failure the error carries
// the last lines of its stderr, which is where PostgreSQL tools explain.
func (n *Node) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := n.command(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if s := strings.TrimSpace(stderr.String()); s != "" {
		n.log.Debug("tool output", "tool", name, "stderr", s)
	}
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("%w: %s", err, tailLines(stderr.String(), 10))
	}
	return stdout.Bytes(), nil
}

func tailLines(s string, max int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > max {
		lines = lines[len(lines)-max:]
	}
	return strings.Join(lines, "\n")
}

// owner is who the files pgnode creates belong to: the OS user when the
// agent runs as root, else whoever runs it.
func (n *Node) owner() safefile.Owner {
	if !n.asRoot {
		return safefile.Keep
	}
	return safefile.Owner{UID: int(n.cred.Uid), GID: int(n.cred.Gid)}
}

// ensureDir creates dir 0700 owned by the OS user if it is missing, and
// missing parents 0755 (root-owned) so the OS user can traverse them.
// An existing dir is left alone unless fix is set, which chowns it and
// tightens it to 0700 (PostgreSQL insists on that for its data dir).
func (n *Node) ensureDir(dir string, fix bool) (created bool, err error) {
	st, err := os.Stat(dir)
	switch {
	case err == nil && !st.IsDir():
		return false, fmt.Errorf("%s: not a directory", dir)
	case err == nil:
		if fix {
			// Through a descriptor: the dir's parent may belong to the
			// OS user, who could have swapped dir for a link.
			return false, safefile.FixDir(dir, 0o700, n.owner())
		}
		return false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return false, err
	}
	if err := safefile.MkdirAll(dir, 0o700, n.owner()); err != nil {
		return false, err
	}
	return true, nil
}

func (n *Node) ensureRunDir() error {
	if _, err := n.ensureDir(n.cfg.RunDir, false); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	return nil
}

// LogFile is where the postmaster's stderr goes.
func (n *Node) LogFile() string { return filepath.Join(n.cfg.RunDir, "postgresql.log") }

// PassFile is the libpq password file used by pg_basebackup and by the
// walreceiver (primary_conninfo passfile=...).
func (n *Node) PassFile() string { return filepath.Join(n.cfg.RunDir, "pgpass") }
