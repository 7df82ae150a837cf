package pgnode_test

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/pgha/pgha/pgnode"
)

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in      string
		want    uint64
		wantErr bool
	}{
		{"0/0", 0, false},
		{"0/1", 1, false},
		{"16/B374D848", 0x16_B374D848, false},
		{"16/b374d848", 0x16_B374D848, false},
		{"FFFFFFFF/FFFFFFFF", ^uint64(0), false},
		{"1/0", 1 << 32, false},
		{"", 0, true},
		{"/", 0, true},
		{"0/", 0, true},
		{"/0", 0, true},
		{"0", 0, true},
		{"0/0/0", 0, true},
		{"100000000/0", 0, true},
		{"+1/0", 0, true},
		{"-1/0", 0, true},
		{"0x1/0", 0, true},
		{"1_0/0", 0, true},
		{" 1/0", 0, true},
		{"G/0", 0, true},
	}
	for _, tt := range tests {
		got, err := pgnode.ParseLSN(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseLSN(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseLSN(%q) = %#x, want %#x", tt.in, got, tt.want)
		}
	}
}

func TestFormatLSN(t *testing.T) {
	tests := []struct {
		in   uint64
		want string
	}{
		{0, "0/0"},
		{1, "0/1"},
		{0x16_B374D848, "16/B374D848"},
		{1 << 32, "1/0"},
		{^uint64(0), "FFFFFFFF/FFFFFFFF"},
	}
	for _, tt := range tests {
		if got := pgnode.FormatLSN(tt.in); got != tt.want {
			t.Errorf("FormatLSN(%#x) = %q, want %q", tt.in, got, tt.want)
		}
		back, err := pgnode.ParseLSN(tt.want)
		if err != nil || back != tt.in {
			t.Errorf("ParseLSN(FormatLSN(%#x)) = %#x, %v", tt.in, back, err)
		}
	}
}

func FuzzParseLSN(f *testing.F) {
	for _, s := range []string{"0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "1/", "x/y", "-1/1", "123456789/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := pgnode.ParseLSN(s)
		if err != nil {
			return
		}
		// Anything accepted must round-trip through the canonical form.
		canon := pgnode.FormatLSN(v)
		v2, err := pgnode.ParseLSN(canon)
		if err != nil || v2 != v {
			t.Fatalf("ParseLSN(%q)=%#x, FormatLSN=%q re-parses to %#x, %v", s, v, canon, v2, err)
		}
		if !strings.EqualFold(strings.TrimLeft(s[:strings.IndexByte(s, '/')], "0"), strings.TrimLeft(canon[:strings.IndexByte(canon, '/')], "0")) {
			t.Fatalf("ParseLSN(%q) high half differs from %q", s, canon)
		}
	})
}

