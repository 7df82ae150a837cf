package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzFirstBytes feeds arbitrary first bytes from a client to the code
// that reads them: the header check must accept only what fits the
// protocol, and readStartup must end (no panic, no hang) on any input,
// answering at most with 'N' to encryption requests.
func FuzzFirstBytes(f *testing.F) {
	startup := func(code uint32, extra []byte) []byte {
		b := make([]byte, 8, 8+len(extra))
		binary.BigEndian.PutUint32(b[0:4], uint32(8+len(extra)))
		binary.BigEndian.PutUint32(b[4:8], code)
		return append(b, extra...)
	}
	f.Add(startup(196608, []byte("user\x00postgres\x00\x00")))    // protocol 3.0 startup
	f.Add(startup(codeCancel, make([]byte, 8)))                   // cancel request
	f.Add(append(startup(codeSSL, nil), startup(196608, nil)...)) // SSL, then startup
	f.Add(startup(codeGSSENC, nil))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{0, 0, 0, 4})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close() })

	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) >= 8 {
			var h header
			copy(h[:], in)
			if h.check() == nil && (h.length() < 8 || h.length() > maxStartup) {
				t.Fatalf("header %x accepted with length %d", in[:8], h.length())
			}
		}
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		srv, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		// The client sends its bytes and hangs up its side; the reader
		// must then end by itself, bounded by the deadline at worst.
		go func() {
			_, _ = client.Write(in)
			_ = client.(*net.TCPConn).CloseWrite()
			_, _ = io.Copy(io.Discard, client)
		}()
		_ = srv.SetDeadline(time.Now().Add(2 * time.Second))
		done := make(chan error, 1)
		go func() { done <- readStartup(srv.(*net.TCPConn), nil) }()
		select {
		case err := <-done:
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("readStartup waited for bytes a closed client never sends: %x", in)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("readStartup did not return on %x", in)
		}
	})
}
