package config

import (
	"errors"
	"fmt"
	"strings"
)

// ErrUnknownKey is wrapped by the *Error reported for a key that is not a
// configuration setting (usually a typo).
var ErrUnknownKey = errors.New("unknown key")

// Error is any problem with the configuration: unreadable or malformed
// file, unknown key, bad value, failed validation. It says where the value
// came from so the user knows what to edit:
//
//	node.yml:12: unknown key "raft.adr"
//	node.yml:7: raft.heartbeat_timeout: invalid duration "abc"
//	PGHA_RAFT_ADDR: invalid address "x": missing port in address
//	--raft.addr: invalid address "x": missing port in address
//	name: required
//
// When several problems are found at once they are returned together with
// errors.Join; errors.As still finds the first *Error.
type Error struct {
	// File is the configuration file the value came from; empty when it
	// came from the environment, a flag or the defaults.
	File string
	// Line is the 1-based line in File; 0 when unknown.
	Line int
	// Source is the environment variable ("PGHA_RAFT_ADDR") or flag
	// ("--raft.addr") the value came from; empty otherwise.
	Source string
	// Key is the dotted key, e.g. "raft.heartbeat_timeout"; empty for
	// problems with the file as a whole.
	Key string
	// Msg describes the problem, without the location and key.
	Msg string
	// Err is the underlying cause, if any, for errors.Is and errors.As.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Source != "":
		b.WriteString(e.Source + ": ")
	}
	if errors.Is(e.Err, ErrUnknownKey) {
		fmt.Fprintf(&b, "unknown key %q", e.Key)
		return b.String()
	}
	// An env var or flag already names its key; repeating it would only
	// add noise. It does not when the key is derived from it (a parameter
	// set through PGHA_POSTGRESQL_PARAMETERS, an advertise address derived
	// from an addr), so the key is printed then.
	if e.Key != "" && e.Source != "--"+e.Key && e.Source != EnvName(e.Key) {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// origin is where a value was set: a file and line, or an env var or flag.
type origin struct {
	file   string
	line   int
	source string
}

// errorf builds an *Error located at o.
func (o origin) errorf(key string, cause error, format string, args ...any) *Error {
	return &Error{
		File:   o.file,
		Line:   o.line,
		Source: o.source,
		Key:    key,
		Msg:    fmt.Sprintf(format, args...),
		Err:    cause,
	}
}

// joinErrors returns nil, the only error, or all of them joined. A single
// problem stays a bare *Error so its message has no extra decoration.
func joinErrors(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return errors.Join(errs...)
}

// quote renders a user-supplied value for an error message, shortened so
// that a stray multi-kilobyte scalar does not flood the terminal.
func quote(s string) string {
	const max = 60
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}