func TestSlotName(t *testing.T) {
	tests := []struct{ in, want string }{
		{"node1", "pgha_node1"},
		{"Node-1.example", "pgha_node_1_example"},
		{"é", "pgha__"},
		{"", "pgha_"},
		{strings.Repeat("a", 100), "pgha_" + strings.Repeat("a", 58)},
	}
	for _, tt := range tests {
		got := pgnode.SlotName(tt.in)
		if got != tt.want {
			t.Errorf("SlotName(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if len(got) > 63 {
			t.Errorf("SlotName(%q) is %d bytes", tt.in, len(got))
		}
	}
}

func TestParseProgress(t *testing.T) {
	tests := []struct {
		in     string
		pct    int
		wantOK bool
	}{
		{"   1234/56789 kB (2%), 0/1 tablespace", 2, true},
		{"56789/56789 kB (100%), 1/1 tablespace", 100, true},
		{"60000/56789 kB (105%), 1/1 tablespace (...data/base/1/1234)", 100, true},
		{"pg_basebackup: write-ahead log end point: 0/2000100", 0, false},
		{"pg_basebackup: error: something (5%)", 0, false},
	}
	for _, tt := range tests {
		pct, ok := pgnode.ParseProgress(tt.in)
		if ok != tt.wantOK || pct != tt.pct {
			t.Errorf("parseProgress(%q) = %d, %v; want %d, %v", tt.in, pct, ok, tt.pct, tt.wantOK)
		}
	}
}

func TestQuoteConf(t *testing.T) {
	for _, v := range []string{"", "plain", "it's", `back\slash`, `'\''`, "host=a port=1 application_name='x y'"} {
		q := pgnode.QuoteConf(v)
		got, ok := pgnode.UnquoteConf(q)
		if !ok || got != v {
			t.Errorf("UnquoteConf(QuoteConf(%q)) = %q, %v (quoted %s)", v, got, ok, q)
		}
	}
}

func TestSplitDynamic(t *testing.T) {
	tests := []struct {
		name    string
		in      map[string]string
		want    map[string]string
		ignored []string
	}{
		{"none", nil, map[string]string{}, nil},
		{"plain", map[string]string{"work_mem": "8MB", "auto_explain.log_min_duration": "1s"},
			map[string]string{"work_mem": "8MB", "auto_explain.log_min_duration": "1s"}, nil},
		{"protected", map[string]string{"port": "1", "primary_conninfo": "host=x", "include": "/etc/x", "work_mem": "8MB"},
			map[string]string{"work_mem": "8MB"}, []string{"include", "port", "primary_conninfo"}},
		// Names are not folded: "Port" is refused as a name, so case
		// cannot sneak a protected key past the check.
		{"bad names", map[string]string{"Port": "1", "work-mem": "1", "": "1", "a b": "1", "1st": "1"},
			map[string]string{}, []string{"", "1st", "Port", "a b", "work-mem"}},
		{"control characters", map[string]string{"work_mem": "8MB\nport = 1", "search_path": "a\tb", "datestyle": "iso"},
			map[string]string{"datestyle": "iso"}, []string{"search_path", "work_mem"}},
		{"synchronous_standby_names", map[string]string{"synchronous_standby_names": "*"},
			map[string]string{}, []string{"synchronous_standby_names"}},
	}
	for _, tt := range tests {
		got, ignored := pgnode.SplitDynamic(tt.in)
		if !maps.Equal(got, tt.want) || !slices.Equal(ignored, tt.ignored) {
			t.Errorf("%s: SplitDynamic(%q) = %q, ignored %q; want %q, ignored %q", tt.name, tt.in, got, ignored, tt.want, tt.ignored)
		}
	}
}

func TestValidate(t *testing.T) {
	base := pgnode.Config{
		Name: "n1", DataDir: "/x/pgdata", RunDir: "/x", Port: 5432,
		SuperuserPassword: "s", ReplPassword: "r",
	}
	if err := base.Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(*pgnode.Config)
		want   string
	}{
		{"protected port", func(c *pgnode.Config) { c.Parameters = map[string]string{"port": "6000"} }, `"port"`},
		{"protected upper case", func(c *pgnode.Config) { c.Parameters = map[string]string{"Listen_Addresses": "*"} }, `"listen_addresses"`},
		{"protected conninfo", func(c *pgnode.Config) { c.Parameters = map[string]string{"primary_conninfo": "host=x"} }, `"primary_conninfo"`},
		{"wal_level minimal", func(c *pgnode.Config) { c.Parameters = map[string]string{"wal_level": "minimal"} }, "wal_level"},
		{"newline value", func(c *pgnode.Config) { c.Parameters = map[string]string{"work_mem": "1\n2"} }, `"work_mem"`},
		{"relative data dir", func(c *pgnode.Config) { c.DataDir = "pgdata" }, "data dir"},
		{"no password", func(c *pgnode.Config) { c.ReplPassword = "" }, "replication password"},
		{"same users", func(c *pgnode.Config) { c.ReplUser = "postgres" }, "replication user"},
		{"bad cidr", func(c *pgnode.Config) { c.AllowedNetworks = []string{"10.0.0.0/33"} }, "10.0.0.0/33"},
		{"bad port", func(c *pgnode.Config) { c.Port = 70000 }, "port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base
			tt.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error containing %s", err, tt.want)
			}
		})
	}
	// Unprotected user parameters are fine.
	c := base
	c.Parameters = map[string]string{"work_mem": "8MB", "wal_level": "logical", "shared_buffers": "32MB"}
	if err := c.Validate(); err != nil {
		t.Fatalf("user parameters rejected: %v", err)
	}
}

