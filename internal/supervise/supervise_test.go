package supervise_test

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgha/pgha/internal/supervise"
	"github.com/pgha/pgha/internal/testutil"
)

// The children are this test binary run again: $SUPERVISE_CHILD names
// what it does instead of running the tests.
const childEnv = "SUPERVISE_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(child(mode))
	}
	os.Exit(m.Run())
}

// child is the body of a child process. Its lines go to stdout, which the
// supervisor appends to the log file the test reads.
func child(mode string) int {
	switch mode {
	case "wait": // report, then wait for SIGTERM and say so
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		fmt.Printf("pid=%d pgrp=%d extra=%q\n", os.Getpid(), syscall.Getpgrp(), os.Getenv("SUPERVISE_EXTRA"))
		<-term
		fmt.Println("got SIGTERM")
		return 0
	case "ignore-term": // only SIGKILL ends it
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ignoring SIGTERM")
		for {
			time.Sleep(time.Hour)
		}
	case "exit3":
		fmt.Fprintln(os.Stdout, "to stdout")
		fmt.Fprintln(os.Stderr, "to stderr")
		return 3
	case "parent":
		return parent()
	}
	fmt.Fprintln(os.Stderr, "unknown mode", mode)
	return 2
}

// parent starts a "wait" grandchild with a parent-death signal. Between
// the fork and the wait, the owner goroutine ends many OS threads: each
// time it parks, a new goroutine that locks its thread and exits (the
// runtime then ends that thread) is ready to run. Were the owner not
// locked to the forking thread, that thread would soon be one of them and
// the kernel would signal the grandchild. parent prints the grandchild's
// PID and waits to be killed.
func parent() int {
	// Keep the main thread for this goroutine: the runtime never ends the
	// main thread (it parks it instead), so an owner or a churning
	// goroutine that ran there would prove nothing.
	runtime.LockOSThread()
	supervise.SetAfterFork(func() {
		for range 100 {
			ended := make(chan struct{})
			go func() {
				runtime.LockOSThread()
				close(ended)
			}()
			<-ended
		}
	})
	sup := supervise.New(supervise.Options{})
	p, err := sup.Start(supervise.Spec{
		Name: "grandchild", Argv: []string{os.Args[0]}, Env: []string{childEnv + "=wait", "GORACE=atexit_sleep_ms=0"},
		LogPath: os.Getenv("SUPERVISE_GRANDCHILD_LOG"), DeathSignal: syscall.SIGTERM,
	})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Printf("grandchild=%d\n", p.PID())
	for {
		time.Sleep(time.Hour)
	}
}

// newSupervisor returns a supervisor that the test's cleanup closes, then
// checks that no goroutine outlived it.
func newSupervisor(t *testing.T, opts supervise.Options) *supervise.Supervisor {
	t.Helper()
	s := supervise.New(opts)
	t.Cleanup(func() {
		closeWithin(t, s, 10*time.Second)
		goleak.VerifyNone(t)
	})
	return s
}

// closeWithin fails the test if Close does not return within d.
func closeWithin(t *testing.T, s *supervise.Supervisor, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		s.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("Close did not return within %s", d)
	}
}

// spec runs this test binary in mode, logging to a file of the test's.
func spec(t *testing.T, name, mode string) supervise.Spec {
	return supervise.Spec{
		Name: name,
		Argv: []string{os.Args[0]},
		// Under -race a child's exit would otherwise sleep a second
		// (the race runtime's atexit_sleep_ms), which graces must cover.
		Env:     []string{childEnv + "=" + mode, "GORACE=atexit_sleep_ms=0"},
		LogPath: filepath.Join(t.TempDir(), name+".log"),
	}
}

// waitLog waits until path holds want.
func waitLog(t *testing.T, path, want string) string {
	t.Helper()
	var got string
	testutil.WaitFor(t, 10*time.Second, fmt.Sprintf("%q in %s", want, path), func() error {
		b, err := os.ReadFile(path)
		got = string(b)
		if err != nil {
			return err
		}
		if !strings.Contains(got, want) {
			return fmt.Errorf("log so far: %q", got)
		}
		return nil
	})
	return got
}

