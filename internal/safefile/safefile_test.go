package safefile

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// victim is a file the attacker wants root to overwrite or hand over.
func victim(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(p, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func assertIntact(t *testing.T, p string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "precious" {
		t.Fatalf("victim changed: %q, %v", b, err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("victim mode changed to %v", st.Mode().Perm())
	}
}

func TestReplaceDoesNotWriteThroughLinks(t *testing.T) {
	for _, kind := range []string{"symlink", "hardlink"} {
		t.Run(kind, func(t *testing.T) {
			v := victim(t)
			dir := t.TempDir()
			target := filepath.Join(dir, "postgresql.conf")
			link := os.Symlink
			if kind == "hardlink" {
				link = os.Link
			}
			if err := link(v, target); err != nil {
				t.Fatal(err)
			}
			changed, err := Replace(target, []byte("new"), 0o644, Keep)
			if err != nil || !changed {
				t.Fatalf("Replace = %v, %v", changed, err)
			}
			assertIntact(t, v)
			fi, err := os.Lstat(target)
			if err != nil || !fi.Mode().IsRegular() {
				t.Fatalf("target is not a plain file now: %v %v", fi, err)
			}
			if b, _ := os.ReadFile(target); string(b) != "new" {
				t.Fatalf("target = %q", b)
			}
		})
	}
}

func TestReplaceUnchangedLeavesFileAndFixesMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("same"), 0o644); err != nil {
		t.Fatal(err)
	}
	changed, err := Replace(p, []byte("same"), 0o600, Keep)
	if err != nil || changed {
		t.Fatalf("Replace = %v, %v; want unchanged", changed, err)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
	// A link to a file with the same content is still replaced: its
	// mode must not be "fixed" through the link.
	v := victim(t)
	l := filepath.Join(t.TempDir(), "l")
	if err := os.Symlink(v, l); err != nil {
		t.Fatal(err)
	}
	if changed, err := Replace(l, []byte("precious"), 0o644, Keep); err != nil || !changed {
		t.Fatalf("Replace over a link = %v, %v; want replaced", changed, err)
	}
	assertIntact(t, v)
}

func TestOpenAppendSetsLinksAside(t *testing.T) {
	for _, kind := range []string{"symlink", "hardlink", "fifo"} {
		t.Run(kind, func(t *testing.T) {
			v := victim(t)
			dir := t.TempDir()
			p := filepath.Join(dir, "postgresql.log")
			var err error
			switch kind {
			case "symlink":
				err = os.Symlink(v, p)
			case "hardlink":
				err = os.Link(v, p)
			case "fifo":
				err = syscall.Mkfifo(p, 0o600)
			}
			if err != nil {
				t.Fatal(err)
			}
			f, err := OpenAppend(p, 0o600, Keep)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString("log line\n"); err != nil {
				t.Fatal(err)
			}
			f.Close()
			assertIntact(t, v)
			if b, _ := os.ReadFile(p); string(b) != "log line\n" {
				t.Fatalf("log = %q", b)
			}
			ents, _ := os.ReadDir(dir)
			var aside bool
			for _, e := range ents {
				aside = aside || strings.HasPrefix(e.Name(), "postgresql.log.suspect-")
			}
			if !aside {
				t.Fatalf("the planted %s was not kept aside: %v", kind, ents)
			}
		})
	}
}

func TestOpenAppendAppends(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	for _, line := range []string{"a\n", "b\n"} {
		f, err := OpenAppend(p, 0o600, Keep)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(line)
		f.Close()
	}
	if b, _ := os.ReadFile(p); string(b) != "a\nb\n" {
		t.Fatalf("log = %q", b)
	}
}

func TestFixDirRefusesALink(t *testing.T) {
	real := t.TempDir()
	os.Chmod(real, 0o755)
	l := filepath.Join(t.TempDir(), "pgdata")
	if err := os.Symlink(real, l); err != nil {
		t.Fatal(err)
	}
	if err := FixDir(l, 0o700, Keep); err == nil || !strings.Contains(err.Error(), "link") {
		t.Fatalf("FixDir on a link = %v, want a refusal", err)
	}
	if st, _ := os.Stat(real); st.Mode().Perm() != 0o755 {
		t.Fatalf("the link's target was changed to %v", st.Mode().Perm())
	}
}

func TestMkdirAllParentsTraversable(t *testing.T) {
	base := t.TempDir()
	p := filepath.Join(base, "a", "b", "data")
	if err := MkdirAll(p, 0o711, Keep); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Join(base, "a"), filepath.Join(base, "a", "b")} {
		if st, _ := os.Stat(d); st.Mode().Perm() != 0o755 {
			t.Errorf("%s: mode %v, want 0755", d, st.Mode().Perm())
		}
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o711 {
		t.Errorf("%s: mode %v, want 0711", p, st.Mode().Perm())
	}
}

func TestCheckOwned(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "raft.db"), nil, 0o600)
	if err := CheckOwned(dir, os.Geteuid()); err != nil {
		t.Fatalf("own tree refused: %v", err)
	}
	if err := CheckOwned(dir, os.Geteuid()+1); err == nil {
		t.Fatal("a tree of another uid was accepted")
	}
	os.Symlink("/etc/passwd", filepath.Join(dir, "snap"))
	if err := CheckOwned(dir, os.Geteuid()); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("a link in the tree = %v, want refused", err)
	}
}