// controlDataRewound is pg_controldata's output (PostgreSQL 15, C locale)
// for a directory pg_rewind has just finished.
const controlDataRewound = `pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7712779589959918226
Database cluster state:               in archive recovery
pg_control last modified:             Fri Nov 27 09:24:00 2026
Latest checkpoint location:           0/3022610
Latest checkpoint's REDO location:    0/30225D8
Latest checkpoint's REDO WAL file:    000000020000000000000003
Latest checkpoint's TimeLineID:       2
Latest checkpoint's PrevTimeLineID:   2
Latest checkpoint's full_page_writes: on
Latest checkpoint's NextXID:          0:727
Latest checkpoint's NextOID:          24576
Latest checkpoint's NextMultiXactId:  1
Latest checkpoint's NextMultiOffset:  0
Latest checkpoint's oldestXID:        717
Latest checkpoint's oldestXID's DB:   1
Latest checkpoint's oldestActiveXID:  727
Latest checkpoint's oldestMultiXid:   1
Latest checkpoint's oldestMulti's DB: 1
Latest checkpoint's oldestCommitTsXid:0
Latest checkpoint's newestCommitTsXid:0
Time of latest checkpoint:            Fri Nov 27 09:23:59 2026
Fake LSN counter for unlogged rels:   0/3E8
Minimum recovery ending location:     0/3022748
Min recovery ending loc's timeline:   2
Backup start location:                0/0
Backup end location:                  0/0
End-of-backup record required:        no
wal_level setting:                    replica
wal_log_hints setting:                on
max_connections setting:              20
max_worker_processes setting:         8
max_wal_senders setting:              10
max_prepared_xacts setting:           0
max_locks_per_xact setting:           64
track_commit_timestamp setting:       off
Maximum data alignment:               8
Database block size:                  8192
Blocks per segment of large relation: 131072
WAL block size:                       8192
Bytes per WAL segment:                16777216
Maximum length of identifiers:        64
Maximum columns in an index:          32
Maximum size of a TOAST chunk:        1996
Size of a large-object chunk:         2048
Date/time type storage:               64-bit integers
Float8 argument passing:              by value
Data page checksum version:           1
Mock authentication nonce:            7a33e401fd1fdbe6d99e5a9898889efeeaa6e3daa62a4516d49683277471cbc9
`

func TestParseControlData(t *testing.T) {
	cd, err := pgnode.ParseControlData([]byte(controlDataRewound))
	if err != nil {
		t.Fatal(err)
	}
	want := pgnode.ControlData{
		SystemID:       7712779589959918226,
		ClusterState:   "in archive recovery",
		Timeline:       2,
		CheckpointLSN:  0x3022610,
		MinRecoveryEnd: 0x3022748,
	}
	if cd != want {
		t.Errorf("ParseControlData = %+v, want %+v", cd, want)
	}
	if cd.WasPrimary() {
		t.Error("a rewound directory counts as WasPrimary")
	}

	// A clean primary: the other states and a 0/0 minimum recovery end.
	primary := strings.NewReplacer(
		"in archive recovery", "shut down",
		"Minimum recovery ending location:     0/3022748", "Minimum recovery ending location:     0/0",
	).Replace(controlDataRewound)
	if cd, err := pgnode.ParseControlData([]byte(primary)); err != nil || cd.MinRecoveryEnd != 0 || !cd.WasPrimary() {
		t.Errorf("clean primary: %+v, %v; want MinRecoveryEnd 0 and WasPrimary", cd, err)
	}

	for _, tt := range []struct{ name, from, to, want string }{
		{"no state", "Database cluster state:", "Database cluster mood:", "Database cluster state"},
		{"bad lsn", "0/3022610", "0/30226G0", "Latest checkpoint location"},
		{"bad timeline", "Latest checkpoint's TimeLineID:       2", "Latest checkpoint's TimeLineID:       x", "timeline"},
		{"bad system id", "7712779589959918226", "-1", "system identifier"},
	} {
		_, err := pgnode.ParseControlData([]byte(strings.Replace(controlDataRewound, tt.from, tt.to, 1)))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: ParseControlData = %v, want an error naming %s", tt.name, err, tt.want)
		}
	}
}

func TestWasPrimary(t *testing.T) {
	for state, want := range map[string]bool{
		"in production":         true,
		"shut down":             true,
		"in crash recovery":     true,
		"shut down in recovery": false,
		"in archive recovery":   false,
		"starting up":           false,
		"shutting down":         true,
		"":                      false,
	} {
		if got := (pgnode.ControlData{ClusterState: state}).WasPrimary(); got != want {
			t.Errorf("WasPrimary(%q) = %v, want %v", state, got, want)
		}
	}
}