func TestStartAndStop(t *testing.T) {
	s := newSupervisor(t, supervise.Options{})
	sp := spec(t, "a", "wait")
	// `env` execs the program in place, as `ip netns exec` does: the PID
	// the supervisor holds must be the program's.
	sp.Wrapper = []string{"env", "SUPERVISE_EXTRA=through the wrapper"}
	sp.OwnGroup = true
	p, err := s.Start(sp)
	if err != nil {
		t.Fatal(err)
	}
	if p.Name() != "a" || p.PID() <= 0 {
		t.Fatalf("Name, PID = %q, %d", p.Name(), p.PID())
	}
	log := waitLog(t, sp.LogPath, "pid=")
	want := fmt.Sprintf("pid=%d pgrp=%d extra=%q\n", p.PID(), p.PID(), "through the wrapper")
	if log != want {
		t.Errorf("child says %q, want %q (own PID, own process group, wrapper's environment)", log, want)
	}
	if p.Exited() || p.Status() != "" {
		t.Fatalf("running child: Exited %v, Status %q", p.Exited(), p.Status())
	}
	if !p.Stop(10 * time.Second) {
		t.Fatal("Stop: the child had to be killed, want a clean exit on SIGTERM")
	}
	if !p.Exited() || p.Status() != "exit status 0" {
		t.Errorf("after Stop: Exited %v, Status %q; want true, %q", p.Exited(), p.Status(), "exit status 0")
	}
	if log := waitLog(t, sp.LogPath, "got SIGTERM"); !strings.HasSuffix(log, "got SIGTERM\n") {
		t.Errorf("log %q", log)
	}
	if err := p.Signal(syscall.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("Signal after exit = %v, want os.ErrProcessDone", err)
	}
	// Stopping or killing an exited process is a no-op.
	if !p.Stop(time.Millisecond) {
		t.Error("Stop of an exited process reported a kill")
	}
	p.Kill()
}

