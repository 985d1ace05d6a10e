// Package mountutil removes directories that may have mounts under them
// without ever reaching through a mount: a state directory whose staging
// area holds bind mounts of host files must lose those mounts, not the
// host's files.
package mountutil

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount is a mount point and whether it is read-only.
type Mount struct {
	Path     string
	ReadOnly bool
}

// MountsUnder lists the mount points at or below dir, deepest first.
func MountsUnder(dir string) ([]string, error) {
	mounts, err := MountInfoUnder(dir)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(mounts))
	for i, m := range mounts {
		out[i] = m.Path
	}
	return out, nil
}

// MountInfoUnder lists the mounts at or below dir, deepest first.
func MountInfoUnder(dir string) ([]Mount, error) {
	dir = filepath.Clean(dir)
	// The calling thread's view: the main thread may be elsewhere.
	f, err := os.Open("/proc/thread-self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescape(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			ro := false
			for _, o := range strings.Split(fields[5], ",") {
				ro = ro || o == "ro"
			}
			out = append(out, Mount{Path: mp, ReadOnly: ro})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(i, j int) bool { return len(out[i].Path) > len(out[j].Path) })
	return out, nil
}

// unescape undoes mountinfo's octal escapes (\040 for a space, ...).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// UnmountAll detaches every mount at or below dir.
func UnmountAll(dir string) error {
	mounts, err := MountsUnder(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

// RemoveAll removes dir after detaching every mount below it, and refuses
// to remove anything while a mount is still there.
func RemoveAll(dir string) error {
	if err := UnmountAll(dir); err != nil {
		return err
	}
	left, err := MountsUnder(dir)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("remove %s: still mounted below it: %s", dir, strings.Join(left, ", "))
	}
	return os.RemoveAll(dir)
}
