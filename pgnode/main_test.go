package pgnode_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/pgnode"
)

// helperEnv makes the test binary act as a stand-in agent: it starts
// PostgreSQL for the config in the variable, prints "READY" and blocks
// until stdin closes. The fence test SIGKILLs it.
const helperEnv = "PGNODE_TEST_HELPER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(runHelper(spec))
	}
	os.Exit(m.Run())
}

// helperSpec is the JSON-able part of pgnode.Config.
type helperSpec struct {
	Name, BinDir, DataDir, RunDir string
	Port                          int
	SuperuserPassword             string
	ReplPassword                  string
	Parameters                    map[string]string
	AllowedNetworks               []string
}

func (h helperSpec) config(log *slog.Logger) pgnode.Config {
	return pgnode.Config{
		Name: h.Name, BinDir: h.BinDir, DataDir: h.DataDir, RunDir: h.RunDir,
		Listen: "127.0.0.1", Port: h.Port,
		SuperuserPassword: h.SuperuserPassword, ReplPassword: h.ReplPassword,
		Parameters: h.Parameters, AllowedNetworks: h.AllowedNetworks,
		StartTimeout: 30 * time.Second, Logger: log,
	}
}

func runHelper(spec string) int {
	var h helperSpec
	if err := json.Unmarshal([]byte(spec), &h); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	n, err := pgnode.New(h.config(log))
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	// Start from a goroutine that ends right away: the fence must not
	// depend on the caller's goroutine or thread staying alive.
	errc := make(chan error, 1)
	go func() { errc <- n.Start(context.Background()) }()
	if err := <-errc; err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	fmt.Println("READY")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

func (h helperSpec) env() string {
	b, _ := json.Marshal(h)
	return helperEnv + "=" + string(b)
}

// binDir finds PostgreSQL or skips the test.
func binDir(t testing.TB) string {
	t.Helper()
	var dirs []string
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dirs = append(dirs, strings.TrimSpace(string(out)))
	}
	dirs = append(dirs, "/usr/lib/postgresql/15/bin")
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d
		}
	}
	t.Skipf("PostgreSQL binaries not found in %v (apt-get install -y postgresql-15)", dirs)
	return ""
}

// tempDir is t.TempDir made traversable by the postgres OS user:
// the testing package creates the chain 0700 and owned by root.
func tempDir(t testing.TB) string {
	t.Helper()
	d := t.TempDir()
	tmp := filepath.Clean(os.TempDir())
	for p := d; p != tmp && p != "/" && p != "."; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}
