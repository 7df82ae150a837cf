package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/membership"
)

// candidateMember is a node without Raft state that takes part in
// formation with bootstrap_expect expect.
func candidateMember(name string, expect int, seen string) membership.Member {
	return gossipMember(name, func(m *membership.Meta) { m.HasRaft, m.Expect, m.Seen = false, expect, seen })
}

func TestFormationStep(t *testing.T) {
	now := time.Date(2026, 12, 8, 10, 0, 0, 0, time.UTC)
	three := func(seen string) []membership.Member {
		return []membership.Member{candidateMember("n1", 3, seen), candidateMember("n2", 3, seen), candidateMember("n3", 3, seen)}
	}
	// The hash every node publishes once it sees n1,n2,n3.
	hash := (&formation{seenSet: "n1,n2,n3"}).seenHash()
	cases := []struct {
		name    string
		in      formationInput
		settled bool // the same set was already seen long enough ago
		want    string
		join    bool
		boot    int // voters to bootstrap with
	}{
		{"no bootstrap_expect: wait to be added", formationInput{Self: "n1", Expect: 0}, false, "waiting for a leader to add this node", false, 0},
		{"raft state on disk: never bootstrap again", formationInput{Self: "n1", Expect: 3, HadState: true, Members: three(hash)}, true, "raft state on disk", false, 0},
		{"a formed cluster is joined, not bootstrapped", formationInput{Self: "n1", Expect: 3, Members: append(three(hash), gossipMember("n0", nil))}, true, "asking to join", true, 0},
		{"too few nodes", formationInput{Self: "n1", Expect: 3, Members: three(hash)[:2]}, false, "2 of 3 nodes visible", false, 0},
		{"too many nodes: refuse to guess", formationInput{Self: "n1", Expect: 3, Members: append(three(hash), candidateMember("n4", 3, hash))}, false, "refusing to guess", false, 0},
		{"disagreeing bootstrap_expect is named", formationInput{Self: "n1", Expect: 3, Members: append(three(hash)[:2], candidateMember("n3", 5, ""))}, false, "n3 (bootstrap_expect=5)", false, 0},
		{"a candidate without proof of the credentials is not counted", formationInput{Self: "n1", Expect: 3, Members: three(hash),
			Allowed: func(name string, _ membership.Member) bool { return name != "n3" }}, false, "n3 (no proof", false, 0},
		{"only the smallest name bootstraps", formationInput{Self: "n2", Expect: 3, Members: three(hash)}, true, "waiting for n1 to bootstrap", false, 0},
		{"the others must see the same set", formationInput{Self: "n1", Expect: 3, Members: three("other")}, true, "waiting for n2 to see the same 3 nodes", false, 0},
		{"a set seen just now settles first", formationInput{Self: "n1", Expect: 3, Members: three(hash)}, false, "letting it settle", false, 0},
		{"bootstrap with every candidate as a voter", formationInput{Self: "n1", Expect: 3, Members: three(hash)}, true, "", false, 3},
		{"another cluster's nodes are ignored", formationInput{Self: "n1", Expect: 3, Cluster: "it", Members: append(three(hash)[:2],
			gossipMember("x3", func(m *membership.Meta) { m.Cluster, m.HasRaft = "other", true }))}, false, "2 of 3 nodes visible", false, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := &formation{}
			if c.in.Cluster == "" {
				c.in.Cluster = "it"
			}
			c.in.Now = now
			if c.settled {
				// Seen the same set a while ago.
				f.step(formationInput{Self: c.in.Self, Cluster: c.in.Cluster, Expect: c.in.Expect, Members: c.in.Members, Allowed: c.in.Allowed, Now: now.Add(-time.Second)})
			}
			got := f.step(c.in)
			if !strings.Contains(got.Wait, c.want) || (c.want == "" && got.Wait != "") {
				t.Fatalf("wait %q, want %q", got.Wait, c.want)
			}
			if got.Join != c.join {
				t.Fatalf("join %v, want %v", got.Join, c.join)
			}
			if len(got.Bootstrap) != c.boot {
				t.Fatalf("bootstrap %v, want %d voters", got.Bootstrap, c.boot)
			}
			for _, s := range got.Bootstrap {
				if string(s.Address) != "r-"+string(s.ID) {
					t.Fatalf("voter %s at %s: want its gossiped Raft address", s.ID, s.Address)
				}
			}
		})
	}
}
