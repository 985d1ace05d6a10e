package memtrim

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestReadOnlyMappings(t *testing.T) {
	maps := filepath.Join(t.TempDir(), "smaps")
	os.WriteFile(maps, []byte(`00400000-009d9000 r-xp 00000000 08:01 1234 /usr/bin/shim
Rss:                5664 kB
Anonymous:             0 kB
009d9000-010e4000 r--p 005d9000 08:01 1234 /usr/bin/shim
Anonymous:             0 kB
010e4000-010f0000 r--p 00ce4000 08:01 1234 /usr/bin/shim
Anonymous:             8 kB
010f0000-01157000 rw-p 00cf0000 08:01 1234 /usr/bin/shim
Anonymous:           396 kB
01157000-01200000 r--p 00000000 08:01 99 /usr/bin/shim-other
Anonymous:             0 kB
7f0000000000-7f0000100000 r-xp 00000000 08:01 55 /usr/lib/libc.so.6
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Anonymous:          1024 kB
7f0000400000-7f0000500000 r--s 00000000 08:01 1234 /usr/bin/shim
7f0000500000-7f0000600000 r--p 00000000 08:01 1234 /usr/bin/shim
`), 0o644)
	got, err := readOnlyMappings(maps, "/usr/bin/shim")
	if err != nil {
		t.Fatal(err)
	}
	// Not the mapping with a written page, nor the shared one.
	want := [][2]uintptr{{0x400000, 0x9d9000}, {0x9d9000, 0x10e4000}, {0x7f0000500000, 0x7f0000600000}}
	if !slices.Equal(got, want) {
		t.Fatalf("got %x, want %x", got, want)
	}
}

// TestTrim trims this test binary for real: its code keeps running.
func TestTrim(t *testing.T) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	ranges, err := readOnlyMappings("/proc/self/smaps", exe)
	if err != nil || len(ranges) == 0 {
		t.Fatalf("no read-only mappings of %s: %v", exe, err)
	}
	before := exeRSSKiB(t, exe)
	if err := Trim(); err != nil {
		t.Fatal(err)
	}
	after := exeRSSKiB(t, exe)
	t.Logf("resident pages of %s: %d KiB before the trim, %d KiB after", exe, before, after)
	if after >= before {
		t.Errorf("the trim left %d KiB of %s resident, %d before", after, exe, before)
	}
	// The code keeps running from the dropped pages, again and again.
	for i := 0; i < 3; i++ {
		if err := Trim(); err != nil {
			t.Fatal(err)
		}
	}
}

// exeRSSKiB adds up the resident pages of exe's mappings.
func exeRSSKiB(t *testing.T, exe string) int {
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	total, in := 0, false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case !strings.HasSuffix(f[0], ":"):
			in = len(f) >= 6 && strings.Join(f[5:], " ") == exe
		case in && f[0] == "Rss:":
			n, _ := strconv.Atoi(f[1])
			total += n
		}
	}
	return total
}

func TestIdleTrimsOnceAfterQuiet(t *testing.T) {
	trims := make(chan struct{}, 10)
	i := &Idle{quiet: 50 * time.Millisecond, trim: func() error { trims <- struct{}{}; return nil }}
	for n := 0; n < 5; n++ {
		i.Touch()
	}
	select {
	case <-trims:
	case <-time.After(10 * time.Second):
		t.Fatal("no trim after the quiet period")
	}
	select {
	case <-trims:
		t.Fatal("trimmed twice for one quiet period")
	case <-time.After(200 * time.Millisecond):
	}
	i.Touch()
	select {
	case <-trims:
	case <-time.After(10 * time.Second):
		t.Fatal("no trim after a later touch")
	}
}
