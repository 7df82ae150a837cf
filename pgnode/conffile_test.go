package pgnode_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/pgha/pgha/internal/testutil"
	"github.com/pgha/pgha/pgnode"
)

// fakeDataDir makes DataDir look valid to WriteConfig (PG_VERSION and
// global/pg_control exist), so the rendering is tested without initdb.
func fakeDataDir(t *testing.T, dir string) {
	t.Helper()
	// The parent is the member's RunDir: the OS user must traverse it.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "global"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{"PG_VERSION": "15\n", "global/pg_control": "not a real one"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWriteConfigDesired: each WriteConfig renders what it is given and
// nothing left over from an earlier call; the member's own parameters
// win over the cluster-wide ones, the managed synchronous_standby_names
// over both; bad cluster-wide parameters are left out and named.
func TestWriteConfigDesired(t *testing.T) {
	base := tempDir(t)
	cfg := nodeConfig(t, base, "n1", testutil.FreePort(t)) // shared_buffers=32MB, max_connections=20
	fakeDataDir(t, cfg.DataDir)
	n := mustNew(t, cfg)
	defer n.Close()
	confPath := filepath.Join(cfg.DataDir, "postgresql.conf")
	names := `FIRST 1 ("n2")`

	full := pgnode.Desired{
		Role: pgnode.RolePrimary,
		Parameters: map[string]string{
			"work_mem":                  "8MB",
			"shared_buffers":            "1GB", // the member's 32MB wins
			"track_activity_query_size": "2048",
			"port":                      "1",     // protected
			"synchronous_standby_names": "*",     // managed through synchronous mode
			"Work_Mem":                  "999MB", // not a name PostgreSQL folds for us here
		},
		SyncStandbyNames: &names,
	}
	steps := []struct {
		name    string
		d       pgnode.Desired
		want    pgnode.ConfigChange
		has     []string
		hasNot  []string
		signal  bool
		errLike string
	}{
		{name: "first write", d: full,
			want: pgnode.ConfigChange{Changed: true, RestartNeeded: true, Ignored: []string{"Work_Mem", "port", "synchronous_standby_names"}},
			has: []string{"work_mem = '8MB'\n", "shared_buffers = '32MB'\n", "track_activity_query_size = '2048'\n",
				"port = '" + strconv.Itoa(cfg.Port) + "'\n", `synchronous_standby_names = 'FIRST 1 ("n2")'` + "\n"},
			hasNot: []string{"999MB", "= '*'"}},
		{name: "same again", d: full,
			want: pgnode.ConfigChange{Ignored: []string{"Work_Mem", "port", "synchronous_standby_names"}}},
		// Nothing carries over: dropping the parameters and the names
		// drops them from the file, and the restart-only one asks for a
		// restart.
		{name: "bare primary", d: pgnode.Desired{Role: pgnode.RolePrimary},
			want:   pgnode.ConfigChange{Changed: true, RestartNeeded: true},
			has:    []string{"shared_buffers = '32MB'\n"},
			hasNot: []string{"work_mem", "track_activity_query_size", "synchronous_standby_names"}},
		{name: "reloadable only", d: pgnode.Desired{Role: pgnode.RolePrimary, Parameters: map[string]string{"work_mem": "4MB"}},
			want: pgnode.ConfigChange{Changed: true},
			has:  []string{"work_mem = '4MB'\n"}},
		// A standby keeps the names it will need once promoted; an empty
		// value is a value, not "unmanaged".
		{name: "standby", d: pgnode.Desired{Role: pgnode.RoleReplica, Parameters: map[string]string{"work_mem": "4MB"}, SyncStandbyNames: new(string)},
			want:   pgnode.ConfigChange{Changed: true, RestartNeeded: true},
			has:    []string{"synchronous_standby_names = ''\n"},
			hasNot: []string{"primary_conninfo"}, signal: true},
		{name: "unknown role", d: pgnode.Desired{Role: pgnode.Role(7)}, signal: true, errLike: "unknown role"},
		{name: "names with a line break", d: pgnode.Desired{Role: pgnode.RolePrimary, SyncStandbyNames: func() *string { s := "a\nport = 1"; return &s }()},
			signal: true, errLike: "control characters"},
		{name: "bad upstream", d: pgnode.Desired{Role: pgnode.RoleReplica, Upstream: &pgnode.Upstream{Port: 5432}},
			signal: true, errLike: "host and port"},
	}
	for _, s := range steps {
		before, _ := os.ReadFile(confPath) // none before the first step
		got, err := n.WriteConfig(s.d)
		if s.errLike != "" {
			if err == nil || !strings.Contains(err.Error(), s.errLike) {
				t.Errorf("%s: WriteConfig = %+v, %v; want an error about %s", s.name, got, err, s.errLike)
			}
			if after, _ := os.ReadFile(confPath); string(after) != string(before) {
				t.Errorf("%s: a refused WriteConfig changed postgresql.conf", s.name)
			}
		} else if err != nil {
			t.Fatalf("%s: WriteConfig: %v", s.name, err)
		} else if got.Changed != s.want.Changed || got.RestartNeeded != s.want.RestartNeeded || !slices.Equal(got.Ignored, s.want.Ignored) {
			t.Errorf("%s: WriteConfig = %+v, want %+v", s.name, got, s.want)
		}
		conf := readFile(t, confPath)
		for _, w := range s.has {
			if !strings.Contains(conf, w) {
				t.Errorf("%s: postgresql.conf lacks %q:\n%s", s.name, w, conf)
			}
		}
		for _, w := range s.hasNot {
			if strings.Contains(conf, w) {
				t.Errorf("%s: postgresql.conf has %q:\n%s", s.name, w, conf)
			}
		}
		_, serr := os.Stat(filepath.Join(cfg.DataDir, "standby.signal"))
		if hasSignal := serr == nil; hasSignal != s.signal {
			t.Errorf("%s: standby.signal present = %v, want %v", s.name, hasSignal, s.signal)
		}
	}
}

// Bootstrap makes a primary: a Desired for anything else is refused
// before the data directory is touched.
func TestBootstrapNeedsPrimary(t *testing.T) {
	base := tempDir(t)
	cfg := nodeConfig(t, base, "n1", testutil.FreePort(t))
	n := mustNew(t, cfg)
	defer n.Close()
	_, err := n.Bootstrap(context.Background(), pgnode.Desired{Role: pgnode.RoleReplica})
	if err == nil || !strings.Contains(err.Error(), "primary") {
		t.Errorf("Bootstrap as a replica = %v, want an error", err)
	}
	if _, err := os.Stat(cfg.DataDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data dir after a refused Bootstrap: %v", err)
	}
}
