//go:build linux

package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// An evloop moves the bytes of many proxied connections from one
// goroutine that waits on its own epoll set, as HAProxy's threads do.
// See DESIGN.md, "The event loop".
//
// Why not a goroutine per direction: every message of a query/answer
// exchange then costs a runtime wake-up (netpoller, scheduler, often a
// futex to start a spinning thread) on top of the read and the send.
// Under pgbench that overhead, not the copying, set the proxy's cost.
// Here one epoll_wait reports every socket that is ready, and the loop
// serves each with one read and one send, with no goroutine switch.
//
// Ownership: the loop owns each session's two descriptors (dups of the
// sockets, taken out of Go's poller) from add until it closes them. Other
// goroutines talk to it only through queue (add, kill, held, stop) and
// the eventfd that wakes it. The goroutine that added a session waits on the
// session's done channel, then reads its counters.
type evloop struct {
	epfd int
	wake int // eventfd: queue has work
	// park is epfd as a pollable *os.File: the loop parks in the
	// runtime's netpoller on it (see wait) instead of blocking a thread
	// in epoll_wait. It owns epfd: closing it closes epfd.
	park      *os.File
	parkConn  syscall.RawConn
	parkUntil time.Time // the read deadline set on park
	// poll is the function wait hands to parkConn.Read (made once: a
	// closure per wait would be an allocation per batch); it leaves
	// its answer in polled and pollErr.
	poll    func(uintptr) bool
	events  []unix.EpollEvent
	polled  int
	pollErr error

	log *slog.Logger

	mu      sync.Mutex
	queue   []loopOp
	stopped bool // no more adds: the loop is ending
	closed  bool // wake is closed: nothing may write to it any more
	woken   bool // a wake-up is written and not yet read
	// failed is set when run ended on its own (an epoll error):
	// pickLoop then leaves the loop out.
	failed atomic.Bool
	// busyNanos is the time the loop spent serving batches (not
	// waiting), live: its rate is the share of a core the loop uses,
	// which says when proxy.event_loops should grow. live counts its
	// sessions.
	busyNanos atomic.Int64
	live      atomic.Int64

	// Owned by the loop goroutine.
	byFD     []*loopSession // session by descriptor number
	sessions map[*loopSession]struct{}
	scratch  []byte    // every buffered read lands here first
	spare    [][]byte  // buffers of relayBufSize for unsent bytes
	pipes    [][2]int  // empty splice pipes for reuse
	halfOpen int       // sessions with one direction ended (fin timeout)
	sweptAt  time.Time // last fin-timeout sweep
}

type loopOpKind int

const (
	opAdd loopOpKind = iota
	opKill
	opHeld
)

type loopOp struct {
	kind loopOpKind
	s    *loopSession
	held chan<- loopHeld // opHeld: where the loop answers
}

// loopHeld is what the loop's sessions hold beyond their two sockets.
type loopHeld struct {
	sessions, pipes, bufs int
}

// loopSession is one proxied connection inside a loop.
type loopSession struct {
	loop *evloop
	fd   [2]int     // 0: client, 1: server
	dir  [2]loopDir // dir[i] reads fd[i] and writes fd[1-i]
	ev   [2]uint32  // epoll interest registered for fd[i]; 0: not in the set
	// finAt is when the first direction ended; the other must end
	// within finTimeout.
	finAt time.Time
	err   error
	dead  bool
	done  chan struct{}
}

// loopDir is one direction of a session.
type loopDir struct {
	pend   []byte // read, not yet sent; a slice of a spare buffer
	buf    []byte // the spare buffer behind pend, to give back
	pipe   [2]int // splice pipe while bulk flows, else {-1, -1}
	inPipe int    // bytes spliced into pipe, not yet out of it
	bulk   int    // > 0: splicing, bytes left in this chunk
	eof    bool   // the source ended and the destination was shut for writing
	n      int64  // bytes delivered to the destination
}

const (
	loopEvents = 128
	// maxSparePipes and maxSpareBufs bound what the loop keeps for reuse
	// after bulk transfers and slow readers; the rest is freed.
	maxSparePipes = 8
	maxSpareBufs  = 64
	// sweepEvery is how often the loop looks for half-closed sessions
	// past finTimeout, while it has any.
	sweepEvery = time.Second
)

var errLoopStopped = errors.New("proxy event loop stopped")

