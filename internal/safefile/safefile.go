// Package safefile writes files and fixes directories as root without
// letting a less privileged user redirect the write.
//
// The agent runs as root and PostgreSQL as an unprivileged OS user that
// owns the data directory and the run directory. Anyone who reaches that
// user (a database superuser can, through COPY ... TO PROGRAM) can plant
// a symbolic or hard link, or swap a directory, where root is about to
// write. A plain os.WriteFile, os.OpenFile(O_CREATE), os.Chmod or
// os.Chown follows such a link, and root then overwrites or hands over a
// file of its choosing. Every function here works on a descriptor it
// opened itself without following links (O_NOFOLLOW, O_EXCL), checks
// what it opened, and changes mode and owner through that descriptor
// (fchmod, fchown), never through a path that may have changed since.
package safefile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Owner is who a file or directory should belong to; a negative UID
// leaves ownership as it is (the agent does not run as root).
type Owner struct{ UID, GID int }

// Keep leaves ownership alone.
var Keep = Owner{UID: -1, GID: -1}

// Chown gives f to o through its descriptor (nothing for Keep).
func (o Owner) Chown(f *os.File) error {
	if o.UID < 0 {
		return nil
	}
	return f.Chown(o.UID, o.GID)
}

// Replace atomically replaces dir/name with data: a new file created
// exclusively (so no planted link is followed), written, synced, given
// perm and owner through its descriptor, then renamed over the old name
// (rename replaces a link, it never writes through it). It reports
// whether the content changed; an identical file is left in place, only
// its owner and mode put right.
func Replace(path string, data []byte, perm fs.FileMode, owner Owner) (changed bool, err error) {
	if same, err := sameContent(path, data, perm, owner); err == nil && same {
		return false, nil
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return false, err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	_, werr := f.Write(data)
	err = errors.Join(werr, f.Chmod(perm), owner.Chown(f), f.Sync(), f.Close())
	if err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return false, err
	}
	SyncDir(dir)
	return true, nil
}

// sameContent reports whether path is a regular file, not a link, that
// already holds data; it puts its mode and owner right through the
// descriptor on the way.
func sameContent(path string, data []byte, perm fs.FileMode, owner Owner) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || nlink(st) != 1 || st.Size() != int64(len(data)) {
		return false, err
	}
	cur := make([]byte, len(data)+1)
	n, _ := f.ReadAt(cur, 0)
	if n != len(data) || !bytes.Equal(cur[:n], data) {
		return false, nil
	}
	if st.Mode().Perm() != perm {
		if err := f.Chmod(perm); err != nil {
			return false, err
		}
	}
	return true, owner.Chown(f)
}

// OpenAppend opens path for appending (a log file handed to a child) and
// creates it when missing. A link planted at path, a hard link to another
// file or anything that is not a regular file is moved aside (never
// written through) and a fresh file is created in its place.
func OpenAppend(path string, perm fs.FileMode, owner Owner) (*os.File, error) {
	for attempt := 0; attempt < 3; attempt++ {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_NOFOLLOW|unix.O_NONBLOCK, perm)
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENXIO) {
			if _, err := SetAside(path); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		if !st.Mode().IsRegular() || nlink(st) != 1 {
			f.Close()
			if _, err := SetAside(path); err != nil {
				return nil, err
			}
			continue
		}
		if err := errors.Join(clearNonblock(f), owner.Chown(f)); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	}
	return nil, fmt.Errorf("%s: replaced again while being opened; refusing to write there", path)
}

// SetAside renames a suspicious entry out of the way (PATH.suspect-TIME),
// keeping it for a human to look at; it returns the new name.
func SetAside(path string) (string, error) {
	dst := path + ".suspect-" + time.Now().UTC().Format("20060102T150405.000000000Z")
	if err := os.Rename(path, dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s cannot be moved aside: %w", path, err)
	}
	return dst, nil
}

func clearNonblock(f *os.File) error {
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	_, err = unix.FcntlInt(f.Fd(), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	return err
}

// FixDir gives an existing directory perm and owner through a descriptor
// opened without following a link: a directory swapped for a link to
// somewhere else is refused, not chmod-ed or chown-ed.
func FixDir(path string, perm fs.FileMode, owner Owner) error {
	f, err := openDir(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return errors.Join(f.Chmod(perm), owner.Chown(f))
}

func openDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return nil, fmt.Errorf("%s is a link or not a directory; refusing to change it as root", path)
	}
	return f, err
}

// MkdirAll creates path and its missing parents. Parents get 0755 and
// path gets perm, owner (umask aside, put right afterwards), so an
// unprivileged user can traverse the parents root created for it.
// Existing directories, or links to them (an operator's), are left as
// they are.
func MkdirAll(path string, perm fs.FileMode, owner Owner) error {
	path = filepath.Clean(path)
	if st, err := os.Stat(path); err == nil {
		if !st.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", path)
		}
		return nil
	}
	if parent := filepath.Dir(path); parent != path {
		if err := MkdirAll(parent, 0o755, Keep); err != nil {
			return err
		}
	}
	if err := os.Mkdir(path, perm); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // made meanwhile by someone else: not ours to fix
		}
		return err
	}
	return FixDir(path, perm, owner)
}

// ReadFile reads a file another user controls without following a link,
// blocking on a FIFO or reading more than max bytes: such a file is
// refused, not read.
func ReadFile(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link; not reading it as root", path)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if st.Size() > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err == nil && int64(len(data)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return data, err
}

// OpenRead opens a file another user controls for reading, under the
// same rules as ReadFile (the caller bounds what it reads).
func OpenRead(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	return f, nil
}

// CheckPrivateAncestors checks that no user but root can replace path or
// any directory above it: each ancestor is root's and writable by root
// alone (or sticky, as /tmp is), and path itself is not a link. Root
// writes below path; an ancestor another user could rename would let
// that user redirect those writes.
func CheckPrivateAncestors(path string) error {
	path = filepath.Clean(path)
	if st, err := os.Lstat(path); err == nil && st.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s is a symbolic link", path)
	}
	for d := filepath.Dir(path); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue // root creates it later (MkdirAll)
		}
		if err != nil {
			return err
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if ok {
			sticky := st.Mode()&fs.ModeSticky != 0
			if sys.Uid != 0 || (st.Mode().Perm()&0o022 != 0 && !sticky) {
				return fmt.Errorf("%s (uid %d, mode %#o) can be changed by a user other than root", d, sys.Uid, st.Mode().Perm())
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// CheckOwned walks root (not following links) and fails on the first
// entry that is a link or is not owned by uid, naming it: state that
// someone else could have written is not trusted.
func CheckOwned(root string, uid int) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%s is a symbolic link", p)
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && int(st.Uid) != uid {
			return fmt.Errorf("%s is owned by uid %d, not %d", p, st.Uid, uid)
		}
		return nil
	})
}

// SyncDir makes a rename in dir durable; errors are ignored (some
// filesystems do not support syncing a directory).
func SyncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

func nlink(st fs.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return uint64(s.Nlink)
	}
	return 1
}
