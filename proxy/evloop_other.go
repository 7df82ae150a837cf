//go:build !linux

package proxy

import (
	"errors"
	"log/slog"
	"net"
	"sync/atomic"
)

// Off Linux there is no event loop: every connection is copied by two
// goroutines (relay).
type evloop struct{ failed atomic.Bool }

type loopSession struct {
	done chan struct{}
	dir  [2]struct{ n int64 }
	err  error
}

func newEvloop(*slog.Logger) (*evloop, error) { return nil, errors.New("proxy event loops need Linux") }

func (l *evloop) run()                {}
func (l *evloop) counters() LoopStats { return LoopStats{} }
func (l *evloop) stop()               {}

func (l *evloop) newSession(client, server *net.TCPConn) (*loopSession, error) {
	return nil, errors.New("proxy event loops need Linux")
}

func (l *evloop) add(s *loopSession) error { return errors.New("proxy event loops need Linux") }
func (s *loopSession) Close() error        { return nil }
func (s *loopSession) closeFDs()           {}
