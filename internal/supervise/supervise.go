// Package supervise runs local child processes for `pgha demo` and the
// integration tests: it starts them (pgha agents, possibly through a
// wrapper such as `ip netns exec NS`), appends their output to a log
// file, watches them exit, and stops them, SIGTERM first and SIGKILL once
// a grace period has passed.
//
// # One owner per process
//
// Each process has one owner goroutine. It locks itself to its OS thread,
// forks the child from that thread and stays in wait(2) until the child
// is gone. This is what makes Spec.DeathSignal safe: the kernel sends the
// parent-death signal when the *thread* that forked the child exits, not
// when the process does, and the Go runtime ends a thread whenever a
// goroutine exits while locked to it. Had the child been forked from a
// thread the scheduler can hand to other goroutines, any such goroutine
// (ours or a library's) could end that thread and with it a healthy
// child. The owner never unlocks: when it returns the runtime ends its
// thread, which by then has no child left to signal. (pgnode forks
// PostgreSQL the same way, for the same reason.)
//
// # Nothing outlives Close
//
// Every goroutine the package starts belongs to a Supervisor: the owners,
// which end when their child has exited, and the timers of StartAfter.
// Close cancels pending starts, waits for starts under way, kills what
// still runs and returns once every goroutine has ended. Notifications on
// Options.Exited and Options.Started give up when Close runs, so a caller
// that stops reading cannot hold a goroutine forever.
package supervise

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// ErrClosed is returned by Start and StartAfter once Close has been called.
var ErrClosed = errors.New("supervisor closed")

// Spec says how to start one process.
type Spec struct {
	// Name identifies the process in errors and to the caller (a node
	// name).
	Name string
	// Argv is the program and its arguments.
	Argv []string
	// Wrapper, if set, is put before Argv, e.g. {"ip", "netns", "exec",
	// NS}. The wrapper must exec Argv in place, so that the PID the
	// supervisor holds, signals and waits for is the program's.
	Wrapper []string
	// Env is added to this process's environment; empty: inherit it as
	// it is.
	Env []string
	// LogPath receives the child's stdout and stderr, appended (the file
	// is created 0600 if missing); empty: both go to /dev/null.
	LogPath string
	// DeathSignal, if not 0, is sent to the child by the kernel when the
	// supervising process dies, however it dies (SIGKILL included).
	DeathSignal syscall.Signal
	// OwnGroup puts the child in a process group of its own, so that a
	// Ctrl-C on the terminal reaches the supervisor only, which then
	// stops its children in order.
	OwnGroup bool
}

// Options are the optional channels a Supervisor reports on.
type Options struct {
	// Exited, if set, receives each process once it has exited, by
	// itself or stopped, after its Done channel is closed.
	Exited chan<- *Process
	// Started, if set, receives the outcome of each StartAfter.
	Started chan<- Started
}

// Started is the outcome of a StartAfter.
type Started struct {
	Spec Spec
	Proc *Process // nil when Err is set
	Err  error
}

// Supervisor owns a set of child processes and the goroutines that watch
// them. Its methods are safe for concurrent use.
type Supervisor struct {
	opts Options
	quit chan struct{} // closed by Close: pending notifications give up

	mu       sync.Mutex
	idle     *sync.Cond // signalled when inflight drops
	closed   bool
	inflight int // starts under way or scheduled; StopAll and Close wait until none is left
	live     map[*Process]struct{}
	pending  map[*delayed]struct{}

	wg sync.WaitGroup // owners and StartAfter timers
}

// delayed is one StartAfter not yet fired.
type delayed struct{ timer *time.Timer }

// New returns a Supervisor with nothing running.
func New(opts Options) *Supervisor {
	s := &Supervisor{
		opts:    opts,
		quit:    make(chan struct{}),
		live:    map[*Process]struct{}{},
		pending: map[*delayed]struct{}{},
	}
	s.idle = sync.NewCond(&s.mu)
	return s
}

