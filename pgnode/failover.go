package pgnode

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// postmasterRunning reports whether any postmaster runs on DataDir: our
// child, or one we do not own that postmaster.pid names. Operations that
// rewrite or move the data directory need both to be absent.
func (n *Node) postmasterRunning() bool {
	if n.Running() {
		return true
	}
	_, ok := n.foreignPostmaster()
	return ok
}

// promoteWaitMax caps pg_promote's own wait when ctx has no deadline;
// Promote keeps polling after it for as long as ctx allows.
const promoteWaitMax = 60

// Promote turns the running standby into a primary: pg_promote over a
// management connection (bounded by ctx), a wait until
// pg_is_in_recovery() is false, then CHECKPOINT. It returns the new
// timeline. It fails with ErrNotRunning when nothing runs and with
// ErrNotStandby when the server is not in recovery.
//
// Once pg_promote has been called the promotion goes ahead even if ctx
// ends first; a later Promote then fails with ErrNotStandby and Status
// tells the outcome.
func (n *Node) Promote(ctx context.Context) (timeline uint32, err error) {
	ctx, cancel := n.withClose(ctx)
	defer cancel()
	if !n.postmasterRunning() {
		return 0, fmt.Errorf("promote: %w", ErrNotRunning)
	}
	conn, err := n.Connect(ctx)
	if err != nil {
		return 0, fmt.Errorf("promote: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// The management connection's 5 s statement_timeout would cancel
	// pg_promote's wait and a CHECKPOINT with many dirty buffers; ctx
	// bounds both instead.
	if _, err := conn.Exec(ctx, "SET statement_timeout = 0"); err != nil {
		return 0, fmt.Errorf("promote: %w", err)
	}
	inRecovery, err := isInRecovery(ctx, conn)
	if err != nil {
		return 0, fmt.Errorf("promote: %w", err)
	}
	if !inRecovery {
		return 0, fmt.Errorf("promote: %w", ErrNotStandby)
	}

	start := time.Now()
	n.log.Info("promoting postgres")
	var promoted bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(true, $1)", promoteWait(ctx)).Scan(&promoted); err != nil {
		return 0, fmt.Errorf("promote: pg_promote: %w", err)
	}
	if !promoted {
		// pg_promote's wait ran out (it only warns); the promotion is
		// still under way, so keep waiting for as long as ctx allows.
		n.log.Warn("promotion slower than pg_promote's wait; still waiting")
		if err := waitNotInRecovery(ctx, conn); err != nil {
			return 0, fmt.Errorf("promote: %w", err)
		}
	}

	// PostgreSQL 15 promotes without an end-of-recovery checkpoint and
	// leaves the next one to the checkpointer's schedule, so pg_control
	// keeps naming the old timeline for minutes. pg_rewind of the old
	// primary reads the source's timeline there: it would see one
	// timeline on both sides and report "no rewind required" for a
	// diverged directory.
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return 0, fmt.Errorf("promote: checkpoint: %w", err)
	}
	var walTLI string
	var ckptTLI int64
	err = conn.QueryRow(ctx, `SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8),
	                                 (SELECT timeline_id::int8 FROM pg_control_checkpoint())`).Scan(&walTLI, &ckptTLI)
	if err != nil {
		return 0, fmt.Errorf("promote: read timeline: %w", err)
	}
	tli, err := strconv.ParseUint(walTLI, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("promote: timeline of WAL file %q: %w", walTLI, err)
	}
	if uint64(ckptTLI) != tli {
		return 0, fmt.Errorf("promote: after CHECKPOINT pg_control names timeline %d, the server writes %d", ckptTLI, tli)
	}
	n.log.Info("promoted", "timeline", tli, "took", time.Since(start).Round(time.Millisecond))
	return uint32(tli), nil
}

// promoteWait is pg_promote's wait_seconds: what is left of ctx (whole
// seconds, at least 1), or promoteWaitMax without a deadline.
func promoteWait(ctx context.Context) int {
	dl, ok := ctx.Deadline()
	if !ok {
		return promoteWaitMax
	}
	return min(max(int(time.Until(dl).Seconds()), 1), promoteWaitMax)
}

func isInRecovery(ctx context.Context, conn *pgx.Conn) (bool, error) {
	var rec bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		return false, err
	}
	return rec, nil
}

