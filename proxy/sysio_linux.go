//go:build linux

package proxy

import (
	"syscall"
	"unsafe"
)

// sysRead and sysWrite are read(2) and send(2) on a non-blocking socket,
// called from inside RawConn callbacks. They skip the runtime's
// entersyscall/exitsyscall: these calls never block (EAGAIN instead)
// and last microseconds (at most relayBufSize bytes; bulk goes through
// splice, which the runtime wraps as usual), and for a proxy of small
// messages that bookkeeping, with the wake-up of the runtime's monitor
// thread it implies when the process was idle, cost about a sixth of
// the proxy's CPU (bench/RESULTS.md). send uses MSG_NOSIGNAL: a peer
// that is gone yields EPIPE without a SIGPIPE.

func sysRead(fd uintptr, p []byte) (int, error) {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
		switch e {
		case 0:
			return int(r), nil
		case syscall.EINTR:
			continue
		}
		return 0, e
	}
}

func sysWrite(fd uintptr, p []byte) (int, error) {
	for {
		r, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)), syscall.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			return int(r), nil
		case syscall.EINTR:
			continue
		}
		return 0, e
	}
}
