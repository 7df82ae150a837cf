package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/pgha/pgha/api"
	"github.com/pgha/pgha/config"
	"github.com/pgha/pgha/internal/testutil"
)

// runCaptured runs the CLI as main would and returns its exit code and
// what it wrote to stdout and stderr. It swaps the process-wide os.Stdout
// and os.Stderr, so tests in this package must not run in parallel.
func runCaptured(tb testing.TB, args ...string) (code int, stdout, stderr string) {
	tb.Helper()
	outR, outW, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	oldOut, oldErr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = outW, errW
	defer func() { os.Stdout, os.Stderr = oldOut, oldErr }()

	// Read while the command runs: a pipe holds only so much.
	read := func(r *os.File, into *string, done chan<- struct{}) {
		b, _ := io.ReadAll(r)
		*into = string(b)
		close(done)
	}
	outDone, errDone := make(chan struct{}), make(chan struct{})
	go read(outR, &stdout, outDone)
	go read(errR, &stderr, errDone)

	code = runMain(append([]string{"pgha"}, args...))

	outW.Close()
	errW.Close()
	<-outDone
	<-errDone
	outR.Close()
	errR.Close()
	return code, stdout, stderr
}

// writeConfig writes a YAML configuration into a temporary directory and
// returns its path; the test shows the lines so line numbers are visible.
func writeConfig(tb testing.TB, lines ...string) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "node.yml")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

func TestRun_ConfigErrors(t *testing.T) {
	for _, tt := range []struct {
		name  string
		lines []string
		line  string // "file:LINE" suffix expected in the message
		want  string // the rest of the message that matters
	}{
		{
			name: "unknown key",
			lines: []string{
				"name: pg1",
				"cluster: prod",
				"raft:",
				"  adress: 127.0.0.1:8300",
			},
			line: ":4:",
			want: `unknown key "raft.adress"`,
		},
		{
			name: "bad duration",
			lines: []string{
				"name: pg1",
				"raft:",
				"  addr: 127.0.0.1:8300",
				"  heartbeat_timeout: ten seconds",
			},
			line: ":4:",
			want: `raft.heartbeat_timeout: invalid duration "ten seconds"`,
		},
		{
			name: "duration without unit",
			lines: []string{
				"name: pg1",
				"raft:",
				"  election_timeout: 5",
			},
			line: ":3:",
			want: "needs a unit",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.lines...)
			code, _, stderr := runCaptured(t, "run", "-c", path)
			if code != exitUsage {
				t.Fatalf("exit code %d, want %d (stderr %q)", code, exitUsage, stderr)
			}
			if !strings.Contains(stderr, path+tt.line) {
				t.Errorf("stderr %q does not name %s%s", stderr, path, tt.line)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr %q does not contain %q", stderr, tt.want)
			}
			if !strings.HasPrefix(stderr, "pgha: ") {
				t.Errorf("stderr %q does not start with the program name", stderr)
			}

			// The error itself, as newApp().Run returns it, is a
			// *config.Error carrying the file and line.
			err := newApp().Run([]string{"pgha", "run", "-c", path})
			var cerr *config.Error
			if !errors.As(err, &cerr) {
				t.Fatalf("Run error %v (%T) is not a *config.Error", err, err)
			}
			if cerr.File != path || ":"+strconv.Itoa(cerr.Line)+":" != tt.line {
				t.Errorf("config.Error at %s:%d, want %s%s", cerr.File, cerr.Line, path, tt.line)
			}
		})
	}
}

func TestRun_MissingConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yml")
	code, _, stderr := runCaptured(t, "run", "-c", path)
	if code != exitUsage || !strings.Contains(stderr, path) {
		t.Fatalf("exit %d, stderr %q; want %d naming %s", code, stderr, exitUsage, path)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"list -o xml", []string{"list", "--api", testutil.FreeAddr(t), "-o", "xml"}, `"xml"`},
		{"join without ADDR", []string{"join", "--api", testutil.FreeAddr(t)}, "ADDR"},
		{"join with two ADDRs", []string{"join", "--api", testutil.FreeAddr(t), "a:1", "b:2"}, "ADDR"},
		{"list with an argument", []string{"list", "--api", testutil.FreeAddr(t), "extra"}, "no arguments"},
		{"unknown global flag", []string{"--bogus", "list"}, "bogus"},
		{"remove without NAME", []string{"remove", "--api", testutil.FreeAddr(t)}, "NAME"},
		{"run with an argument", []string{"run", "extra"}, "no arguments"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCaptured(t, tt.args...)
			if code != exitUsage {
				t.Fatalf("exit code %d, want %d (stderr %q)", code, exitUsage, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr %q does not contain %q", stderr, tt.want)
			}
		})
	}
}

