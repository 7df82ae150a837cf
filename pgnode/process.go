package pgnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgha/pgha/internal/safefile"
)

// StopMode is PostgreSQL's shutdown mode.
type StopMode int

const (
	// StopFast (SIGINT) disconnects clients, checkpoints and exits.
	StopFast StopMode = iota
	// StopSmart (SIGTERM) waits for clients to disconnect first.
	StopSmart
	// StopImmediate (SIGQUIT) exits at once; crash recovery at next start.
	StopImmediate
)

func (m StopMode) String() string {
	switch m {
	case StopFast:
		return "fast"
	case StopSmart:
		return "smart"
	case StopImmediate:
		return "immediate"
	}
	return "StopMode(" + strconv.Itoa(int(m)) + ")"
}

// escalation lists the signals Stop sends in turn: a shutdown that does
// not finish in time is retried with the next harder mode.
func (m StopMode) escalation() []syscall.Signal {
	switch m {
	case StopSmart:
		return []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT}
	case StopImmediate:
		return []syscall.Signal{syscall.SIGQUIT}
	default:
		return []syscall.Signal{syscall.SIGINT, syscall.SIGQUIT}
	}
}

// escalateWait bounds each escalation step after the first one.
const escalateWait = 10 * time.Second

// postmaster is one lifespan of our child process. Its fields are set
// before it is published (pid, proc, logOffset) or before done is closed
// (waitErr), so readers need no lock.
type postmaster struct {
	pid        int
	proc       *os.Process
	logOffset  int64         // size of the log before this start, for error tails
	done       chan struct{} // closed once the process has been reaped
	unexpected chan struct{} // closed (after done) when it exited without a Stop
	stopping   atomic.Bool
	waitErr    error
}

func (p *postmaster) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (n *Node) current() *postmaster {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pm
}

func (n *Node) checkOpen() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	return nil
}

// withClose derives a context that Close also cancels, so Close never
// waits for a long Start.
func (n *Node) withClose(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(n.closeCtx, cancel)
	return ctx, func() { stop(); cancel() }
}

// Running reports whether our postmaster child is alive.
func (n *Node) Running() bool {
	pm := n.current()
	return pm != nil && !pm.exited()
}

// PID returns the pid of our postmaster child, or 0.
func (n *Node) PID() int {
	if pm := n.current(); pm != nil && !pm.exited() {
		return pm.pid
	}
	return 0
}

// Exited returns a channel that is closed when the current (or, if none
// is running, the last) postmaster exits without Stop or Close having
// asked it to: a crash, an OOM kill, an operator's kill. Before the first
// Start it returns nil (a channel that never fires in a select). Call it
// again after each Start.
func (n *Node) Exited() <-chan struct{} {
	if pm := n.current(); pm != nil {
		return pm.unexpected
	}
	return nil
}

// Start runs the postmaster as a direct child of the agent and waits until
// it accepts connections (a replica: read-only connections once
// consistent), up to StartTimeout or ctx. If our child is already running
// it only waits for readiness. A postmaster left by a previous agent
// (postmaster.pid names a live postgres that is not our child) is stopped
// first. On a readiness timeout the child is left running: the caller can
// Start again to keep waiting, or Stop it.
func (n *Node) Start(ctx context.Context) error {
	ctx, cancel := n.withClose(ctx)
	defer cancel()
	pm, err := n.launch(ctx)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	if err := n.waitReady(ctx, pm); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	return nil
}

func (n *Node) launch(ctx context.Context) (*postmaster, error) {
	n.opMu.Lock()
	defer n.opMu.Unlock()
	if err := n.checkOpen(); err != nil {
		return nil, err
	}
	if pm := n.current(); pm != nil && !pm.exited() {
		return pm, nil
	}
	if st, err := n.DataState(); err != nil {
		return nil, err
	} else if st != DataValid {
		return nil, fmt.Errorf("%w (%s is %s)", ErrNoData, n.cfg.DataDir, st)
	}
	if pid, ok := n.foreignPostmaster(); ok {
		// Two postmasters cannot share a data dir, and one we do not own
		// has no parent-death fence: replace it with our child.
		n.log.Warn("a postmaster we do not own is running on the data dir; stopping it", "pid", pid)
		if err := n.pgctlStop(ctx, StopFast); err != nil {
			return nil, err
		}
	}
	if err := n.ensureRunDir(); err != nil {
		return nil, err
	}
	logf, err := safefile.OpenAppend(n.LogFile(), 0o600, n.owner())
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	off, _ := logf.Seek(0, io.SeekEnd)

	cmd := exec.Command(filepath.Join(n.binDir, "postgres"), "-D", n.cfg.DataDir)
	cmd.Dir = "/"
	cmd.Env = n.childEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: n.cred,
		// The fence: if the agent dies, the kernel sends SIGQUIT
		// (immediate shutdown) to the postmaster, so a primary whose
		// agent is gone stops taking writes at once. Go applies it
		// after the credential change, which would otherwise clear it.
		Pdeathsig: syscall.SIGQUIT,
		// Own process group: a Ctrl-C on the agent's terminal reaches
		// the agent only (which then stops postgres its way). Backends
		// setsid() into groups of their own: the emergency paths signal
		// them by PID (signalTree).
		Setpgid: true,
	}
	pm := &postmaster{logOffset: off, done: make(chan struct{}), unexpected: make(chan struct{})}
	started := make(chan error, 1)
	n.wg.Add(1)
	go n.own(cmd, logf, pm, started)
	if err := <-started; err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	n.mu.Lock()
	n.pm = pm
	n.mu.Unlock()
	n.log.Info("postgres started", "pid", pm.pid, "data_dir", n.cfg.DataDir, "port", n.cfg.Port)
	return pm, nil
}

