// Command report turns the benchmark results in bench/results/*.json into
// bench/RESULTS.md (tables, pgha next to Patroni), SVG plots under
// bench/plots/ and one combined bench/results/<date>-<host>.json.
//
//	go run ./bench/report [-dir bench]
//
// For each kind of result (bootstrap, failover, clone, idle, proxy,
// patroni) it uses the newest file, by its "date" field. The proxy
// section of RESULTS.md belongs to the proxy work: it is copied through
// unchanged.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

func main() {
	dir := flag.String("dir", "bench", "the bench directory (results/ in, RESULTS.md and plots/ out)")
	flag.Parse()
	if err := run(*dir); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

// Series is one measured figure over runs, as the benchmarks write it.
type Series struct {
	Name    string    `json:"name"`
	Kind    string    `json:"kind"`
	Probe   string    `json:"probe"`
	Seconds []float64 `json:"seconds"`
	Failed  []int     `json:"failed_attempts"`
	Min     float64   `json:"min"`
	Median  float64   `json:"median"`
	Max     float64   `json:"max"`
}

// Timeline is successful and failed writes per bucket around a fault.
type Timeline struct {
	Run      int   `json:"run"`
	BucketMS int   `json:"bucket_ms"`
	StartMS  int   `json:"start_ms"`
	OK       []int `json:"ok"`
	Failed   []int `json:"failed"`
}

// Result is the union of the fields the result files use.
type Result struct {
	file      string
	Benchmark string                           `json:"benchmark"`
	Date      string                           `json:"date"`
	Error     string                           `json:"error"`
	Machine   map[string]any                   `json:"machine"`
	Load      map[string]string                `json:"load"`
	Runs      int                              `json:"runs"`
	Series    []Series                         `json:"series"`
	Timelines map[string]map[string][]Timeline `json:"timelines"`
	Probe     string                           `json:"probe"`
	// bootstrap (scripts/bench-bootstrap.sh)
	Seconds json.RawMessage `json:"seconds"`
	Min     float64         `json:"min"`
	Median  float64         `json:"median"`
	Max     float64         `json:"max"`
	// clone
	CloneSeconds  float64 `json:"-"`
	DatabaseBytes int64   `json:"database_bytes"`
	Scale         int     `json:"pgbench_scale"`
	// proxy
	Rounds    int                   `json:"rounds"`
	DurationS int                   `json:"duration_s"`
	Proxy     map[string]ProxyRatio `json:"results"`
	// patroni
	Settings map[string]PatroniSetting `json:"-"`
	RawSet   json.RawMessage           `json:"settings"`
}

// ProxyRatio is one pgbench workload of the proxy benchmark.
type ProxyRatio struct {
	Median          map[string]float64 `json:"median"`
	PghaVsDirect    float64            `json:"pgha_vs_direct"`
	HAProxyVsDirect float64            `json:"haproxy_vs_direct"`
	PghaVsHAProxy   float64            `json:"pgha_vs_haproxy"`
}

// PatroniSetting is one Patroni configuration's results.
type PatroniSetting struct {
	Patroni   map[string]int                   `json:"patroni"`
	Series    []Series                         `json:"series"`
	Timelines map[string]map[string][]Timeline `json:"timelines"`
	Load      map[string]string                `json:"load"`
}

var kinds = []string{"bootstrap", "failover", "clone", "idle", "proxy", "patroni"}

// load reads the newest result of each kind. Patroni's results are
// merged, newest first: a run that measured only some figures (say the
// idle cost, next to pgha's) keeps the others from the last run that had
// them.
func load(resultsDir string) (map[string]*Result, error) {
	files, err := filepath.Glob(filepath.Join(resultsDir, "*.json"))
	if err != nil {
		return nil, err
	}
	out := map[string]*Result{}
	var patroni []*Result
	for _, f := range files {
		base := strings.TrimSuffix(filepath.Base(f), ".json")
		kind := base[strings.LastIndex(base, "-")+1:]
		if !contains(kinds, kind) {
			continue // the combined summaries and anything else
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		r := &Result{file: f}
		if err := json.Unmarshal(data, r); err != nil {
			// Another benchmark's format moved on: say so, use the rest.
			fmt.Fprintf(os.Stderr, "report: skipping %s: %v\n", f, err)
			continue
		}
		if kind == "patroni" && len(r.RawSet) > 0 {
			if err := json.Unmarshal(r.RawSet, &r.Settings); err != nil {
				return nil, fmt.Errorf("%s: settings: %w", f, err)
			}
		}
		if kind == "clone" {
			_ = json.Unmarshal(r.Seconds, &r.CloneSeconds)
		}
		if kind == "patroni" {
			patroni = append(patroni, r)
		}
		if old, ok := out[kind]; !ok || r.Date > old.Date {
			out[kind] = r
		}
	}
	if len(patroni) > 1 {
		out["patroni"] = mergePatroni(patroni)
	}
	return out, nil
}

// mergePatroni is the newest Patroni result with each setting's missing
// series and timelines taken from older results, newest first.
func mergePatroni(rs []*Result) *Result {
	sort.Slice(rs, func(i, j int) bool { return rs[i].Date > rs[j].Date })
	merged := *rs[0]
	merged.Settings = map[string]PatroniSetting{}
	for name, set := range rs[0].Settings {
		merged.Settings[name] = copySetting(set)
	}
	for _, older := range rs[1:] {
		for name, o := range older.Settings {
			cur, ok := merged.Settings[name]
			if !ok {
				merged.Settings[name] = copySetting(o)
				continue
			}
			for _, sr := range o.Series {
				if findSeries(cur.Series, sr.Kind, sr.Probe) == nil {
					cur.Series = append(cur.Series, sr)
				}
			}
			for kind, tl := range o.Timelines {
				if len(cur.Timelines[kind]) == 0 {
					cur.Timelines[kind] = tl
				}
			}
			merged.Settings[name] = cur
		}
	}
	return &merged
}

// copySetting copies what mergePatroni appends to, so inputs stay as read.
func copySetting(set PatroniSetting) PatroniSetting {
	set.Series = append([]Series(nil), set.Series...)
	tl := map[string]map[string][]Timeline{}
	for k, v := range set.Timelines {
		tl[k] = v
	}
	set.Timelines = tl
	return set
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (r *Result) series(kind, probe string) *Series {
	if r == nil {
		return nil
	}
	return findSeries(r.Series, kind, probe)
}

func findSeries(list []Series, kind, probe string) *Series {
	for i := range list {
		if list[i].Kind == kind && (probe == "" || list[i].Probe == probe) {
			return &list[i]
		}
	}
	return nil
}

func (r *Result) patroni(setting string) *PatroniSetting {
	if r == nil || r.Settings == nil {
		return nil
	}
	s, ok := r.Settings[setting]
	if !ok {
		return nil
	}
	return &s
}

func (p *PatroniSetting) series(kind string) *Series {
	if p == nil {
		return nil
	}
	return findSeries(p.Series, kind, "")
}

// fmtSeries prints min / median / max (n=...).
func fmtSeries(s *Series, prec int) string {
	if s == nil || len(s.Seconds) == 0 {
		return "—"
	}
	return fmt.Sprintf("%s / %s / %s (n=%d)", num(s.Min, prec), num(s.Median, prec), num(s.Max, prec), len(s.Seconds))
}

func fmtFailed(s *Series) string {
	if s == nil || len(s.Failed) == 0 {
		return "—"
	}
	v := make([]float64, len(s.Failed))
	for i, f := range s.Failed {
		v[i] = float64(f)
	}
	lo, med, hi := minMedMax(v)
	return fmt.Sprintf("%s / %s / %s", num(lo, 0), num(med, 1), num(hi, 0))
}

func minMedMax(v []float64) (float64, float64, float64) {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0, 0, 0
	}
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[0], med, s[len(s)-1]
}

func num(v float64, prec int) string {
	s := fmt.Sprintf("%.*f", prec, v)
	if prec > 0 && strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

// bootstrapSeries adapts the bootstrap script's flat format.
func bootstrapSeries(r *Result) *Series {
	if r == nil {
		return nil
	}
	var v []float64
	if err := json.Unmarshal(r.Seconds, &v); err != nil || len(v) == 0 {
		return nil
	}
	return &Series{Kind: "bootstrap", Seconds: v, Min: r.Min, Median: r.Median, Max: r.Max}
}

func run(dir string) error {
	res, err := load(filepath.Join(dir, "results"))
	if err != nil {
		return err
	}
	if res["failover"] == nil {
		return errors.New("no failover result in " + filepath.Join(dir, "results") + ": run make bench-failover first")
	}
	if err := os.MkdirAll(filepath.Join(dir, "plots"), 0o755); err != nil {
		return err
	}
	plots := map[string]string{
		"failover-timeline.svg":   timelineSVG(res, "kill", "Writes per 100 ms around a whole-node SIGKILL of the primary (t = 0)"),
		"switchover-timeline.svg": timelineSVG(res, "switchover", "Writes per 100 ms around a switchover (t = 0: command issued)"),
		"rto.svg":                 rtoSVG(res),
	}
	for name, svg := range plots {
		if err := os.WriteFile(filepath.Join(dir, "plots", name), []byte(svg), 0o644); err != nil {
			return err
		}
	}
	mdPath := filepath.Join(dir, "RESULTS.md")
	old, err := os.ReadFile(mdPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// Hand-written sections are carried over: the proxy section (owned by
	// the proxy work) and notes on the runs.
	md := markdown(res, keptSection(string(old), "## Notes"), keptSection(string(old), "## Proxy overhead"))
	if err := os.WriteFile(mdPath, []byte(md), 0o644); err != nil {
		return err
	}
	sum, name := summary(res)
	b, err := json.MarshalIndent(sum, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results", name), append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %s, %s/plots/{%s}, %s\n", mdPath, dir, "failover-timeline.svg,switchover-timeline.svg,rto.svg", filepath.Join(dir, "results", name))
	return nil
}

// keptSection returns the section of the previous RESULTS.md that starts
// with heading verbatim (up to the next "## " heading), or "".
func keptSection(md, heading string) string {
	i := strings.Index(md, "\n"+heading)
	if i < 0 {
		return ""
	}
	rest := md[i+1:]
	if j := strings.Index(rest[len(heading):], "\n## "); j >= 0 {
		rest = rest[:len(heading)+j+1]
	}
	return strings.TrimRight(rest, "\n") + "\n"
}

type row struct {
	figure, pgha, pdef, ptun, rerun string
}

func markdown(res map[string]*Result, notes, proxy string) string {
	fo, pat := res["failover"], res["patroni"]
	pd, pt := pat.patroni("default"), pat.patroni("tuned")
	var b strings.Builder
	b.WriteString("# Benchmark results\n\n")
	b.WriteString("Generated by `go run ./bench/report` from the newest `bench/results/*.json` of each kind (raw data, per-run values, timelines and the machine description are there); `make bench` reruns pgha's side, `make bench-patroni` Patroni's.\n\n")
	b.WriteString("Three nodes on 127.0.0.1, asynchronous replication, default settings. ")
	b.WriteString("Every figure is min / median / max over n runs.\n\n")

	b.WriteString("## pgha and Patroni side by side\n\n")
	if pat == nil {
		b.WriteString("No Patroni result in bench/results: run `make bench-patroni` (scripts/bench-patroni.sh). Earlier Patroni figures on this kind of machine: ../shared/anchors.md.\n\n")
	} else if pat.Error != "" {
		fmt.Fprintf(&b, "The Patroni run failed (%s, %s): %s. Patroni's columns are empty; earlier Patroni figures on this kind of machine: ../shared/anchors.md.\n\n", filepath.Base(pat.file), pat.Date, pat.Error)
		pd, pt = nil, nil
	}
	settingName := func(p *PatroniSetting, label string) string {
		if p == nil {
			return "Patroni + Raft, " + label
		}
		return fmt.Sprintf("Patroni + Raft, %s (ttl %d, loop_wait %d, retry_timeout %d)", label, p.Patroni["ttl"], p.Patroni["loop_wait"], p.Patroni["retry_timeout"])
	}
	rows := []row{
		{"Bootstrap: start -> primary + 2 streaming replicas, s", fmtSeries(bootstrapSeries(res["bootstrap"]), 1), fmtSeries(pd.series("bootstrap"), 1), fmtSeries(pt.series("bootstrap"), 1), "`make bench-bootstrap`"},
		{"**Failover RTO**: whole-node SIGKILL of the primary (agent + postmaster) -> first write through the proxy, s", fmtSeries(fo.series("kill", "proxy"), 2), fmtSeries(pd.series("kill"), 2), fmtSeries(pt.series("kill"), 2), "`make bench-failover`"},
		{"  failed write attempts meanwhile (50 ms pause)", fmtFailed(fo.series("kill", "proxy")), fmtFailed(pd.series("kill")), fmtFailed(pt.series("kill")), ""},
		{"  the same, direct to PostgreSQL (libpq multi-host, target_session_attrs=read-write), s", fmtSeries(fo.series("kill", "direct"), 2), "", "", ""},
		{"Killed node restarted -> streaming again, s", fmtSeries(fo.series("rejoin", ""), 1), fmtSeries(pd.series("rejoin"), 1), fmtSeries(pt.series("rejoin"), 1), "`make bench-failover`"},
		{"**Switchover write gap** (longest time between two successful writes through the proxy, 20 ms pause), s", fmtSeries(fo.series("switchover", "proxy"), 2), fmtSeries(pd.series("switchover"), 2), fmtSeries(pt.series("switchover"), 2), "`make bench-failover`"},
		{"  failed write attempts meanwhile", fmtFailed(fo.series("switchover", "proxy")), fmtFailed(pd.series("switchover")), fmtFailed(pt.series("switchover")), ""},
		{"  the same, direct to PostgreSQL, s", fmtSeries(fo.series("switchover", "direct"), 2), "", "", ""},
		{"PostgreSQL-only crash of the primary (SIGKILL postmaster) -> first write through the proxy, s", fmtSeries(fo.series("pg-crash", "proxy"), 2), "", "", "`make bench-failover`"},
		{"  the same, direct to PostgreSQL, s", fmtSeries(fo.series("pg-crash", "direct"), 2), "", "", ""},
	}
	if c := res["clone"]; c != nil && c.DatabaseBytes > 0 {
		gib := float64(c.DatabaseBytes) / (1 << 30)
		rows = append(rows, row{fmt.Sprintf("Replica clone: `pgha join` -> streaming, s per GiB of databases (%.2f GiB, pgbench scale %d; took %.1f s)", gib, c.Scale, c.CloneSeconds), num(c.CloneSeconds/gib, 1), "", "", "`make bench-clone`"})
	}
	idle := res["idle"]
	rows = append(rows,
		row{"Agent RSS, MB per node (idle 3-node cluster; Patroni: the patroni process)", fmtSeries(idle.series("rss", ""), 1), fmtSeries(pd.series("rss"), 1), fmtSeries(pt.series("rss"), 1), "`make bench-idle`"},
		row{"Agent CPU while idle, % of one core per node", fmtSeries(idle.series("idle-cpu", ""), 2), fmtSeries(pd.series("idle-cpu"), 2), fmtSeries(pt.series("idle-cpu"), 2), "`make bench-idle`"},
	)
	if p := res["proxy"]; p != nil {
		for _, w := range []struct{ key, label string }{{"S", "`-S` (read-only)"}, {"N", "`-N` (simple writes)"}, {"S1", "`-S -c 1` (one client)"}} {
			if r, ok := p.Proxy[w.key]; ok {
				rows = append(rows, row{"Proxy throughput, pgbench " + w.label + ", ratio to direct", fmt.Sprintf("%.3fx (pgha write port)", r.PghaVsDirect), fmt.Sprintf("%.3fx (HAProxy)", r.HAProxyVsDirect), "", "`make bench-proxy`"})
			}
		}
	}
	fmt.Fprintf(&b, "| figure | pgha | %s | %s | rerun |\n|---|---|---|---|---|\n", settingName(pd, "default"), settingName(pt, "tuned"))
	for _, r := range rows {
		fig := r.figure
		if strings.HasPrefix(fig, "  ") {
			fig = "&nbsp;&nbsp;" + strings.TrimSpace(fig)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", fig, r.pgha, dash(r.pdef), dash(r.ptun), r.rerun)
	}
	b.WriteString("\nHow it is measured. The write probe opens a new connection per attempt and inserts one row (1 s limit for connect + insert), then pauses 50 ms (20 ms around switchovers); every attempt is recorded. ")
	b.WriteString("pgha's \"through the proxy\" probe uses the pgha write ports of all three nodes as one libpq multi-host URL (a dead node's port refuses at once, the next is tried); Patroni's goes through one HAProxy (`OPTIONS /primary` health check, `inter 1s fall 2 rise 1 on-marked-down shutdown-sessions`). ")
	b.WriteString("RTO is from the first signal to the completion of the first successful write that started after the kill. ")
	b.WriteString("pgha's proxy holds a new connection while there is no primary instead of refusing it, so its probe makes fewer, longer attempts: compare times, not failed-attempt counts. ")
	b.WriteString("Patroni runs from Debian's package with its built-in Raft (pysyncobj), `maximum_lag_on_failover` 1 MB, data checksums and `use_pg_rewind`; PostgreSQL runs as the `postgres` OS user in both.\n\n")

	b.WriteString("## Plots\n\n")
	b.WriteString("Writes per 100 ms (green up: successful, red down: failed) in the run with the median RTO of each series; all panels share the time axis.\n\n")
	b.WriteString("![failover timeline](plots/failover-timeline.svg)\n\n![switchover timeline](plots/switchover-timeline.svg)\n\n")
	b.WriteString("Every run of every fault kind (log scale; the bar is the median):\n\n![RTO per fault kind](plots/rto.svg)\n\n")

	b.WriteString("## Machine and noise\n\n")
	b.WriteString(machineText(fo.Machine, pat))
	b.WriteString("\nOther engineers' tests shared the same 2 cores while these ran; the load averages (1/5/15 min) at the start and end of each run:\n\n| result | file | date | load at start | load at end |\n|---|---|---|---|---|\n")
	for _, k := range kinds {
		r := res[k]
		if r == nil {
			continue
		}
		if k == "patroni" && r.Settings != nil {
			for _, s := range []string{"default", "tuned"} {
				if p := r.patroni(s); p != nil {
					fmt.Fprintf(&b, "| patroni %s | %s | %s | %s | %s |\n", s, filepath.Base(r.file), r.Date, dash(p.Load["start"]), dash(p.Load["end"]))
				}
			}
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", k, filepath.Base(r.file), r.Date, dash(r.Load["start"]), dash(r.Load["end"]))
	}
	b.WriteString("\nTimes of a few seconds or less move by tens of percent with that load; read medians, and the spread as the noise.\n")
	if notes != "" {
		b.WriteString("\n")
		b.WriteString(notes)
	}
	if proxy != "" {
		b.WriteString("\n")
		b.WriteString(proxy)
	}
	return b.String()
}

func dash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func machineText(m map[string]any, pat *Result) string {
	get := func(k string) string {
		if v, ok := m[k]; ok {
			return fmt.Sprint(v)
		}
		return "?"
	}
	s := fmt.Sprintf("- CPU: %s, %s cores; memory %s GiB; kernel %s\n- %s; Go %s; %s\n", get("cpu_model"), get("cpus"), get("mem_gib"), get("kernel"), get("postgres"), strings.TrimPrefix(get("go"), "go"), get("pgha"))
	if pat != nil && pat.Machine != nil {
		s += fmt.Sprintf("- Patroni: %v, pysyncobj %v, %v\n", pat.Machine["patroni"], pat.Machine["pysyncobj"], pat.Machine["haproxy"])
	}
	return s
}

// panel is one row of a timeline plot.
type panel struct {
	label string
	tl    *Timeline
	rto   float64
}

// medianRun picks the timeline of the run whose value is the median.
func medianRun(s *Series, tls []Timeline) (*Timeline, float64) {
	if s == nil || len(tls) == 0 || len(s.Seconds) != len(tls) {
		return nil, 0
	}
	idx := make([]int, len(s.Seconds))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return s.Seconds[idx[a]] < s.Seconds[idx[b]] })
	i := idx[(len(idx)-1)/2]
	return &tls[i], s.Seconds[i]
}

func timelineSVG(res map[string]*Result, kind, title string) string {
	var panels []panel
	fo := res["failover"]
	for _, p := range []struct{ probe, label string }{{"proxy", "pgha, through its write ports"}, {"direct", "pgha, direct to PostgreSQL"}} {
		if tl, v := medianRun(fo.series(kind, p.probe), fo.Timelines[kind][p.probe]); tl != nil {
			panels = append(panels, panel{fmt.Sprintf("%s (median run: %.2f s)", p.label, v), tl, v})
		}
	}
	if pat := res["patroni"]; pat != nil {
		for _, s := range []string{"default", "tuned"} {
			p := pat.patroni(s)
			if p == nil {
				continue
			}
			if tl, v := medianRun(p.series(kind), p.Timelines[kind]["haproxy"]); tl != nil {
				panels = append(panels, panel{fmt.Sprintf("Patroni %s, through HAProxy (median run: %.2f s)", s, v), tl, v})
			}
		}
	}
	const (
		width, left, right, top = 900.0, 60.0, 20.0, 40.0
		ph, gap                 = 90.0, 36.0
	)
	tmin, tmax, ymax := 0.0, 1.0, 1
	for _, p := range panels {
		tmin = math.Min(tmin, float64(p.tl.StartMS)/1000)
		tmax = math.Max(tmax, float64(p.tl.StartMS+len(p.tl.OK)*p.tl.BucketMS)/1000)
		for i := range p.tl.OK {
			ymax = max(ymax, p.tl.OK[i], p.tl.Failed[i])
		}
	}
	tmax = math.Ceil(tmax)
	height := top + float64(len(panels))*(ph+gap) + 20
	x := func(t float64) float64 { return left + (t-tmin)/(tmax-tmin)*(width-left-right) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%.0f" y="20" font-size="14" font-weight="bold">%s</text>`+"\n", left, esc(title))
	if len(panels) == 0 {
		b.WriteString(`<text x="60" y="60">no timelines in the results</text></svg>` + "\n")
		return b.String()
	}
	step := tickStep(tmax - tmin)
	for i, p := range panels {
		y0 := top + float64(i)*(ph+gap) + 16
		mid := y0 + ph/2
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-weight="bold">%s</text>`+"\n", left, y0-4, esc(p.label))
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="#f7f7f7" stroke="#ccc"/>`+"\n", left, y0, width-left-right, ph)
		for t := math.Ceil(tmin/step) * step; t <= tmax+1e-9; t += step {
			if math.Abs(t) < 1e-9 {
				t = 0 // not "-0"
			}
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f" stroke="#e0e0e0"/>`, x(t), x(t), y0, y0+ph)
			fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle" fill="#555">%s</text>`+"\n", x(t), y0+ph+13, num(t, 1))
		}
		scale := (ph/2 - 4) / float64(ymax)
		bw := (x(float64(p.tl.BucketMS)/1000) - x(0)) * 0.85
		for j := range p.tl.OK {
			t := float64(p.tl.StartMS+j*p.tl.BucketMS) / 1000
			if n := p.tl.OK[j]; n > 0 {
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#2e9e44"/>`, x(t), mid-float64(n)*scale, bw, float64(n)*scale)
			}
			if n := p.tl.Failed[j]; n > 0 {
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#d43c3c"/>`, x(t), mid, bw, float64(n)*scale)
			}
		}
		b.WriteString("\n")
		fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#888"/>`, left, width-right, mid, mid)
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f" stroke="black" stroke-dasharray="4 3"/>`, x(0), x(0), y0, y0+ph)
		if kind == "switchover" {
			// Shade the longest stretch without a successful write.
			if from, to := longestGap(p.tl); to > from {
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.0f" width="%.1f" height="%.0f" fill="#1f5fbf" fill-opacity="0.15"/>`+"\n", x(from), y0, x(to)-x(from), ph)
			}
		} else {
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f" stroke="#1f5fbf" stroke-width="1.5"/>`+"\n", x(p.rto), x(p.rto), y0, y0+ph)
		}
		fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end" fill="#2e9e44">ok (%d)</text><text x="%.0f" y="%.1f" text-anchor="end" fill="#d43c3c">failed</text>`+"\n", left-4, y0+12, ymax, left-4, y0+ph-4)
	}
	legend := "seconds from the fault (dashed); blue: first write after it"
	if kind == "switchover" {
		legend = "seconds from the switchover command (dashed); blue band: longest stretch without a successful write"
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end" fill="#555">%s</text>`+"\n", width-right, height-4, legend)
	b.WriteString("</svg>\n")
	return b.String()
}

// longestGap returns, in seconds from the fault, the longest stretch of
// buckets without a successful write that ends after the fault (bucket
// resolution: an approximation of the gap between two writes).
func longestGap(tl *Timeline) (float64, float64) {
	bucket := float64(tl.BucketMS) / 1000
	start := float64(tl.StartMS) / 1000
	bestFrom, bestTo, runFrom := 0.0, 0.0, -1
	for i := 0; i <= len(tl.OK); i++ {
		if i < len(tl.OK) && tl.OK[i] == 0 {
			if runFrom < 0 {
				runFrom = i
			}
			continue
		}
		if runFrom >= 0 {
			from, to := start+float64(runFrom)*bucket, start+float64(i)*bucket
			if i < len(tl.OK) && to > 0 && to-from > bestTo-bestFrom {
				bestFrom, bestTo = from, to
			}
			runFrom = -1
		}
	}
	return bestFrom, bestTo
}

func tickStep(span float64) float64 {
	for _, s := range []float64{0.5, 1, 2, 5, 10} {
		if span/s <= 20 {
			return s
		}
	}
	return 20
}

func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// rtoSVG draws every run of every fault kind on a log time axis.
func rtoSVG(res map[string]*Result) string {
	type line struct {
		label string
		color string
		s     *Series
	}
	fo := res["failover"]
	pat := res["patroni"]
	var lines []line
	for _, k := range []struct{ kind, label string }{{"kill", "whole-node kill"}, {"switchover", "switchover gap"}, {"pg-crash", "PostgreSQL crash"}} {
		for _, probe := range []string{"proxy", "direct"} {
			lines = append(lines, line{fmt.Sprintf("pgha: %s (%s)", k.label, probe), "#1f5fbf", fo.series(k.kind, probe)})
		}
		for _, s := range []string{"default", "tuned"} {
			if p := pat.patroni(s); p != nil {
				lines = append(lines, line{fmt.Sprintf("Patroni %s: %s", s, k.label), "#c0392b", p.series(k.kind)})
			}
		}
	}
	var keep []line
	for _, l := range lines {
		if l.s != nil && len(l.s.Seconds) > 0 {
			keep = append(keep, l)
		}
	}
	const (
		width, left, right, top, rh = 900.0, 250.0, 20.0, 40.0, 26.0
		lo, hi                      = 0.05, 100.0
	)
	height := top + float64(len(keep))*rh + 40
	x := func(v float64) float64 {
		v = math.Min(math.Max(v, lo), hi)
		return left + (math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))*(width-left-right)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="10" y="20" font-size="14" font-weight="bold">Write unavailability per fault kind, every run (seconds, log scale)</text>`+"\n")
	bottom := top + float64(len(keep))*rh
	for _, t := range []float64{0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100} {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f" stroke="#e0e0e0"/><text x="%.1f" y="%.0f" text-anchor="middle" fill="#555">%s</text>`+"\n", x(t), x(t), top-6, bottom, x(t), bottom+14, num(t, 2))
	}
	for i, l := range keep {
		y := top + float64(i)*rh + rh/2
		if i%2 == 0 {
			fmt.Fprintf(&b, `<rect x="0" y="%.1f" width="%.0f" height="%.0f" fill="#f5f5f5"/>`, y-rh/2, width, rh)
		}
		fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end">%s (n=%d)</text>`, left-8, y+4, esc(l.label), len(l.s.Seconds))
		for j, v := range l.s.Seconds {
			jit := float64(j%3-1) * 4
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s" fill-opacity="0.6"/>`, x(v), y+jit, l.color)
		}
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black" stroke-width="2"/>`+"\n", x(l.s.Median), x(l.s.Median), y-9, y+9)
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end" fill="#555">seconds</text>`+"\n", width-right, bottom+30)
	b.WriteString("</svg>\n")
	return b.String()
}

// summary is the combined <date>-<host>.json: the figures of the newest
// run of each kind, with where they came from.
func summary(res map[string]*Result) (map[string]any, string) {
	host, _ := os.Hostname()
	if h, ok := res["failover"].Machine["host"].(string); ok && h != "" {
		host = h
	}
	now := time.Now().UTC()
	out := map[string]any{"date": now.Format(time.RFC3339), "machine": res["failover"].Machine}
	inputs := map[string]string{}
	figures := map[string]any{}
	for _, k := range kinds {
		r := res[k]
		if r == nil {
			continue
		}
		inputs[k] = filepath.Base(r.file)
		switch k {
		case "bootstrap":
			figures["pgha_bootstrap"] = bootstrapSeries(r)
		case "failover", "idle":
			for _, s := range r.Series {
				figures["pgha_"+s.Kind+suffix(s.Probe)] = s
			}
		case "clone":
			if r.DatabaseBytes == 0 {
				continue
			}
			figures["pgha_clone_seconds"] = r.CloneSeconds
			figures["pgha_clone_seconds_per_gib"] = r.CloneSeconds / (float64(r.DatabaseBytes) / (1 << 30))
		case "proxy":
			figures["proxy"] = r.Proxy
		case "patroni":
			if r.Error != "" {
				figures["patroni_error"] = r.Error
			}
			for name, p := range r.Settings {
				for _, s := range p.Series {
					figures["patroni_"+name+"_"+s.Kind] = s
				}
			}
		}
		if r.Load != nil {
			figures["load_"+k] = r.Load
		}
	}
	out["inputs"] = inputs
	out["figures"] = figures
	return out, fmt.Sprintf("%s-%s.json", now.Format("20060102"), host)
}

func suffix(probe string) string {
	if probe == "" {
		return ""
	}
	return "_" + probe
}
