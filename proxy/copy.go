package proxy

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// The relay copies one direction of a proxied connection. It reads into
// a small buffer and writes what it read, as HAProxy does for small
// transfers, and hands the socket pair to splice(2) (zero copy) once the
// direction carries bulk data. See DESIGN.md, "The copy path".
const (
	// relayBufSize is the user-space buffer of one direction: HAProxy's
	// default tune.bufsize. A read that fills it means more was waiting
	// in the kernel than a query/answer exchange usually holds.
	relayBufSize = 16 << 10
	// spliceChunk is how many bytes a direction hands to splice each
	// time it sees bulk, before it reads into its buffer again. At 1 MiB
	// the buffered read that detects bulk is under 2% of a long
	// transfer, and a session that goes back to small messages leaves
	// splice after at most this many bytes.
	spliceChunk = 1 << 20
)

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// splicedBytes counts the bytes every relay moved with io.Copy between
// the two sockets (splice on Linux), for tests. It is touched once per
// chunk, never per message.
var splicedBytes atomic.Int64

// relay copies src to dst until src's EOF (nil error) or an error, and
// returns the bytes written to dst.
//
// Small messages (a query, a row, ReadyForQuery) take one read and one
// send, which costs fewer system calls than splice's two per message
// plus a pipe. A read that fills the buffer is the sign of bulk (a large
// result, COPY, a dump): the relay then gives up to spliceChunk bytes to
// io.Copy between the two bare *net.TCPConn, which on Linux runs
// splice(2) through a pipe so the bytes never enter user space, and
// afterwards reads into its buffer again.
//
// The small path runs inside the sockets' RawConn callbacks: the poller
// still does the waiting (deadlines and Close end it), the buffer comes
// from the pool only once a read returned data, so an idle connection
// holds none, and sysRead/sysWrite skip the runtime's syscall
// bookkeeping (see sysio_linux.go). After a short read the relay reads
// once more (EAGAIN) before it waits, as net.Conn.Read does: skipping
// that read is not safe, because a short read can also mean a FIN is
// queued behind the data and Go's edge-triggered poller may already
// have reported it.
func relay(dst, src *net.TCPConn) (written int64, err error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	wc, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		bp   *[]byte
		nr   int
		rerr error
		out  []byte // read, not yet written
		werr error
	)
	// read runs under src's read lock with the poller armed: returning
	// false waits until src is readable, true ends rc.Read.
	read := func(fd uintptr) bool {
		bp = relayBufs.Get().(*[]byte)
		nr, rerr = sysRead(fd, *bp)
		if rerr == syscall.EAGAIN {
			relayBufs.Put(bp)
			return false
		}
		return true
	}
	// write runs under dst's write lock: false waits until dst is
	// writable (a Close of dst ends that wait).
	write := func(fd uintptr) bool {
		for len(out) > 0 {
			n, err := sysWrite(fd, out)
			if err == syscall.EAGAIN {
				return false
			}
			if err != nil {
				werr = os.NewSyscallError("write", err)
				return true
			}
			written += int64(n)
			out = out[n:]
		}
		return true
	}
	for {
		if err := rc.Read(read); err != nil {
			return written, err // deadline, or src closed
		}
		if rerr != nil || nr <= 0 {
			relayBufs.Put(bp)
			if rerr != nil {
				return written, os.NewSyscallError("read", rerr)
			}
			return written, nil // EOF
		}
		out = (*bp)[:nr]
		err := wc.Write(write)
		relayBufs.Put(bp)
		if err == nil {
			err = werr
		}
		if err != nil {
			return written, err
		}
		if nr < relayBufSize {
			continue
		}
		// Bulk. src must stay a bare *net.TCPConn (only the
		// LimitedReader that TCPConn.ReadFrom knows how to splice
		// from wraps it), or Go falls back to a user-space copy.
		lr := io.LimitedReader{R: src, N: spliceChunk}
		m, err := io.Copy(dst, &lr)
		written += m
		splicedBytes.Add(m)
		if err != nil {
			return written, err
		}
		if lr.N > 0 {
			return written, nil // EOF inside the chunk
		}
	}
}