// own is the one goroutine that owns a postmaster for its whole life.
//
// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits,
// not the process. Go multiplexes goroutines over threads and may retire
// an idle thread at any time, which would send SIGQUIT to a healthy
// postmaster. So this goroutine locks itself to its thread, forks from
// it, and keeps it busy in wait(2) until the postmaster is gone. It never
// unlocks: when it returns, the runtime ends the thread, which by then
// has no child left to signal.
func (n *Node) own(cmd *exec.Cmd, logf *os.File, pm *postmaster, started chan<- error) {
	defer n.wg.Done()
	runtime.LockOSThread()
	err := cmd.Start()
	logf.Close() // the child has its own descriptor
	if err != nil {
		started <- err
		return
	}
	pm.pid, pm.proc = cmd.Process.Pid, cmd.Process
	started <- nil

	pm.waitErr = cmd.Wait()
	close(pm.done)
	if pm.stopping.Load() {
		n.log.Info("postgres stopped", "pid", pm.pid, "status", exitString(pm.waitErr))
		return
	}
	n.log.Warn("postgres exited unexpectedly", "pid", pm.pid, "status", exitString(pm.waitErr))
	close(pm.unexpected)
}

func exitString(err error) string {
	if err == nil {
		return "exit 0"
	}
	return err.Error()
}

// waitReady polls until the server accepts a management connection.
// postmaster.pid's status line ("ready", "standby") tells when it is worth
// trying, which keeps "the database system is starting up" out of the log.
func (n *Node) waitReady(ctx context.Context, pm *postmaster) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.StartTimeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if pm.exited() {
			return fmt.Errorf("postgres exited during start (%s); log:\n%s", exitString(pm.waitErr), n.logTail(pm.logOffset))
		}
		if st := n.pidFileStatus(pm.pid); st == "ready" || st == "standby" || st == "?" {
			cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
			conn, err := n.Connect(cctx)
			ccancel()
			if err == nil {
				conn.Close(ctx)
				return nil
			}
			lastErr = err
			if loginRefused(err) {
				return fmt.Errorf("postgres is up but refused the management login: %w", err)
			}
		}
		select {
		case <-pm.done:
		case <-ctx.Done():
			if lastErr == nil {
				lastErr = errors.New("not ready")
			}
			return fmt.Errorf("not accepting connections: %w (%v); log:\n%s", ctx.Err(), lastErr, n.logTail(pm.logOffset))
		case <-tick.C:
		}
	}
}

// loginRefused: the server answered but will keep refusing (bad password,
// no pg_hba line, missing database), so waiting longer is pointless.
func loginRefused(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	return strings.HasPrefix(pgErr.Code, "28") || pgErr.Code == "3D000"
}

// pidFileStatus returns the status line of postmaster.pid when it belongs
// to pid: "starting", "ready", "standby", "stopping"; "?" when the file has
// no status line; "" when it is missing or someone else's.
func (n *Node) pidFileStatus(pid int) string {
	lines := n.readPidFile()
	if len(lines) == 0 || strings.TrimSpace(lines[0]) != strconv.Itoa(pid) {
		return ""
	}
	if len(lines) < 8 {
		return "?"
	}
	return strings.TrimSpace(lines[7])
}

func (n *Node) readPidFile() []string {
	data, err := safefile.ReadFile(filepath.Join(n.cfg.DataDir, "postmaster.pid"), 4096)
	if err != nil {
		return nil
	}
	return strings.Split(string(data), "\n")
}