func TestLogAppendsAndExitIsReported(t *testing.T) {
	exited := make(chan *supervise.Process, 1)
	s := newSupervisor(t, supervise.Options{Exited: exited})
	sp := spec(t, "b", "exit3")
	if err := os.WriteFile(sp.LogPath, []byte("before\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := s.Start(sp)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-exited:
		if got != p {
			t.Fatalf("Exited sent %s (%d), want %s (%d)", got.Name(), got.PID(), p.Name(), p.PID())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit reported")
	}
	if !p.Exited() || p.Status() != "exit status 3" {
		t.Errorf("Exited %v, Status %q; want true, %q", p.Exited(), p.Status(), "exit status 3")
	}
	b, err := os.ReadFile(sp.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), "before\nto stdout\nto stderr\n"; got != want {
		t.Errorf("log = %q, want %q", got, want)
	}
}

func TestStopKillsAfterGrace(t *testing.T) {
	s := newSupervisor(t, supervise.Options{})
	sp := spec(t, "stubborn", "ignore-term")
	p, err := s.Start(sp)
	if err != nil {
		t.Fatal(err)
	}
	waitLog(t, sp.LogPath, "ignoring SIGTERM")
	start := time.Now()
	if p.Stop(300 * time.Millisecond) {
		t.Fatal("Stop reported a clean exit of a child that ignores SIGTERM")
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("killed after %s, before the grace of 300ms", took)
	}
	if p.Status() != "signal: killed" {
		t.Errorf("Status %q, want %q", p.Status(), "signal: killed")
	}
}

func TestKill(t *testing.T) {
	s := newSupervisor(t, supervise.Options{})
	p, err := s.Start(spec(t, "k", "ignore-term"))
	if err != nil {
		t.Fatal(err)
	}
	p.Kill()
	if !p.Exited() || p.Status() != "signal: killed" {
		t.Errorf("after Kill: Exited %v, Status %q", p.Exited(), p.Status())
	}
	if !p.Wait(0) {
		t.Error("Wait on an exited process reported it running")
	}
}

func TestStopAll(t *testing.T) {
	s := newSupervisor(t, supervise.Options{})
	var procs []*supervise.Process
	var logs []string
	for i, mode := range []string{"wait", "ignore-term", "wait"} {
		sp := spec(t, fmt.Sprintf("n%d", i+1), mode)
		p, err := s.Start(sp)
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
		logs = append(logs, sp.LogPath)
	}
	waitLog(t, logs[0], "pid=")
	waitLog(t, logs[1], "ignoring SIGTERM")
	waitLog(t, logs[2], "pid=")
	if p := procs[1]; p.Wait(200 * time.Millisecond) {
		t.Fatalf("%s exited by itself: %s", p.Name(), p.Status())
	}
	killed := s.StopAll(time.Second)
	if len(killed) != 1 || killed[0] != procs[1] {
		var names []string
		for _, p := range killed {
			names = append(names, p.Name())
		}
		t.Errorf("StopAll killed %v, want [n2]", names)
	}
	for _, p := range procs {
		if !p.Exited() {
			t.Errorf("%s still running after StopAll", p.Name())
		}
	}
	if got := s.StopAll(time.Second); len(got) != 0 {
		t.Errorf("second StopAll killed %d processes", len(got))
	}
}

func TestStartAfter(t *testing.T) {
	started := make(chan supervise.Started, 1)
	s := newSupervisor(t, supervise.Options{Started: started})
	first, err := s.Start(spec(t, "r", "exit3"))
	if err != nil {
		t.Fatal(err)
	}
	if !first.Wait(10 * time.Second) {
		t.Fatal("first run did not exit")
	}
	sp := spec(t, "r", "wait")
	begin := time.Now()
	if err := s.StartAfter(200*time.Millisecond, sp); err != nil {
		t.Fatal(err)
	}
	var r supervise.Started
	select {
	case r = <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the delayed start was not reported")
	}
	if took := time.Since(begin); took < 200*time.Millisecond {
		t.Errorf("started after %s, before the delay of 200ms", took)
	}
	if r.Err != nil || r.Proc == nil || r.Spec.Name != "r" {
		t.Fatalf("Started = %+v", r)
	}
	if r.Proc.PID() == first.PID() || r.Proc.Exited() {
		t.Errorf("restarted process: PID %d (first %d), exited %v", r.Proc.PID(), first.PID(), r.Proc.Exited())
	}
	waitLog(t, sp.LogPath, "pid=")

	// A delayed start that fails is reported with its error.
	bad := supervise.Spec{Name: "bad", Argv: []string{filepath.Join(t.TempDir(), "no-such-program")}}
	if err := s.StartAfter(0, bad); err != nil {
		t.Fatal(err)
	}
	select {
	case r = <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the failed delayed start was not reported")
	}
	if r.Err == nil || r.Proc != nil || !strings.Contains(r.Err.Error(), "bad") {
		t.Errorf("Started = %+v, want an error naming bad", r)
	}
}

func TestStopAllAndCloseCancelPendingStarts(t *testing.T) {
	started := make(chan supervise.Started, 2)
	s := newSupervisor(t, supervise.Options{Started: started})
	if err := s.StartAfter(200*time.Millisecond, spec(t, "later", "wait")); err != nil {
		t.Fatal(err)
	}
	if killed := s.StopAll(time.Second); len(killed) != 0 {
		t.Errorf("StopAll killed %d processes", len(killed))
	}
	if err := s.StartAfter(time.Hour, spec(t, "much-later", "wait")); err != nil {
		t.Fatal(err)
	}
	closeWithin(t, s, 5*time.Second) // does not wait for the hour
	time.Sleep(400 * time.Millisecond)
	select {
	case r := <-started:
		t.Errorf("a cancelled start ran: %+v", r)
	default:
	}
	if _, err := s.Start(spec(t, "x", "wait")); !errors.Is(err, supervise.ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
	if err := s.StartAfter(0, spec(t, "y", "wait")); !errors.Is(err, supervise.ErrClosed) {
		t.Errorf("StartAfter after Close = %v, want ErrClosed", err)
	}
}

func TestCloseKillsAndNeverWaitsForAReader(t *testing.T) {
	// Nobody reads this channel: Close must still end the owners.
	exited := make(chan *supervise.Process)
	s := newSupervisor(t, supervise.Options{Exited: exited})
	a, err := s.Start(spec(t, "quick", "exit3"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Start(spec(t, "stubborn", "ignore-term"))
	if err != nil {
		t.Fatal(err)
	}
	if !a.Wait(10 * time.Second) {
		t.Fatal("quick did not exit")
	}
	closeWithin(t, s, 10*time.Second)
	if !b.Exited() || b.Status() != "signal: killed" {
		t.Errorf("after Close: Exited %v, Status %q; want true, %q", b.Exited(), b.Status(), "signal: killed")
	}
}

func TestStartErrors(t *testing.T) {
	s := newSupervisor(t, supervise.Options{})
	if _, err := s.Start(supervise.Spec{Name: "empty"}); err == nil {
		t.Error("Start with no program: no error")
	}
	_, err := s.Start(supervise.Spec{Name: "missing", Argv: []string{filepath.Join(t.TempDir(), "no-such-program")}})
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("Start of a missing program = %v, want an error naming it", err)
	}
	sp := spec(t, "nolog", "exit3")
	sp.LogPath = filepath.Join(t.TempDir(), "no-such-dir", "x.log")
	if _, err := s.Start(sp); err == nil || !strings.Contains(err.Error(), "nolog") {
		t.Errorf("Start with an unwritable log = %v, want an error naming nolog", err)
	}
	if killed := s.StopAll(time.Second); len(killed) != 0 {
		t.Errorf("StopAll after failed starts killed %d processes", len(killed))
	}
}

// Starts, stops and a StopAll from several goroutines at once: for the
// race detector, and to check that every start is either stopped by
// StopAll or by its own goroutine.
func TestConcurrentUse(t *testing.T) {
	s := newSupervisor(t, supervise.Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := s.Start(spec(t, fmt.Sprintf("c%d", i), "wait"))
			if err != nil {
				errs <- err
				return
			}
			if i%2 == 0 {
				p.Kill()
			} else {
				p.Stop(5 * time.Second)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := s.StartAfter(0, spec(t, "late", "wait")); err != nil {
		t.Fatal(err)
	}
	s.StopAll(5 * time.Second)
}

// The parent-death signal reaches the grandchild when its supervising
// process dies, and not before, however many threads that process ends.
func TestDeathSignal(t *testing.T) {
	s := newSupervisor(t, supervise.Options{})
	gclog := filepath.Join(t.TempDir(), "grandchild.log")
	sp := spec(t, "parent", "parent")
	sp.Env = append(sp.Env, "SUPERVISE_GRANDCHILD_LOG="+gclog)
	parent, err := s.Start(sp)
	if err != nil {
		t.Fatal(err)
	}
	out := waitLog(t, sp.LogPath, "grandchild=")
	gc, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(lastLine(out), "grandchild=")))
	if err != nil {
		t.Fatalf("parent says %q", out)
	}
	// If the test fails before the grandchild is gone, end it: it is
	// ours, and its PID cannot have been reused while it ran.
	t.Cleanup(func() {
		if !strings.Contains(readFile(gclog), "got SIGTERM") {
			_ = syscall.Kill(gc, syscall.SIGKILL)
		}
	})
	// A signal sent when the forking thread ended has arrived by now; it
	// may have ended the grandchild before its handler was in place.
	testutil.WaitFor(t, 10*time.Second, "the grandchild to run", func() error {
		log := readFile(gclog)
		if strings.Contains(log, "got SIGTERM") || !alive(gc) {
			t.Fatalf("the grandchild got SIGTERM while its parent lived (the forking thread ended); its log: %q", log)
		}
		if !strings.Contains(log, fmt.Sprintf("pid=%d ", gc)) {
			return fmt.Errorf("log so far: %q", log)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond)
	if log := readFile(gclog); strings.Contains(log, "got SIGTERM") || !alive(gc) {
		t.Fatalf("the grandchild got SIGTERM while its parent lived (the forking thread ended); its log: %q", log)
	}
	parent.Kill()
	waitLog(t, gclog, "got SIGTERM")
}

// alive reports whether pid runs: not gone, not a zombie (the grandchild
// is not our child; whoever inherits it may not reap it at once).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func lastLine(s string) string {
	var last string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		last = sc.Text()
	}
	return last
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