func waitNotInRecovery(ctx context.Context, conn *pgx.Conn) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		rec, err := isInRecovery(ctx, conn)
		if err != nil {
			return err
		}
		if !rec {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("still in recovery: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// Rewind runs pg_rewind on the stopped data directory so that it can
// follow src, then rewrites the managed configuration as a replica of
// src. "No rewind required" is success. It fails with ErrRunning while a
// postmaster runs; other errors carry the tail of pg_rewind's output.
//
// pg_rewind copies the source's postgresql.conf, postgresql.base.conf,
// pg_hba.conf and postgresql.auto.conf over ours; rewriting the
// configuration afterwards makes our managed files win again (the
// source's postgresql.auto.conf stays, which is acceptable: ALTER SYSTEM
// settings are cluster-wide in intent). As with Clone, that configuration
// has the member's own settings only: PostgreSQL stays stopped and the
// caller writes its Desired one before starting it. If pg_rewind fails
// the directory may be unusable: move it aside and clone afresh.
func (n *Node) Rewind(ctx context.Context, src Upstream) (err error) {
	if src.Host == "" || src.Port <= 0 {
		return errors.New("rewind: source host and port are required")
	}
	if src.Slot != "" && !validSlotName(src.Slot) {
		return fmt.Errorf("rewind: invalid slot name %q", src.Slot)
	}
	n.dataMu.Lock()
	defer n.dataMu.Unlock()
	// opMu keeps Start from launching postgres on a directory that
	// pg_rewind is rewriting.
	n.opMu.Lock()
	defer n.opMu.Unlock()
	if err := n.checkOpen(); err != nil {
		return err
	}
	ctx, cancel := n.withClose(ctx)
	defer cancel()
	if n.postmasterRunning() {
		return fmt.Errorf("rewind: %w", ErrRunning)
	}
	dd := n.cfg.DataDir
	if st, err := n.DataState(); err != nil {
		return fmt.Errorf("rewind: %w", err)
	} else if st != DataValid {
		return fmt.Errorf("rewind: %w (%s is %s)", ErrNoData, dd, st)
	}
	if err := n.ensureRunDir(); err != nil {
		return fmt.Errorf("rewind: %w", err)
	}
	if err := n.writeClientFiles(); err != nil {
		return fmt.Errorf("rewind: %w", err)
	}
	if err := n.checkpointSource(ctx, src); err != nil {
		return fmt.Errorf("rewind: %w", err)
	}

	// pg_rewind first finishes an unclean shutdown by crash recovery in
	// single-user mode, which refuses to run in standby mode. So
	// standby.signal (present when the agent wrote a replica
	// configuration before rewinding) is taken away for the run. If the
	// rewind fails it is put back: a directory that may have diverged
	// must still not be able to start as a primary.
	signal := filepath.Join(dd, standbyFile)
	hadSignal := false
	if _, serr := os.Stat(signal); serr == nil {
		hadSignal = true
		if err := os.Remove(signal); err != nil {
			return fmt.Errorf("rewind: %w", err)
		}
	}
	defer func() {
		if err != nil && hadSignal {
			if _, werr := n.writeFileAtomic(signal, nil); werr != nil {
				n.log.Error("restoring standby.signal after a failed rewind", "err", werr)
			}
		}
	}()

	start := time.Now()
	n.log.Info("rewinding with pg_rewind", "host", src.Host, "port", src.Port)
	noop, err := n.pgRewind(ctx, src)
	if err != nil {
		return err
	}
	if noop {
		n.log.Info("no rewind required: the histories have not diverged")
	} else {
		n.log.Info("rewind finished", "took", time.Since(start).Round(time.Millisecond))
	}
	if _, err := n.writeConfig(Desired{Role: RoleReplica, Upstream: &src}); err != nil {
		return fmt.Errorf("rewind: %w", err)
	}
	return nil
}

// pgRewind runs the tool, logs its output and reports whether it found
// nothing to do.
func (n *Node) pgRewind(ctx context.Context, src Upstream) (noop bool, err error) {
	cmd := n.command(ctx, "pg_rewind",
		"--target-pgdata="+n.cfg.DataDir,
		"--source-server="+conninfo(n.sslConninfo(map[string]string{
			"host":             src.Host,
			"port":             strconv.Itoa(src.Port),
			"user":             n.cfg.Superuser,
			"passfile":         n.PassFile(),
			"dbname":           "postgres",
			"application_name": n.cfg.Name + "_rewind",
			"connect_timeout":  "5",
		})),
		"--progress",
	)
	// pg_rewind may start a single-user postgres for crash recovery. Its
	// own process group lets a cancel kill both, so nothing we started
	// keeps running on the data directory.
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// One pipe for both streams: pg_rewind reports on stderr, the
	// single-user postgres it runs may write to either.
	pr, pw, err := os.Pipe()
	if err != nil {
		return false, fmt.Errorf("pg_rewind: %w", err)
	}
	defer pr.Close()
	cmd.Stdout, cmd.Stderr = pw, pw
	err = cmd.Start()
	pw.Close() // the children hold their own copies; EOF comes when they exit
	if err != nil {
		return false, fmt.Errorf("pg_rewind: %w", err)
	}
	tail := n.readToolOutput("pg_rewind", pr, slog.LevelInfo, func(pct int, detail string) {
		n.log.Info("pg_rewind progress", "pct", pct, "detail", detail)
	})
	if err := cmd.Wait(); err != nil {
		return false, fmt.Errorf("pg_rewind: %w: %s", err, strings.Join(tail, "\n"))
	}
	for _, l := range tail {
		if strings.Contains(l, "no rewind required") {
			return true, nil
		}
	}
	return false, nil
}

// checkpointSource makes sure a primary source's pg_control names its
// current timeline. After a promotion it keeps the old one until the
// next checkpoint, and pg_rewind, which reads it there, would then see
// one timeline on both sides and call a diverged target "no rewind
// required". Promote checkpoints, but the agent that promoted may have
// died in between. A standby source is left alone: CHECKPOINT there is
// only a restartpoint and cannot name a timeline its primary has not.
func (n *Node) checkpointSource(ctx context.Context, src Upstream) error {
	conn, err := n.connectTo(ctx, src.Host, src.Port)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var inRecovery bool
	var walTLI *string
	var ckptTLI int64
	err = conn.QueryRow(ctx, `SELECT r.rec,
	        CASE WHEN r.rec THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END,
	        (SELECT timeline_id::int8 FROM pg_control_checkpoint())
	   FROM (SELECT pg_is_in_recovery() AS rec) r`).Scan(&inRecovery, &walTLI, &ckptTLI)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	if inRecovery || walTLI == nil {
		return nil
	}
	tli, err := strconv.ParseUint(*walTLI, 16, 32)
	if err != nil {
		return fmt.Errorf("source: timeline of WAL file %q: %w", *walTLI, err)
	}
	if uint64(ckptTLI) == tli {
		return nil
	}
	n.log.Info("source's pg_control lags its timeline; running CHECKPOINT there", "control", ckptTLI, "current", tli)
	// A checkpoint may outlast the 5 s management statement_timeout.
	if _, err := conn.Exec(ctx, "SET statement_timeout = 0"); err != nil {
		return fmt.Errorf("source: %w", err)
	}
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("source: checkpoint: %w", err)
	}
	return nil
}

// MoveAside renames the stopped data directory to DataDir +
// ".diverged-<UTC time>" so that a fresh clone can be made, and returns
// the new path. Nothing is deleted (safety rule 6). It fails with
// ErrRunning while a postmaster runs, with ErrNoData when there is
// nothing to move. DataDir must not itself be a mount point: a mount
// point cannot be renamed.
func (n *Node) MoveAside() (string, error) {
	n.dataMu.Lock()
	defer n.dataMu.Unlock()
	n.opMu.Lock()
	defer n.opMu.Unlock()
	if err := n.checkOpen(); err != nil {
		return "", err
	}
	if n.postmasterRunning() {
		return "", fmt.Errorf("move aside: %w", ErrRunning)
	}
	dd := n.cfg.DataDir
	if st, err := n.DataState(); err != nil {
		return "", fmt.Errorf("move aside: %w", err)
	} else if st == DataEmpty {
		return "", fmt.Errorf("move aside: %w: %s is empty", ErrNoData, dd)
	}
	base := dd + ".diverged-" + time.Now().UTC().Format("20060102T150405Z")
	dst := base
	// Two moves within a second must not collide: renaming onto an
	// existing empty directory would silently replace it.
	for i := 1; ; i++ {
		if _, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
			break
		} else if err != nil {
			return "", fmt.Errorf("move aside: %w", err)
		}
		dst = base + "-" + strconv.Itoa(i)
	}
	if err := os.Rename(dd, dst); err != nil {
		if errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.EXDEV) {
			return "", fmt.Errorf("move aside: %w (is %s a mount point? use a directory below it as the data dir)", err, dd)
		}
		return "", fmt.Errorf("move aside: %w", err)
	}
	syncDir(filepath.Dir(dd))
	n.log.Warn("moved the data directory aside", "from", dd, "to", dst)
	return dst, nil
}