func TestReadFileRefusesLinksFIFOsAndHugeFiles(t *testing.T) {
	dir := t.TempDir()
	v := victim(t)
	link, fifo, big, ok := filepath.Join(dir, "link"), filepath.Join(dir, "fifo"), filepath.Join(dir, "big"), filepath.Join(dir, "ok")
	os.Symlink(v, link)
	syscall.Mkfifo(fifo, 0o600)
	os.WriteFile(big, make([]byte, 2048), 0o600)
	os.WriteFile(ok, []byte("fine"), 0o600)
	for _, p := range []string{link, fifo, big} {
		if data, err := ReadFile(p, 1024); err == nil {
			t.Errorf("ReadFile(%s) = %q, want refused", filepath.Base(p), data)
		}
	}
	if data, err := ReadFile(ok, 1024); err != nil || string(data) != "fine" {
		t.Fatalf("ReadFile(ok) = %q, %v", data, err)
	}
	if _, err := OpenRead(fifo); err == nil {
		t.Error("OpenRead opened a FIFO")
	}
}

func TestMkdirAllUnderALinkedParent(t *testing.T) {
	real := t.TempDir()
	base := t.TempDir()
	link := filepath.Join(base, "data")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if err := MkdirAll(filepath.Join(link, "run"), 0o700, Keep); err != nil {
		t.Fatalf("MkdirAll under a linked parent: %v", err)
	}
	if st, err := os.Stat(filepath.Join(real, "run")); err != nil || !st.IsDir() {
		t.Fatalf("run not made in the link's target: %v", err)
	}
}

func TestCheckPrivateAncestors(t *testing.T) {
	base := t.TempDir()
	if os.Geteuid() != 0 {
		t.Skip("ownership by root is what is checked")
	}
	for d := base; d != "/"; d = filepath.Dir(d) {
		if st, _ := os.Stat(d); st.Mode().Perm()&0o022 != 0 && st.Mode()&os.ModeSticky == 0 {
			t.Skipf("%s is group- or world-writable here", d)
		}
	}
	pg := filepath.Join(base, "pgdata")
	if err := CheckPrivateAncestors(pg); err != nil {
		t.Fatalf("root-only chain refused: %v", err)
	}
	open := filepath.Join(base, "shared")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	if err := CheckPrivateAncestors(filepath.Join(open, "pgdata")); err == nil {
		t.Error("a data dir under a world-writable parent was accepted")
	}
	os.Chown(open, 65534, 65534)
	os.Chmod(open, 0o755)
	if err := CheckPrivateAncestors(filepath.Join(open, "pgdata")); err == nil {
		t.Error("a data dir under another user's parent was accepted")
	}
	l := filepath.Join(base, "l")
	os.Symlink(base, l)
	if err := CheckPrivateAncestors(l); err == nil {
		t.Error("a data dir that is a link was accepted")
	}
}