// A mistyped flag of a command is bad input like any other: exit 2.
func TestUsageErrors_UnknownCommandFlag(t *testing.T) {
	for _, args := range [][]string{
		{"list", "--bogus"},
		{"join", "--timeout", "soon", "10.0.0.1:7946"},
		{"run", "--raft.adr", "x"},
	} {
		code, _, stderr := runCaptured(t, args...)
		if code != exitUsage {
			t.Errorf("pgha %s: exit code %d, want %d (stderr %q)", strings.Join(args, " "), code, exitUsage, stderr)
		}
	}
}

func TestList_AgentUnreachable(t *testing.T) {
	addr := testutil.FreeAddr(t)
	code, stdout, stderr := runCaptured(t, "list", "--api", addr)
	if code != exitFailure {
		t.Fatalf("exit code %d, want %d (stderr %q)", code, exitFailure, stderr)
	}
	if !strings.Contains(stderr, addr) {
		t.Errorf("stderr %q does not name %s", stderr, addr)
	}
	if stdout != "" {
		t.Errorf("stdout %q, want nothing on failure", stdout)
	}
}

// sampleCluster is a three-node cluster with one of each role, lags that
// exercise the MB rounding and the alignment, and a note of each kind.
func sampleCluster() api.ClusterInfo {
	lag := func(n int64) *int64 { return &n }
	return api.ClusterInfo{
		Cluster:     "prod",
		SystemID:    7301234567890123456,
		Initialized: true,
		Leader:      "pg1",
		Primary:     "pg1",
		Observer:    "pg2",
		Members: []api.MemberInfo{
			{Name: "pg1", Host: "10.0.0.1:5432", Role: "leader", State: "running", Timeline: 3, LagBytes: lag(0), Raft: "leader", Tags: map[string]any{"nofailover": true, "failover_priority": 2}, Write: "10.0.0.1:5000", Read: "10.0.0.1:5001"},
			{Name: "pg2", Host: "10.0.0.2:5432", Role: "replica", State: "streaming", Timeline: 3, LagBytes: lag(123 << 20), Raft: "voter", Waiting: "waiting for the primary to confirm the slot"},
			{Name: "pg3", Host: "10.0.0.3:5432", Role: "replica", State: "stopped", Timeline: 2, LagBytes: lag(5<<20 + 1), Raft: "nonvoter", Error: "pg_rewind failed: source and target clusters are from different systems", Waiting: "hidden behind the error"},
			{Name: "w1", Role: "witness", State: "running", Raft: "voter"},
		},
	}
}

func TestRenderCluster(t *testing.T) {
	var b bytes.Buffer
	renderCluster(&b, sampleCluster())
	want := strings.Join([]string{
		"+ Cluster: prod (7301234567890123456) ---------+----+-----------+----------+-----------+----------------------------------------+",
		"| Member | Host          | Role    | State     | TL | Lag in MB | Raft     | Proxy w/r | Tags                                   |",
		"+--------+---------------+---------+-----------+----+-----------+----------+-----------+----------------------------------------+",
		"| pg1    | 10.0.0.1:5432 | Leader  | running   |  3 |         0 | leader   | 5000/5001 | failover_priority: 2, nofailover: true |",
		"| pg2    | 10.0.0.2:5432 | Replica | streaming |  3 |       123 | voter    |           |                                        |",
		"| pg3    | 10.0.0.3:5432 | Replica | stopped   |  2 |         5 | nonvoter |           |                                        |",
		"| w1     |               | Witness | running   |    |           | voter    |           |                                        |",
		"+--------+---------------+---------+-----------+----+-----------+----------+-----------+----------------------------------------+",
		// An error hides the waiting reason of the same member.
		" pg2: waiting for the primary to confirm the slot",
		" pg3: pg_rewind failed: source and target clusters are from different systems",
		"",
	}, "\n")
	if got := b.String(); got != want {
		t.Errorf("renderCluster:\n--- got\n%s--- want\n%s", got, want)
	}
	checkBox(t, b.String())
}