func newEvloop(log *slog.Logger) (*evloop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("proxy: epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("proxy: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("proxy: epoll_ctl: %w", err)
	}
	l := &evloop{
		log:      log,
		epfd:     epfd,
		wake:     wake,
		sessions: map[*loopSession]struct{}{},
		scratch:  make([]byte, relayBufSize),
		events:   make([]unix.EpollEvent, loopEvents),
	}
	l.poll = func(uintptr) bool {
		l.polled, l.pollErr = epollWaitNow(l.epfd, l.events)
		return l.pollErr != nil || l.polled > 0
	}
	// A non-blocking descriptor makes os.NewFile register it with the
	// runtime's netpoller; SetReadDeadline fails on a file that is not
	// registered, which tells us the wait below would block a thread.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("proxy: epoll descriptor non-blocking: %w", err)
	}
	l.park = os.NewFile(uintptr(epfd), "proxy-epoll")
	rc, err := l.park.SyscallConn()
	if err == nil {
		l.parkConn = rc
		err = l.park.SetReadDeadline(time.Time{})
	}
	if err != nil {
		l.park.Close()
		unix.Close(wake)
		return nil, fmt.Errorf("proxy: the runtime cannot poll an epoll descriptor: %w", err)
	}
	return l, nil
}

// wait fills l.events with the next batch and returns its size (now is the
// current time); 0 when a second passed with nothing (run then sweeps
// the fin timeouts).
//
// It never blocks in epoll_wait. It polls the loop's set with a zero
// timeout (a raw system call: under load the next events are usually
// there already) and, when nothing is ready, parks the goroutine in the
// runtime's netpoller on the set's own descriptor, which an epoll set
// reports readable when one of its sockets is. Why not a blocking
// epoll_wait: that holds an OS thread in a system call, and the
// runtime's P, handed off while it sleeps, must be won back when it
// wakes; with two loops on two cores they queued behind each other
// (pgha/HAProxy 0.68 for -S), and a single client cost more proxy CPU
// per transaction than with the park (bench/RESULTS.md). Parked, the
// loop is an ordinary goroutine: the thread already polling the
// runtime's netpoller runs it as soon as its set is ready.
func (l *evloop) wait(now time.Time) (int, error) {
	// The park always has a deadline at most sweepEvery ahead: it paces
	// the fin-timeout sweep, and it bounds the wait should a kernel
	// ever fail to wake the pollers of a nested epoll set (DESIGN.md).
	// Re-armed only once passed: one timer change a second, not one
	// per batch.
	if !now.Before(l.parkUntil) {
		l.parkUntil = now.Add(sweepEvery)
		// Fails only on a closed file; without its deadline the loop
		// would neither sweep nor be bounded, so run fails the loop.
		if err := l.park.SetReadDeadline(l.parkUntil); err != nil {
			return 0, err
		}
	}
	// Read calls poll, parks until the set is readable each time poll
	// returns false, and calls it again. The runtime's poller is
	// edge-triggered and Read clears its readiness before the first
	// call: an event that arrives after an empty poll still wakes it.
	err := l.parkConn.Read(l.poll)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return l.polled, l.pollErr
}

// detach takes a socket out of Go's poller: it returns a duplicate
// descriptor (same socket, still non-blocking) and closes c, which
// removes c's descriptor from the runtime's epoll set, so the runtime is
// not woken by traffic the loop handles.
func detach(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(f uintptr) {
		fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup socket: %w", derr)
	}
	c.Close()
	return fd, nil
}

// newSession detaches client and server (closing both on failure) and
// returns a session for add.
func (l *evloop) newSession(client, server *net.TCPConn) (*loopSession, error) {
	cfd, err := detach(client)
	if err != nil {
		client.Close()
		server.Close()
		return nil, err
	}
	sfd, err := detach(server)
	if err != nil {
		unix.Close(cfd)
		server.Close()
		return nil, err
	}
	s := &loopSession{loop: l, fd: [2]int{cfd, sfd}, done: make(chan struct{})}
	for i := range s.dir {
		s.dir[i].pipe = [2]int{-1, -1}
	}
	return s, nil
}

// add hands s to the loop. After a nil return the loop owns s's
// descriptors and closes s.done when the session ends; on error the
// caller still owns them (see closeFDs).
func (l *evloop) add(s *loopSession) error {
	return l.send(loopOp{kind: opAdd, s: s})
}

