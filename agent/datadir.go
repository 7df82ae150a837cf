package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"syscall"

	"github.com/pgha/pgha/config"
	"github.com/pgha/pgha/internal/safefile"
)

// The node's data directory holds the agent's own state (raft/,
// peers.json) next to PostgreSQL's (pgdata/, run/). As root, the agent's
// state must stay out of reach of PostgreSQL's OS user: anyone who
// becomes that user (a database superuser can, with COPY ... TO PROGRAM)
// could otherwise plant links where root writes, or swap in Raft state
// of their own making. So data_dir belongs to root and is 0711: the OS
// user may pass through it to pgdata/ and run/, which are its own, but
// may not create, rename or remove anything in it.
const dataDirPerm = 0o711

// prepareDataDir creates the node's data directory, or, when it exists,
// secures it (an installation made before data_dir belonged to root is
// migrated here) and refuses agent state that root does not own.
func prepareDataDir(cfg *config.Config, log *slog.Logger) error {
	if os.Geteuid() != 0 {
		if err := safefile.MkdirAll(cfg.DataDir, 0o700, safefile.Keep); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		return nil
	}
	if _, err := user.Lookup(cfg.PostgreSQL.OSUser); err != nil {
		return fmt.Errorf("postgresql.os_user %q: %w (create it, e.g. useradd --system postgres)", cfg.PostgreSQL.OSUser, err)
	}
	root := safefile.Owner{UID: 0, GID: 0}
	dir := cfg.DataDir
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Missing parents get 0755 so the OS user can reach pgdata/.
		if err := safefile.MkdirAll(dir, dataDirPerm, root); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		return checkPGDataDir(cfg.PostgreSQL.DataDir)
	case err != nil:
		return fmt.Errorf("data dir: %w", err)
	case !st.IsDir():
		return fmt.Errorf("data dir %s is not a directory", dir)
	}
	// data_dir itself is configured by root: resolve a link an operator
	// made (its parent is theirs), then work on the real directory.
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && (sys.Uid != 0 || st.Mode().Perm()&0o022 != 0) {
		if err := safefile.FixDir(real, dataDirPerm, root); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		log.Warn("data dir secured: it now belongs to root, mode 0711; the PostgreSQL OS user keeps pgdata/ and run/ inside it",
			"dir", dir, "was_uid", sys.Uid, "was_mode", fmt.Sprintf("%#o", st.Mode().Perm()))
	}
	raftDir := filepath.Join(real, "raft")
	if _, err := os.Lstat(raftDir); err == nil {
		if err := safefile.CheckOwned(raftDir, 0); err != nil {
			return fmt.Errorf("raft state not trusted: %v: the PostgreSQL OS user could have written it; "+
				"inspect %s, then chown -R root:root it, or move it away so that this node joins afresh", err, raftDir)
		}
	}
	// run/ holds only what the agent regenerates: a link there (planted
	// under the old layout) is dropped, not followed.
	runDir := filepath.Join(real, "run")
	if fi, err := os.Lstat(runDir); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		if err := os.Remove(runDir); err != nil {
			return fmt.Errorf("data dir: remove the link %s: %w", runDir, err)
		}
		log.Warn("dropped a link planted as the run directory", "path", runDir)
	}
	if err := checkPGDataDir(cfg.PostgreSQL.DataDir); err != nil {
		return err
	}
	// peers.json is only a cache of addresses: one root did not write is
	// dropped, as is the temporary file of an older version.
	for _, name := range []string{peersFile, peersFile + ".tmp"} {
		p := filepath.Join(real, name)
		fi, err := os.Lstat(p)
		if err != nil {
			continue
		}
		sys, _ := fi.Sys().(*syscall.Stat_t)
		if name != peersFile || !fi.Mode().IsRegular() || sys == nil || sys.Uid != 0 {
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("data dir: remove %s: %w", p, err)
			}
			if name == peersFile {
				log.Warn("dropped a peers file root did not write", "path", p)
			}
		}
	}
	return nil
}

// checkPGDataDir refuses a PostgreSQL data directory that the OS user
// could swap for a link while root writes in it (postgresql.conf,
// pg_hba.conf, a clone): the directory itself and every directory above
// it must be root's alone.
func checkPGDataDir(dir string) error {
	if err := safefile.CheckPrivateAncestors(dir); err != nil {
		return fmt.Errorf("postgresql.data_dir %s: %v: the PostgreSQL OS user could swap the data directory for a link while root writes in it; "+
			"put it under directories only root can change (the default, data_dir/pgdata, is)", dir, err)
	}
	return nil
}