// foreignPostmaster returns the pid in postmaster.pid if it is a live
// postgres process that is not our child. A stale file (dead pid, pid
// reused by another program) is left for postgres to handle.
func (n *Node) foreignPostmaster() (int, bool) {
	lines := n.readPidFile()
	if len(lines) == 0 {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return 0, false
	}
	if pm := n.current(); pm != nil && pm.pid == pid && !pm.exited() {
		return 0, false
	}
	if !processAlive(pid) {
		return 0, false
	}
	if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
		c := strings.TrimSpace(string(comm))
		if c != "postgres" && c != "postmaster" {
			return 0, false
		}
	}
	return pid, true
}

// processAlive treats zombies as dead: a postmaster whose parent died
// may linger unreaped under an init that does not reap.
func processAlive(pid int) bool {
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
			s := stat[i+2]
			return s != 'Z' && s != 'X'
		}
		return true
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// logTail returns the last lines written to the log since offset.
func (n *Node) logTail(offset int64) string {
	const maxBytes, maxLines = 16 << 10, 25
	f, err := safefile.OpenRead(n.LogFile())
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	start := max(offset, st.Size()-maxBytes, 0)
	data, err := io.ReadAll(io.NewSectionReader(f, start, st.Size()-start))
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return tailLines(string(data), maxLines)
}

// Stop shuts PostgreSQL down with mode and waits until it has exited. A
// shutdown that takes longer than StopTimeout (or ctx) is escalated:
// smart -> fast -> immediate, then, as a last resort, SIGKILL to the
// postmaster and each of its backends (signalTree). A postmaster that is not our child (see Start) is
// stopped with pg_ctl. No-op when nothing runs.
func (n *Node) Stop(ctx context.Context, mode StopMode) error {
	// Our own session would delay a smart shutdown: drop it first.
	n.closeStatusConn()
	n.opMu.Lock()
	defer n.opMu.Unlock()
	if pm := n.current(); pm != nil && !pm.exited() {
		return n.stopChild(ctx, pm, mode)
	}
	if pid, ok := n.foreignPostmaster(); ok {
		n.log.Info("stopping a postmaster we do not own", "pid", pid, "mode", mode)
		return n.pgctlStop(ctx, mode)
	}
	return nil
}

func (n *Node) stopChild(ctx context.Context, pm *postmaster, mode StopMode) error {
	pm.stopping.Store(true)
	for i, sig := range mode.escalation() {
		n.log.Info("stopping postgres", "pid", pm.pid, "signal", sig)
		if err := pm.proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("stop: signal: %w", err)
		}
		wait := escalateWait
		var waitCtx <-chan struct{}
		if i == 0 {
			wait, waitCtx = n.cfg.StopTimeout, ctx.Done()
		}
		t := time.NewTimer(wait)
		select {
		case <-pm.done:
			t.Stop()
			return nil
		case <-t.C:
		case <-waitCtx:
			t.Stop()
		}
		n.log.Warn("postgres did not stop in time; escalating", "pid", pm.pid, "signal", sig)
	}
	// Backends are in process groups of their own (see signalTree).
	n.log.Error("postgres ignored immediate shutdown; killing it and its children", "pid", pm.pid)
	if err := signalTree(pm.pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("stop: kill: %w", err)
	}
	select {
	case <-pm.done:
		return nil
	case <-time.After(escalateWait):
		return fmt.Errorf("stop: postgres (pid %d) still running after SIGKILL", pm.pid)
	}
}

// pgctlStop stops a postmaster that is not our child, escalating to
// immediate if the requested mode fails or times out.
func (n *Node) pgctlStop(ctx context.Context, mode StopMode) error {
	secs := int(n.cfg.StopTimeout.Seconds())
	if dl, ok := ctx.Deadline(); ok {
		secs = min(secs, int(time.Until(dl).Seconds()))
	}
	secs = max(secs, 1)
	_, err := n.run(ctx, "pg_ctl", "stop", "-D", n.cfg.DataDir, "-m", mode.String(), "-w", "-t", strconv.Itoa(secs))
	if err == nil || mode == StopImmediate {
		if err != nil {
			return fmt.Errorf("pg_ctl stop: %w", err)
		}
		return nil
	}
	n.log.Warn("pg_ctl stop failed; escalating to immediate", "mode", mode, "err", err)
	// Bounded on its own: the caller's context may be what ran out.
	ictx, cancel := context.WithTimeout(context.Background(), escalateWait+5*time.Second)
	defer cancel()
	if _, ierr := n.run(ictx, "pg_ctl", "stop", "-D", n.cfg.DataDir, "-m", "immediate", "-w", "-t", strconv.Itoa(int(escalateWait.Seconds()))); ierr != nil {
		return fmt.Errorf("pg_ctl stop: %w", errors.Join(err, ierr))
	}
	return nil
}

