package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
)

// The proxy understands exactly one PostgreSQL message: the first one a
// client sends, which has no type byte, only a length and a code. That
// is enough to tell a cancel request (which must be fanned out) from a
// session (which is spliced to one backend), and to answer a client we
// turn away with an ErrorResponse it can show.
const (
	codeCancel = 80877102 // CancelRequest: length, code, pid, secret key
	codeSSL    = 80877103 // SSLRequest: length 8
	codeGSSENC = 80877104 // GSSENCRequest: length 8

	// A cancel request is 16 bytes up to protocol 3.1 (PostgreSQL 15);
	// protocol 3.2 (PostgreSQL 18) allows secret keys of up to 256
	// bytes, which costs nothing to pass on as well.
	minCancelLen = 16
	maxCancelLen = 12 + 256
	// maxStartup matches PostgreSQL's own limit on a startup packet.
	maxStartup = 10000
)

var errGarbage = errors.New("not a PostgreSQL startup packet")

// header is a client's first 8 bytes.
type header [8]byte

func (h *header) length() int  { return int(binary.BigEndian.Uint32(h[0:4])) }
func (h *header) code() uint32 { return binary.BigEndian.Uint32(h[4:8]) }

// check rejects what no PostgreSQL client sends as a first packet.
func (h *header) check() error {
	n := h.length()
	switch {
	case n < 8 || n > maxStartup:
		return errGarbage
	case h.code() == codeCancel && (n < minCancelLen || n > maxCancelLen):
		return errGarbage
	case (h.code() == codeSSL || h.code() == codeGSSENC) && n != 8:
		return errGarbage
	}
	return nil
}

// readHeader reads exactly 8 bytes: io.ReadFull on the socket never
// takes more, so whatever follows stays in the kernel for the splice.
func readHeader(c *net.TCPConn) (header, error) {
	var h header
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return h, err
	}
	return h, h.check()
}

// readStartup consumes a client's startup packet so that an error reply
// reaches it: closing a socket with unread input makes the kernel send
// RST, and the client may then lose our ErrorResponse. first is a header
// already read, or nil. SSL and GSS encryption requests are declined
// ('N', as a server without them would) and the real startup follows.
// A cancel request gets no reply: errGarbage tells the caller to just
// close.
func readStartup(c *net.TCPConn, first *header) error {
	h := first
	for range 3 {
		if h == nil {
			nh, err := readHeader(c)
			if err != nil {
				return err
			}
			h = &nh
		}
		switch h.code() {
		case codeSSL, codeGSSENC:
			if _, err := c.Write([]byte{'N'}); err != nil {
				return err
			}
			h = nil
			continue
		case codeCancel:
			return errGarbage
		}
		_, err := io.CopyN(io.Discard, c, int64(h.length()-8))
		return err
	}
	return errGarbage // a client that keeps asking for encryption
}

// errorResponse builds a FATAL ErrorResponse message.
func errorResponse(sqlstate, msg string) []byte {
	var body []byte
	field := func(t byte, v string) {
		body = append(body, t)
		body = append(body, v...)
		body = append(body, 0)
	}
	field('S', "FATAL")
	field('V', "FATAL")
	field('C', sqlstate)
	field('M', msg)
	body = append(body, 0)
	out := make([]byte, 5, 5+len(body))
	out[0] = 'E'
	binary.BigEndian.PutUint32(out[1:5], uint32(4+len(body)))
	return append(out, body...)
}
