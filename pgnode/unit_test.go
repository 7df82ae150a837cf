package pgnode_test

import (
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
