package cluster_test

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/pgha/pgha/cluster"
)

func TestKinds(t *testing.T) {
	cause := io.ErrUnexpectedEOF
	cases := []struct {
		err  error
		kind error
		msg  string
	}{
		{cluster.Invalidf("bad %q", "x"), cluster.ErrInvalid, `bad "x"`},
		{cluster.Conflictf("busy: %w", cause), cluster.ErrConflict, "busy: unexpected EOF"},
		{cluster.NotFoundf("no %s", "n9"), cluster.ErrNotFound, "no n9"},
		{cluster.Timeoutf("slow"), cluster.ErrTimeout, "slow"},
		{cluster.Unreachablef("gone"), cluster.ErrUnreachable, "gone"},
		{cluster.NotInitialisedf("new"), cluster.ErrNotInitialised, "new"},
		{&cluster.IneligibleError{Member: "n3", Reason: "is not a Raft voter"}, cluster.ErrConflict, "n3 is not a Raft voter"},
		{fmt.Errorf("wrapped: %w", cluster.Invalidf("deep")), cluster.ErrInvalid, "wrapped: deep"},
	}
	for _, c := range cases {
		if !errors.Is(c.err, c.kind) {
			t.Errorf("%v is not %v", c.err, c.kind)
		}
		if c.err.Error() != c.msg {
			t.Errorf("message %q, want %q", c.err.Error(), c.msg)
		}
		for _, other := range []error{cluster.ErrInvalid, cluster.ErrConflict, cluster.ErrNotFound, cluster.ErrNotLeader} {
			if other != c.kind && errors.Is(c.err, other) {
				t.Errorf("%v also matches %v", c.err, other)
			}
		}
	}
	if !errors.Is(cluster.Conflictf("busy: %w", cause), cause) {
		t.Error("a %w cause is lost")
	}
}