// Close asks the loop to end s (both sockets closed at once). It does not
// wait; s.done closes when it is done. It satisfies io.Closer for
// closeOnDone.
func (s *loopSession) Close() error {
	s.loop.send(loopOp{kind: opKill, s: s})
	return nil
}

// closeFDs closes the descriptors of a session the loop never took.
func (s *loopSession) closeFDs() {
	unix.Close(s.fd[0])
	unix.Close(s.fd[1])
}

func (l *evloop) send(op loopOp) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return errLoopStopped
	}
	l.queue = append(l.queue, op)
	l.poke()
	return nil
}

// poke wakes the loop unless a wake-up is already pending. It runs
// under mu, as does the close of wake in shutdown: a late poke can
// never write into a descriptor number that something else reused.
func (l *evloop) poke() {
	if l.woken || l.closed {
		return
	}
	l.woken = true
	one := [8]byte{1}
	unix.Write(l.wake, one[:])
}

// stop makes run end every session and return. It does not wait.
func (l *evloop) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	l.poke()
}

// run serves the loop's sessions until stop, then closes every session
// (and any it was still to add) and the loop's own descriptors.
func (l *evloop) run() {
	defer l.shutdown()
	events := l.events
	// One clock read ends a batch's busy time and dates the next wait.
	now := time.Now()
	for {
		n, err := l.wait(now)
		start := time.Now()
		if err != nil {
			// Cannot happen with valid arguments; ending every session
			// beats spinning. New connections go to the other loops,
			// or to goroutines.
			l.failed.Store(true)
			l.log.Error("proxy event loop failed; its connections are closed", "err", err)
			return
		}
		woken := false
		for i := range n {
			fd := int(events[i].Fd)
			if fd == l.wake {
				woken = true
				continue
			}
			if fd < len(l.byFD) {
				if s := l.byFD[fd]; s != nil {
					l.serve(s, fd, events[i].Events)
				}
			}
		}
		// The queue last: a descriptor number closed above may already
		// belong to a session waiting in it, and the stale events of
		// this batch must not reach that one.
		if woken && l.drain() {
			return
		}
		if l.halfOpen > 0 {
			l.sweep()
		}
		now = time.Now()
		l.busyNanos.Add(int64(now.Sub(start)))
	}
}

// counters reads the loop's live counters; any goroutine may call it.
func (l *evloop) counters() LoopStats {
	return LoopStats{BusySeconds: time.Duration(l.busyNanos.Load()).Seconds(), Sessions: l.live.Load()}
}

// drain runs the queued operations; true means stop.
func (l *evloop) drain() bool {
	var buf [8]byte
	l.mu.Lock()
	unix.Read(l.wake, buf[:])
	l.woken = false
	ops, stopped := l.queue, l.stopped
	l.queue = nil
	l.mu.Unlock()
	for _, op := range ops {
		switch op.kind {
		case opAdd:
			if stopped {
				op.s.closeFDs()
				op.s.dead = true
				close(op.s.done)
				continue
			}
			l.register(op.s)
		case opKill:
			l.end(op.s, errors.New("closed by the proxy"))
		case opHeld:
			op.held <- l.heldNow()
		}
	}
	return stopped
}

// held asks the loop what its sessions hold (see heldNow). It waits for
// the loop's answer: call it on a loop that runs (or has stopped).
func (l *evloop) held() (loopHeld, error) {
	ch := make(chan loopHeld, 1)
	if err := l.send(loopOp{kind: opHeld, held: ch}); err != nil {
		return loopHeld{}, err
	}
	h, ok := <-ch
	if !ok {
		return loopHeld{}, errLoopStopped
	}
	return h, nil
}

// heldNow counts the pipes and spare buffers the live sessions hold:
// an idle session should hold none (they go back to the loop's free
// lists when a burst is over).
func (l *evloop) heldNow() loopHeld {
	h := loopHeld{sessions: len(l.sessions)}
	for s := range l.sessions {
		for i := range s.dir {
			if s.dir[i].pipe[0] >= 0 {
				h.pipes++
			}
			if s.dir[i].buf != nil {
				h.bufs++
			}
		}
	}
	return h
}

