package proxy

import "time"

// Stats is a point-in-time snapshot of both ports, ready for JSON.
type Stats struct {
	Write PortStats `json:"write"`
	Read  PortStats `json:"read"`
	// Loops has one entry per event loop (none with the goroutine copy).
	Loops []LoopStats `json:"loops"`
}

// LoopStats describes one event loop. BusySeconds is the time it spent
// serving its sockets rather than waiting for them: its rate over a
// minute is the share of one core the loop uses, and a rate near 1
// means the loop is what limits the proxy (raise proxy.event_loops).
// Sessions counts the connections it carries now.
type LoopStats struct {
	BusySeconds float64 `json:"busy_seconds_total"`
	Sessions    int64   `json:"sessions"`
}

// PortStats describes one port. Current counts open client connections
// (held ones included), Total every accepted one, Refused those the
// proxy answered with an error itself (port full, hold expired, no
// backend reachable). HoldSecondsTotal is the time clients spent held.
type PortStats struct {
	Listen           string                  `json:"listen"`
	Current          int64                   `json:"current"`
	Total            int64                   `json:"total"`
	Refused          int64                   `json:"refused"`
	Denied           int64                   `json:"denied"` // refused for the client's address (counted in Refused too)
	HeldNow          int64                   `json:"held_now"`
	HeldTotal        int64                   `json:"held_total"`
	HoldSecondsTotal float64                 `json:"hold_seconds_total"`
	Backends         map[string]BackendStats `json:"backends"`
}

// BackendStats describes one backend (by name) behind one port, over
// the proxy's lifetime. BytesIn flows from clients to the backend,
// BytesOut back (HAProxy's convention); both are added when a
// connection's direction ends, not while it runs. Errors counts failed
// dials.
type BackendStats struct {
	Addr     string `json:"addr"`
	Current  int64  `json:"current"`
	Total    int64  `json:"total"`
	BytesIn  int64  `json:"bytes_in"`
	BytesOut int64  `json:"bytes_out"`
	Errors   int64  `json:"errors"`
}

// Stats returns a snapshot of the counters. A disabled port reads as
// zero with an empty Listen.
func (p *Proxy) Stats() Stats {
	st := Stats{Write: p.write.snapshot(), Read: p.read.snapshot(), Loops: []LoopStats{}}
	for _, l := range p.loops {
		st.Loops = append(st.Loops, l.counters())
	}
	return st
}

func (pt *port) snapshot() PortStats {
	if pt == nil {
		return PortStats{Backends: map[string]BackendStats{}}
	}
	s := PortStats{
		Listen:           pt.addr,
		Current:          pt.current.Load(),
		Total:            pt.total.Load(),
		Refused:          pt.refused.Load(),
		Denied:           pt.denied.Load(),
		HeldNow:          pt.heldNow.Load(),
		HeldTotal:        pt.heldTotal.Load(),
		HoldSecondsTotal: time.Duration(pt.holdNanos.Load()).Seconds(),
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	s.Backends = make(map[string]BackendStats, len(pt.stats))
	for name, b := range pt.stats {
		s.Backends[name] = BackendStats{
			Addr:     b.addr,
			Current:  b.current.Load(),
			Total:    b.total.Load(),
			BytesIn:  b.bytesIn.Load(),
			BytesOut: b.bytesOut.Load(),
			Errors:   b.errors.Load(),
		}
	}
	return s
}
