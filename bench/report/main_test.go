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

func TestMergePatroni(t *testing.T) {
	old := &Result{Date: "2026-11-27T11:40:10Z", Settings: map[string]PatroniSetting{
		"default": {Series: []Series{{Kind: "rto", Median: 24}, {Kind: "idle-cpu", Median: 0.7}},
			Timelines: map[string]map[string][]Timeline{"kill": {"haproxy": {{Run: 1}}}}},
		"tuned": {Series: []Series{{Kind: "rto", Median: 9.5}}},
	}}
	idleOnly := &Result{Date: "2026-12-08T03:00:00Z", Settings: map[string]PatroniSetting{
		"default": {Series: []Series{{Kind: "idle-cpu", Median: 0.8}}},
	}}
	m := mergePatroni([]*Result{old, idleOnly})
	if m.Date != idleOnly.Date {
		t.Errorf("merged date %s, want the newest", m.Date)
	}
	d := m.patroni("default")
	if s := d.series("idle-cpu"); s == nil || s.Median != 0.8 {
		t.Errorf("idle-cpu %+v, want the newest run's", s)
	}
	if s := d.series("rto"); s == nil || s.Median != 24 {
		t.Errorf("rto %+v, want the older run's (the newest has none)", s)
	}
	if len(d.Timelines["kill"]["haproxy"]) != 1 {
		t.Errorf("timelines not carried over: %+v", d.Timelines)
	}
	if s := m.patroni("tuned").series("rto"); s == nil || s.Median != 9.5 {
		t.Errorf("a setting only the older run has was dropped: %+v", s)
	}
	if len(idleOnly.Settings["default"].Series) != 1 {
		t.Error("merging changed its input")
	}
}