func (l *evloop) register(s *loopSession) {
	l.sessions[s] = struct{}{}
	l.live.Add(1)
	for i, fd := range s.fd {
		for fd >= len(l.byFD) {
			l.byFD = append(l.byFD, make([]*loopSession, len(l.byFD)+64)...)
		}
		l.byFD[fd] = s
		s.ev[i] = unix.EPOLLIN
		ev := unix.EpollEvent{Events: s.ev[i], Fd: int32(fd)}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			l.end(s, fmt.Errorf("epoll_ctl add: %w", err))
			return
		}
	}
}

// serve handles the events of one of s's descriptors.
func (l *evloop) serve(s *loopSession, fd int, ev uint32) {
	i := 0
	if fd == s.fd[1] {
		i = 1
	}
	if ev&unix.EPOLLERR != 0 {
		// A reset (or an ICMP error). Bytes that arrived before it are
		// still readable, e.g. the FATAL a server sends before it
		// closes with unread input (which resets): pass them on, best
		// effort, then end.
		l.salvage(s, i)
		l.end(s, sockError(fd))
		return
	}
	// Writable: flush what waits for this socket first, then read: the
	// read side of this socket may have been waiting for nothing else.
	if ev&unix.EPOLLOUT != 0 {
		if !l.flush(s, 1-i) {
			return
		}
		// A pipe emptied here goes back even mid-chunk (spliceIn takes
		// one again when the source has more), so a session that goes
		// idle after a burst its client was slow to read holds none.
		if d := &s.dir[1-i]; d.inPipe == 0 && d.pipe[0] >= 0 {
			l.putPipe(d.pipe)
			d.pipe = [2]int{-1, -1}
		}
	}
	// EPOLLHUP without an error means both halves are shut: the peer's
	// FIN (still to be read, after any data before it) and our own
	// half-close. It is read like input, up to the EOF.
	if ev&(unix.EPOLLIN|unix.EPOLLHUP) != 0 {
		if !l.read(s, i) {
			return
		}
	}
	l.rearm(s)
}

// salvage sends on what direction i's source still holds, as long as
// the destination takes it without waiting.
func (l *evloop) salvage(s *loopSession, i int) {
	d := &s.dir[i]
	if d.eof || d.pend != nil || d.inPipe > 0 {
		return
	}
	for {
		n, err := sysRead(uintptr(s.fd[i]), l.scratch)
		if err != nil || n <= 0 {
			return
		}
		w, err := sysWrite(uintptr(s.fd[1-i]), l.scratch[:n])
		if w > 0 {
			d.n += int64(w)
		}
		if err != nil || w < n {
			return
		}
	}
}

// sockError returns the pending error of a socket.
func sockError(fd int) error {
	if e, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && e != 0 {
		return unix.Errno(e)
	}
	return errors.New("socket error")
}

// read serves direction i: one read of its source, sent on at once.
// False means the session ended.
func (l *evloop) read(s *loopSession, i int) bool {
	d := &s.dir[i]
	if d.eof || d.pend != nil || d.inPipe > 0 {
		return true // waiting for the destination, or done
	}
	src, dst := s.fd[i], s.fd[1-i]
	if d.bulk > 0 {
		return l.spliceIn(s, i)
	}
	n, err := sysRead(uintptr(src), l.scratch)
	switch {
	case err == unix.EAGAIN:
		return true
	case err != nil:
		l.end(s, fmt.Errorf("read: %w", err))
		return false
	case n == 0:
		return l.ended(s, i)
	}
	w, err := sysWrite(uintptr(dst), l.scratch[:n])
	if err == unix.EAGAIN {
		w, err = 0, nil
	}
	if err != nil {
		l.end(s, fmt.Errorf("send: %w", err))
		return false
	}
	d.n += int64(w)
	if w < n {
		// The destination is full: keep the rest and wait for it.
		d.buf = l.getBuf()
		d.pend = d.buf[:copy(d.buf, l.scratch[w:n])]
		return true
	}
	if n == len(l.scratch) {
		// A full buffer: bulk. Splice the next chunk (see relay).
		d.bulk = spliceChunk
	}
	return true
}

