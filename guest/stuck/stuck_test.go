package stuck

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestProcessesListsThisProcess(t *testing.T) {
	out := Processes("/proc")
	me := strconv.Itoa(os.Getpid()) + " " + strconv.Itoa(os.Getppid()) + " "
	if !strings.Contains(out, "\n"+me) {
		t.Fatalf("no line for this process (%q) in:\n%s", me, out)
	}
}

func TestProcessesReadsACommandWithSpaces(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "42")
	os.Mkdir(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "stat"), []byte("42 (a b) D 7 42 42 0 -1"), 0o644)
	os.WriteFile(filepath.Join(dir, "wchan"), []byte("blk_mq_get_tag"), 0o644)
	os.WriteFile(filepath.Join(dir, "cmdline"), []byte("crun\x00create\x00x\x00"), 0o644)
	if got, want := Processes(root), "42 7 D blk_mq_get_tag crun create x\n"; !strings.HasSuffix(got, want) {
		t.Fatalf("got:\n%s\nwant a last line %q", got, want)
	}
}

func TestReportKeepsOnlyChosenGoroutinesAndIsBounded(t *testing.T) {
	r := Report("/proc", func(stack string) bool { return strings.Contains(stack, "TestReportKeeps") })
	if !strings.Contains(r, "TestReportKeeps") || strings.Contains(r, "testing.(*M).Run") {
		t.Fatalf("report:\n%s", r)
	}
	if len(r) > MaxReport+len("\n[cut]") {
		t.Fatalf("report of %d bytes", len(r))
	}
}

func TestProcessesNamesAZombieAndShowsABlockedStack(t *testing.T) {
	root := t.TempDir()
	for pid, stat := range map[string]string{"7": "7 (crun) Z 1 7", "8": "8 (kworker/0:1) D 2 0", "9": "9 (kthreadd) S 0 0"} {
		dir := filepath.Join(root, pid)
		os.Mkdir(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644)
	}
	os.WriteFile(filepath.Join(root, "8", "stack"), []byte("[<0>] blk_mq_get_tag+0x1/0x2\n"), 0o644)
	got := Processes(root)
	for _, want := range []string{"7 1 Z - [crun]\n", "8 2 D - [kworker/0:1]\n", "8's kernel stack:\n[<0>] blk_mq_get_tag"} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "kthreadd") {
		t.Errorf("a sleeping kernel thread listed:\n%s", got)
	}
}

func TestProcessesKeepsALongCommandOnItsLine(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "5")
	os.Mkdir(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "stat"), []byte("5 (sh) S 1 5"), 0o644)
	os.WriteFile(filepath.Join(dir, "cmdline"), []byte("sh\x00-c\x00"+strings.Repeat("x", 300)), 0o644)
	lines := strings.Split(strings.TrimSpace(Processes(root)), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "5 1 S - sh -c x") || !strings.HasSuffix(lines[1], "…") {
		t.Fatalf("got:\n%s", strings.Join(lines, "\n"))
	}
}
