package cluster

import (
	"errors"
	"fmt"
)

// Sentinel errors of operations on the cluster. Match them with
// errors.Is; the message of an error built with the helpers below is the
// reason alone, ready for an operator.
var (
	// ErrNotLeader: a leader-only operation reached a member that is not
	// the Raft leader of the current term (the API forwards it).
	ErrNotLeader = errors.New("not the leader")
	// ErrNotInitialised: the cluster has no primary yet.
	ErrNotInitialised = errors.New("the cluster is not initialised")
	// ErrInvalid: the request itself is wrong (a bad value, a name that
	// is not a member); retrying it unchanged cannot succeed.
	ErrInvalid = errors.New("invalid request")
	// ErrNotFound: the thing asked about does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the request is valid but the cluster's state does not
	// allow it now.
	ErrConflict = errors.New("conflict with the cluster's state")
	// ErrUnreachable: another node or service needed for the request did
	// not answer.
	ErrUnreachable = errors.New("unreachable")
	// ErrTimeout: the operation started but did not finish in time; its
	// outcome is still open (see pgha list).
	ErrTimeout = errors.New("timed out")
)

// kindError is an error of one of the kinds above with its own message.
type kindError struct {
	kind error
	msg  string
	err  error // the cause, if any
}

func (e *kindError) Error() string { return e.msg }

// Unwrap lets errors.Is find both the kind and the cause.
func (e *kindError) Unwrap() []error {
	if e.err != nil {
		return []error{e.kind, e.err}
	}
	return []error{e.kind}
}

func newKind(kind error, format string, args []any) error {
	w := fmt.Errorf(format, args...)
	e := &kindError{kind: kind, msg: w.Error()}
	// Keep a %w cause findable too.
	switch w.(type) {
	case interface{ Unwrap() error }, interface{ Unwrap() []error }:
		e.err = w
	}
	return e
}

// Invalidf is an ErrInvalid with a reason.
func Invalidf(format string, args ...any) error { return newKind(ErrInvalid, format, args) }

// NotFoundf is an ErrNotFound with a reason.
func NotFoundf(format string, args ...any) error { return newKind(ErrNotFound, format, args) }

// Conflictf is an ErrConflict with a reason.
func Conflictf(format string, args ...any) error { return newKind(ErrConflict, format, args) }

// Unreachablef is an ErrUnreachable with a reason.
func Unreachablef(format string, args ...any) error { return newKind(ErrUnreachable, format, args) }

// Timeoutf is an ErrTimeout with a reason.
func Timeoutf(format string, args ...any) error { return newKind(ErrTimeout, format, args) }

// NotInitialisedf is an ErrNotInitialised with a reason.
func NotInitialisedf(format string, args ...any) error {
	return newKind(ErrNotInitialised, format, args)
}

// IneligibleError says why a member may not become the primary (or serve
// reads): the one eligibility rule's verdict. It is an ErrConflict.
type IneligibleError struct {
	Member string
	Reason string
}

func (e *IneligibleError) Error() string { return e.Member + " " + e.Reason }

// Is makes an IneligibleError match ErrConflict.
func (e *IneligibleError) Is(target error) bool { return target == ErrConflict }