// Process is one child process started by a Supervisor.
type Process struct {
	name string
	pid  int
	proc *os.Process
	done chan struct{}
	// status is written by the owner before done is closed and read only
	// after.
	status string
}

// Start starts spec's process and returns once it runs (or failed to).
func (s *Supervisor) Start(spec Spec) (*Process, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	s.inflight++
	s.mu.Unlock()
	defer s.startDone()
	return s.launch(spec)
}

// startDone ends one start counted in inflight.
func (s *Supervisor) startDone() {
	s.mu.Lock()
	s.inflight--
	s.idle.Broadcast()
	s.mu.Unlock()
}

// launch forks spec's process from a new owner goroutine. The caller holds
// an inflight count, so Close waits for it and the WaitGroup is never
// added to while Close waits on it.
func (s *Supervisor) launch(spec Spec) (*Process, error) {
	if len(spec.Argv) == 0 {
		return nil, fmt.Errorf("start %s: no program", spec.Name)
	}
	argv := append(append([]string(nil), spec.Wrapper...), spec.Argv...)
	cmd := exec.Command(argv[0], argv[1:]...)
	if len(spec.Env) > 0 {
		cmd.Env = append(os.Environ(), spec.Env...)
	}
	var logf *os.File
	if spec.LogPath != "" {
		var err error
		logf, err = os.OpenFile(spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", spec.Name, err)
		}
		// An *os.File goes to the child as is: no copying goroutine.
		cmd.Stdout, cmd.Stderr = logf, logf
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: spec.DeathSignal, Setpgid: spec.OwnGroup}

	p := &Process{name: spec.Name, done: make(chan struct{})}
	started := make(chan error, 1)
	s.wg.Add(1)
	go s.own(p, cmd, logf, started)
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	return p, nil
}

// afterFork, set by tests only, runs on the owner goroutine between fork
// and wait: where an owner that had not locked its thread could lose it.
var afterFork func()

// own is p's owner: see the package comment for why it forks from a
// locked thread and never unlocks it.
func (s *Supervisor) own(p *Process, cmd *exec.Cmd, logf *os.File, started chan<- error) {
	defer s.wg.Done()
	runtime.LockOSThread()
	err := cmd.Start()
	if logf != nil {
		logf.Close() // the child has its own descriptor
	}
	if err != nil {
		started <- err
		return
	}
	if afterFork != nil {
		afterFork()
	}
	p.pid, p.proc = cmd.Process.Pid, cmd.Process
	s.mu.Lock()
	s.live[p] = struct{}{}
	s.mu.Unlock()
	started <- nil

	werr := cmd.Wait()
	p.status = statusText(cmd.ProcessState, werr)
	s.mu.Lock()
	delete(s.live, p)
	s.mu.Unlock()
	close(p.done)
	if s.opts.Exited != nil {
		select {
		case s.opts.Exited <- p:
		case <-s.quit:
		}
	}
}

// statusText is how the process ended: "exit status 1", "signal: killed".
func statusText(st *os.ProcessState, err error) string {
	if st != nil {
		return st.String()
	}
	if err != nil {
		return err.Error()
	}
	return "exited"
}

// StartAfter starts spec's process once delay has passed, unless StopAll
// or Close come first, and sends the outcome on Options.Started.
func (s *Supervisor) StartAfter(delay time.Duration, spec Spec) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	d := &delayed{}
	s.pending[d] = struct{}{}
	s.inflight++
	s.wg.Add(1)
	// The timer's function takes s.mu first, so it sees d.timer set even
	// when delay is 0.
	d.timer = time.AfterFunc(delay, func() { s.fire(d, spec) })
	return nil
}

// fire runs on the timer's goroutine.
func (s *Supervisor) fire(d *delayed, spec Spec) {
	defer s.wg.Done()
	s.mu.Lock()
	_, ok := s.pending[d]
	delete(s.pending, d)
	s.mu.Unlock()
	if !ok { // cancelled while the timer was firing
		s.startDone()
		return
	}
	p, err := s.launch(spec)
	s.startDone()
	if s.opts.Started != nil {
		select {
		case s.opts.Started <- Started{Spec: spec, Proc: p, Err: err}:
		case <-s.quit:
		}
	}
}