// checkBox checks what a golden string could get wrong by hand: every
// line of the box has the same width, and the Lag column's numbers end
// at the same column as its header (right-aligned).
func checkBox(tb testing.TB, out string) {
	tb.Helper()
	var box []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "+") || strings.HasPrefix(l, "|") {
			box = append(box, l)
		}
	}
	for _, l := range box[1:] {
		if utf8.RuneCountInString(l) != utf8.RuneCountInString(box[0]) {
			tb.Errorf("box lines differ in width:\n%s\n%s", box[0], l)
		}
	}
	header := box[1]
	end := strings.Index(header, "Lag in MB") + len("Lag in MB")
	for _, l := range box[3 : len(box)-1] {
		cell := strings.Split(l, "|")[6] // fields: "", Member, Host, Role, State, TL, Lag...
		if n := strings.TrimSpace(cell); n != "" && !strings.HasSuffix(l[:end], n) {
			tb.Errorf("lag %q is not right-aligned under its header in %q", n, l)
		}
	}
}

// Without a leader and before initialisation the table says so, naming
// the member that answered.
func TestRenderCluster_NoLeader(t *testing.T) {
	var b bytes.Buffer
	renderCluster(&b, api.ClusterInfo{
		Cluster:  "prod",
		Paused:   true,
		Observer: "pg2",
		Members:  []api.MemberInfo{{Name: "pg2", Role: "replica", State: "stopped", Raft: "voter"}},
	})
	want := strings.Join([]string{
		"+ Cluster: prod +---------+---------+----+-----------+-------+-----------+------+",
		"| Member | Host | Role    | State   | TL | Lag in MB | Raft  | Proxy w/r | Tags |",
		"+--------+------+---------+---------+----+-----------+-------+-----------+------+",
		"| pg2    |      | Replica | stopped |    |           | voter |           |      |",
		"+--------+------+---------+---------+----+-----------+-------+-----------+------+",
		" Maintenance mode: on (no automatic failover or restart)",
		" Cluster not initialised yet",
		" No Raft leader: fewer than a quorum of members are reachable from pg2",
		"",
	}, "\n")
	if got := b.String(); got != want {
		t.Errorf("renderCluster:\n--- got\n%s--- want\n%s", got, want)
	}
}

// list against a stand-in agent: the table by default, the API's JSON
// with -o json.
func TestList_AgainstAgent(t *testing.T) {
	ci := sampleCluster()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/cluster" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(ci)
	}))
	defer srv.Close()
	defer http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	addr := strings.TrimPrefix(srv.URL, "http://")

	code, stdout, stderr := runCaptured(t, "list", "--api", addr)
	if code != 0 {
		t.Fatalf("list: exit %d, stderr %q", code, stderr)
	}
	var want bytes.Buffer
	renderCluster(&want, ci)
	if stdout != want.String() {
		t.Errorf("list printed:\n%s\nwant:\n%s", stdout, want.String())
	}

	code, stdout, stderr = runCaptured(t, "list", "--api", addr, "-o", "json")
	if code != 0 {
		t.Fatalf("list -o json: exit %d, stderr %q", code, stderr)
	}
	var got api.ClusterInfo
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("list -o json printed %q: %v", stdout, err)
	}
	if !reflect.DeepEqual(normalize(t, got), normalize(t, ci)) {
		t.Errorf("list -o json:\n got  %+v\n want %+v", got, ci)
	}
}

// normalize round-trips through JSON so numbers inside Tags compare
// equal (an int written out comes back as a float64).
func normalize(tb testing.TB, ci api.ClusterInfo) api.ClusterInfo {
	tb.Helper()
	b, err := json.Marshal(ci)
	if err != nil {
		tb.Fatal(err)
	}
	var out api.ClusterInfo
	if err := json.Unmarshal(b, &out); err != nil {
		tb.Fatal(err)
	}
	return out
}
