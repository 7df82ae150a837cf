package pgnode

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// PostgreSQL's children (backends, walsenders, background workers) call
// setsid() when the postmaster forks them, so each is the leader of its
// own process group: a signal to the postmaster's group reaches the
// postmaster alone. The emergency paths (fence, a stop that escalates to
// SIGKILL) therefore signal every child by PID as well, so a backend
// cannot keep committing for a client once its postmaster is gone.

// childPIDs returns the PIDs whose parent is ppid (Linux /proc; nil
// elsewhere or when /proc cannot be read).
func childPIDs(ppid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if parentOf(pid) == ppid {
			out = append(out, pid)
		}
	}
	return out
}

// parentOf reads the parent PID from /proc/PID/stat: "pid (comm) state
// ppid ...", where comm may contain spaces and parentheses, so the
// fields are counted from the last ')'.
func parentOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -1
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return -1
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 2 {
		return -1
	}
	ppid, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return -1
	}
	return ppid
}

// signalTree sends sig to the postmaster's process group and to each of
// its children. A process already gone is not an error. The postmaster
// is signalled first, without waiting for the /proc scan (milliseconds
// during which a resumed server could still commit): after SIGQUIT it
// lives on while it waits for its children, so they are still found as
// its children. SIGKILL ends it at once and the kernel reparents its
// children, so for SIGKILL they are listed before.
func signalTree(pid int, sig syscall.Signal) error {
	var children []int
	if sig == syscall.SIGKILL {
		children = childPIDs(pid)
	}
	err := syscall.Kill(-pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		err = nil
	}
	if sig != syscall.SIGKILL {
		children = childPIDs(pid)
	}
	for _, c := range children {
		if cerr := syscall.Kill(c, sig); cerr != nil && !errors.Is(cerr, syscall.ESRCH) {
			err = errors.Join(err, fmt.Errorf("signal backend %d: %w", c, cerr))
		}
	}
	return err
}