// ended passes on a clean EOF of direction i's source as a half-close of
// its destination. False means the session ended.
func (l *evloop) ended(s *loopSession, i int) bool {
	d := &s.dir[i]
	d.eof = true
	if err := unix.Shutdown(s.fd[1-i], unix.SHUT_WR); err != nil && err != unix.ENOTCONN {
		l.end(s, fmt.Errorf("shutdown: %w", err))
		return false
	}
	if s.dir[1-i].eof {
		l.end(s, nil)
		return false
	}
	s.finAt = time.Now()
	l.halfOpen++
	return true
}

// spliceIn moves bulk bytes of direction i from its source into the
// pipe and on to the destination, until one of them would block or the
// chunk is done. False means the session ended.
func (l *evloop) spliceIn(s *loopSession, i int) bool {
	d := &s.dir[i]
	if d.pipe[0] < 0 {
		p, err := l.getPipe()
		if err != nil {
			l.end(s, err)
			return false
		}
		d.pipe = p
	}
	for d.bulk > 0 {
		n, err := spliceNB(s.fd[i], d.pipe[1], d.bulk)
		switch {
		case err == unix.EAGAIN:
			// The source is drained: the burst is over. Back to
			// buffered reads, so an idle session holds no pipe.
			l.leaveBulk(d)
			return true
		case err != nil:
			l.end(s, fmt.Errorf("splice: %w", err))
			return false
		case n == 0:
			l.leaveBulk(d)
			return l.ended(s, i)
		}
		d.inPipe += int(n)
		d.bulk -= int(n)
		if d.bulk <= 0 {
			d.bulk = 0
		}
		if !l.flush(s, i) {
			return false
		}
		if d.inPipe > 0 {
			return true // the destination is full
		}
	}
	l.leaveBulk(d)
	return true
}