// cancelPending cancels every StartAfter that has not fired; s.mu held.
func (s *Supervisor) cancelPending() {
	for d := range s.pending {
		delete(s.pending, d)
		// A timer that already fired ends its own count (fire finds
		// itself cancelled); one stopped here never runs.
		if d.timer.Stop() {
			s.inflight--
			s.wg.Done()
		}
	}
	s.idle.Broadcast()
}

// settle cancels pending starts, waits for starts under way and returns
// what runs; s.mu held.
func (s *Supervisor) settle() []*Process {
	s.cancelPending()
	for s.inflight > 0 {
		s.idle.Wait()
	}
	procs := make([]*Process, 0, len(s.live))
	for p := range s.live {
		procs = append(procs, p)
	}
	return procs
}

// StopAll cancels pending StartAfter starts and stops every running
// process at once: SIGTERM to all, then SIGKILL to those still running
// after grace, then waits for every exit. It returns the processes that
// had to be killed. A Start that begins while StopAll runs is not stopped.
func (s *Supervisor) StopAll(grace time.Duration) (killed []*Process) {
	s.mu.Lock()
	procs := s.settle()
	s.mu.Unlock()
	return StopAll(procs, grace)
}

// Close cancels pending starts, waits for starts under way, kills (SIGKILL)
// whatever still runs and returns once every goroutine of the supervisor
// has ended. Call StopAll first for a graceful stop. Close may be called
// more than once.
func (s *Supervisor) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return
	}
	s.closed = true
	procs := s.settle()
	s.mu.Unlock()
	for _, p := range procs {
		_ = p.Signal(syscall.SIGKILL)
	}
	close(s.quit)
	s.wg.Wait()
}

// StopAll stops procs at once: SIGTERM to all, then SIGKILL to those
// still running after grace, then waits for every exit. It returns the
// processes that had to be killed.
func StopAll(procs []*Process, grace time.Duration) (killed []*Process) {
	for _, p := range procs {
		_ = p.Signal(syscall.SIGTERM)
	}
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	late := false // the deadline has fired: check the rest without waiting
	for _, p := range procs {
		if late {
			break
		}
		select {
		case <-p.done:
		case <-deadline.C:
			late = true
		}
	}
	if late {
		for _, p := range procs {
			if !p.Exited() {
				killed = append(killed, p)
				_ = p.Signal(syscall.SIGKILL)
			}
		}
	}
	for _, p := range procs {
		<-p.done
	}
	return killed
}

// Name is Spec.Name.
func (p *Process) Name() string { return p.name }

// PID is the child's process ID (the program's, through a wrapper that
// execs it).
func (p *Process) PID() int { return p.pid }

// Done is closed once the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Status is how the process ended ("exit status 1", "signal: killed"),
// or "" while it runs.
func (p *Process) Status() string {
	if !p.Exited() {
		return ""
	}
	return p.status
}

// Signal sends sig to the process (not its group) and returns at once.
// A process already reaped is not signalled: its PID may have been
// reused.
func (p *Process) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return os.ErrProcessDone
	}
	return p.proc.Signal(sig)
}

// Stop sends SIGTERM, waits up to grace for the process to exit, then
// sends SIGKILL and waits for that. It reports whether the process ended
// within grace.
func (p *Process) Stop(grace time.Duration) bool {
	return len(StopAll([]*Process{p}, grace)) == 0
}

// Kill sends SIGKILL and waits for the process to exit.
func (p *Process) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	<-p.done
}

// Wait waits up to timeout for the process to exit and reports whether
// it did.
func (p *Process) Wait(timeout time.Duration) bool {
	if p.Exited() { // a timer already due would otherwise race done
		return true
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}