// Reload makes PostgreSQL re-read its configuration (SIGHUP).
func (n *Node) Reload(ctx context.Context) error {
	if pm := n.current(); pm != nil && !pm.exited() {
		if err := pm.proc.Signal(syscall.SIGHUP); err != nil {
			return fmt.Errorf("reload: %w", err)
		}
		return nil
	}
	if _, ok := n.foreignPostmaster(); ok {
		if _, err := n.run(ctx, "pg_ctl", "reload", "-D", n.cfg.DataDir); err != nil {
			return fmt.Errorf("pg_ctl reload: %w", err)
		}
		return nil
	}
	return fmt.Errorf("reload: %w", ErrNotRunning)
}

// Close stops our postmaster (fast, escalating) and waits for its owner
// goroutine: no goroutine of this Node outlives Close. The agent owns
// postgres as a child, so a graceful agent shutdown stops it. A
// postmaster that is not our child is left alone. Close is idempotent.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	n.closeCancel() // aborts a Start that is waiting for readiness
	n.closeStatusConn()

	n.opMu.Lock()
	var err error
	if pm := n.current(); pm != nil && !pm.exited() {
		ctx, cancel := context.WithTimeout(context.Background(), n.cfg.StopTimeout+3*escalateWait)
		err = n.stopChild(ctx, pm, StopFast)
		cancel()
	}
	n.opMu.Unlock()
	n.wg.Wait()
	if err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// Fence makes PostgreSQL stop taking writes as fast as the kernel allows:
// SIGQUIT (immediate shutdown) to the postmaster and each of its
// children, so backends stop even when the postmaster itself is frozen or
// starved, then SIGKILL to all of them if the postmaster is still alive
// after grace. It does not wait
// for a Stop in progress (it is the emergency path) and is safe to call
// concurrently with one.
func (n *Node) Fence(grace time.Duration) error {
	pm := n.current()
	if pm == nil || pm.exited() {
		return nil
	}
	pm.stopping.Store(true)
	n.log.Warn("fencing postgres: immediate shutdown of the postmaster and its backends", "pid", pm.pid)
	if err := signalTree(pm.pid, syscall.SIGQUIT); err != nil {
		return fmt.Errorf("fence: %w", err)
	}
	select {
	case <-pm.done:
		return nil
	case <-time.After(grace):
	}
	n.log.Error("postgres still running after SIGQUIT; killing it and its backends", "pid", pm.pid)
	if err := signalTree(pm.pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("fence: kill: %w", err)
	}
	select {
	case <-pm.done:
		return nil
	case <-time.After(escalateWait):
		return fmt.Errorf("fence: postgres (pid %d) still running after SIGKILL", pm.pid)
	}
}

// Log rotation. PostgreSQL writes its log to a file the agent opened
// for it (O_APPEND), so the file is rotated by copy and truncate, as
// logrotate's copytruncate does: the server never reopens anything, and
// its next line lands at the start of the emptied file. Lines written
// between the copy and the truncate (microseconds) can be lost.
const (
	// LogMaxSize is the size past which postgresql.log is rotated.
	LogMaxSize = 10 << 20
	// LogKeep is how many rotated files are kept (postgresql.log.1 is
	// the newest).
	LogKeep = 5
)

// RotateLog rotates postgresql.log when it is larger than max, keeping
// keep older files; it reports whether it did.
func (n *Node) RotateLog(max int64, keep int) (bool, error) {
	path := n.LogFile()
	st, err := os.Lstat(path)
	if err != nil || !st.Mode().IsRegular() || st.Size() <= max {
		return false, nil
	}
	n.opMu.Lock() // not while a start reads the log's tail
	defer n.opMu.Unlock()
	for i := keep - 1; i >= 1; i-- {
		from, to := fmt.Sprintf("%s.%d", path, i), fmt.Sprintf("%s.%d", path, i+1)
		if err := os.Rename(from, to); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("rotate log: %w", err)
		}
	}
	f, err := safefile.OpenAppend(path, 0o600, n.owner())
	if err != nil {
		return false, fmt.Errorf("rotate log: %w", err)
	}
	defer f.Close()
	r, err := safefile.OpenRead(path)
	if err != nil {
		return false, fmt.Errorf("rotate log: %w", err)
	}
	data, err := io.ReadAll(io.NewSectionReader(r, 0, 4*max))
	r.Close()
	if err != nil {
		return false, fmt.Errorf("rotate log: %w", err)
	}
	if _, err := safefile.Replace(path+".1", data, 0o600, n.owner()); err != nil {
		return false, fmt.Errorf("rotate log: %w", err)
	}
	if err := f.Truncate(0); err != nil {
		return false, fmt.Errorf("rotate log: %w", err)
	}
	return true, nil
}