// spliceNB moves up to n bytes from in to out (one of them a pipe)
// without blocking.
func spliceNB(in, out, n int) (int64, error) {
	for {
		m, err := unix.Splice(in, nil, out, nil, n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if err != unix.EINTR {
			return m, err
		}
	}
}

// leaveBulk returns a direction whose pipe is empty to buffered reads.
func (l *evloop) leaveBulk(d *loopDir) {
	d.bulk = 0
	if d.pipe[0] >= 0 && d.inPipe == 0 {
		l.putPipe(d.pipe)
		d.pipe = [2]int{-1, -1}
	}
}

// flush sends what direction i holds for its destination. False means
// the session ended.
func (l *evloop) flush(s *loopSession, i int) bool {
	d := &s.dir[i]
	dst := s.fd[1-i]
	for len(d.pend) > 0 {
		w, err := sysWrite(uintptr(dst), d.pend)
		if err == unix.EAGAIN {
			return true
		}
		if err != nil {
			l.end(s, fmt.Errorf("send: %w", err))
			return false
		}
		d.n += int64(w)
		d.pend = d.pend[w:]
	}
	if d.buf != nil {
		l.putBuf(d.buf)
		d.buf, d.pend = nil, nil
	}
	for d.inPipe > 0 {
		n, err := spliceNB(d.pipe[0], dst, d.inPipe)
		if err == unix.EAGAIN {
			return true
		}
		if err != nil {
			l.end(s, fmt.Errorf("splice: %w", err))
			return false
		}
		d.inPipe -= int(n)
		d.n += n
		splicedBytes.Add(n)
	}
	if d.bulk == 0 {
		l.leaveBulk(d)
	}
	return true
}

// rearm brings the epoll interest of s's sockets in line with its
// state: a source is read only when its direction holds nothing unsent,
// a destination is watched for room only while it does. In the steady
// state of a query/answer session both stay "readable" and no epoll_ctl
// is made. A socket with no interest at all leaves the epoll set: epoll
// reports EPOLLHUP whatever the mask, and a hung-up source muted behind
// a full destination would otherwise be reported in every batch.
func (l *evloop) rearm(s *loopSession) {
	for i, fd := range s.fd {
		var want uint32
		if d := &s.dir[i]; !d.eof && d.pend == nil && d.inPipe == 0 {
			want |= unix.EPOLLIN
		}
		if d := &s.dir[1-i]; d.pend != nil || d.inPipe > 0 {
			want |= unix.EPOLLOUT
		}
		if want == s.ev[i] {
			continue
		}
		op := unix.EPOLL_CTL_MOD
		switch {
		case want == 0:
			op = unix.EPOLL_CTL_DEL
		case s.ev[i] == 0:
			op = unix.EPOLL_CTL_ADD
		}
		s.ev[i] = want
		ev := unix.EpollEvent{Events: want, Fd: int32(fd)}
		if err := unix.EpollCtl(l.epfd, op, fd, &ev); err != nil {
			l.end(s, fmt.Errorf("epoll_ctl: %w", err))
			return
		}
	}
}

// end closes s: both sockets at once, its buffers and pipes back to
// the loop, then done.
func (l *evloop) end(s *loopSession, err error) {
	if s.dead {
		return
	}
	s.dead = true
	s.err = err
	if !s.finAt.IsZero() {
		l.halfOpen--
	}
	delete(l.sessions, s)
	l.live.Add(-1)
	for i, fd := range s.fd {
		if fd < len(l.byFD) && l.byFD[fd] == s {
			l.byFD[fd] = nil
		}
		// Deregister before closing: a child process between fork and
		// exec (the agent runs PostgreSQL's programs) may still hold the
		// socket, which would keep it in the epoll set under a number
		// a new session may get.
		if s.ev[i] != 0 {
			unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
			s.ev[i] = 0
		}
		unix.Close(fd)
		d := &s.dir[i]
		if d.buf != nil {
			l.putBuf(d.buf)
			d.buf, d.pend = nil, nil
		}
		if d.pipe[0] >= 0 {
			if d.inPipe == 0 {
				l.putPipe(d.pipe)
			} else {
				unix.Close(d.pipe[0])
				unix.Close(d.pipe[1])
			}
			d.pipe = [2]int{-1, -1}
		}
	}
	close(s.done)
}

// sweep ends sessions that stayed half-closed beyond finTimeout.
func (l *evloop) sweep() {
	now := time.Now()
	if now.Sub(l.sweptAt) < sweepEvery {
		return
	}
	l.sweptAt = now
	for s := range l.sessions {
		if !s.finAt.IsZero() && now.Sub(s.finAt) > finTimeout {
			l.end(s, errors.New("half-closed beyond the fin timeout"))
		}
	}
}

// shutdown ends every session, refuses new ones and closes the loop's
// descriptors.
func (l *evloop) shutdown() {
	l.mu.Lock()
	l.stopped, l.closed = true, true
	ops := l.queue
	l.queue = nil
	unix.Close(l.wake)
	l.mu.Unlock()
	for s := range l.sessions {
		l.end(s, errLoopStopped)
	}
	for _, op := range ops {
		switch {
		case op.kind == opAdd && !op.s.dead:
			op.s.closeFDs()
			op.s.dead = true
			close(op.s.done)
		case op.kind == opHeld:
			close(op.held) // held reports the stop
		}
	}
	for _, p := range l.pipes {
		unix.Close(p[0])
		unix.Close(p[1])
	}
	l.pipes = nil
	l.park.Close() // closes epfd
}

func (l *evloop) getBuf() []byte {
	if n := len(l.spare); n > 0 {
		b := l.spare[n-1]
		l.spare = l.spare[:n-1]
		return b
	}
	return make([]byte, relayBufSize)
}

func (l *evloop) putBuf(b []byte) {
	if len(l.spare) < maxSpareBufs {
		l.spare = append(l.spare, b[:cap(b)])
	}
}

func (l *evloop) getPipe() ([2]int, error) {
	if n := len(l.pipes); n > 0 {
		p := l.pipes[n-1]
		l.pipes = l.pipes[:n-1]
		return p, nil
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return p, fmt.Errorf("pipe2: %w", err)
	}
	return p, nil
}

func (l *evloop) putPipe(p [2]int) {
	if len(l.pipes) < maxSparePipes {
		l.pipes = append(l.pipes, p)
		return
	}
	unix.Close(p[0])
	unix.Close(p[1])
}

// epollWaitNow is epoll_wait with a zero timeout as a raw system call:
// it never blocks, so it can skip entersyscall/exitsyscall (see
// sysio_linux.go). epoll_pwait with a nil mask is epoll_wait on every
// architecture, including those without the older call.
func epollWaitNow(epfd int, events []unix.EpollEvent) (int, error) {
	for {
		r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
		switch e {
		case 0:
			return int(r), nil
		case unix.EINTR:
			// Not expected with a zero timeout; an empty answer here
			// would park the loop with events pending.
			continue
		}
		return 0, e
	}
}
