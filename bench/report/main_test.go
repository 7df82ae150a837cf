package main

import (
	"strings"
	"testing"
)

func TestKeptSection(t *testing.T) {
	md := "# R\n\ntext\n\n## Notes\n\nnote 1\n\n## Proxy overhead (`make bench-proxy`)\n\n| a |\n|---|\n\ntail\n"
	if got, want := keptSection(md, "## Notes"), "## Notes\n\nnote 1\n"; got != want {
		t.Errorf("notes: got %q, want %q", got, want)
	}
	if got := keptSection(md, "## Proxy overhead"); !strings.HasPrefix(got, "## Proxy overhead (`make bench-proxy`)") || !strings.HasSuffix(got, "tail\n") {
		t.Errorf("proxy: got %q", got)
	}
	if got := keptSection(md, "## Missing"); got != "" {
		t.Errorf("missing: got %q", got)
	}
}

func TestLongestGap(t *testing.T) {
	tl := &Timeline{BucketMS: 100, StartMS: -1000, OK: []int{1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0}}
	from, to := longestGap(tl)
	if int(from*10+0.5) != 1 || int(to*10+0.5) != 4 {
		t.Errorf("got %.1f..%.1f, want 0.1..0.4 (a trailing empty run does not count)", from, to)
	}
}

func TestMinMedMax(t *testing.T) {
	lo, med, hi := minMedMax([]float64{3, 1, 4, 2})
	if lo != 1 || med != 2.5 || hi != 4 {
		t.Errorf("got %v %v %v", lo, med, hi)
	}
}
