package share

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// newStaging makes a staging directory set up as the VM's is: a shared
// bind mount of itself.
func newStaging(t *testing.T) *Staging {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: mounting needs root")
	}
	dir := filepath.Join(t.TempDir(), "share")
	os.Mkdir(dir, 0o700)
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Remove(dir) })
	return &Staging{Dir: dir}
}

// TestStagedIsExactlyWhatWasAsked: a directory rw and ro, and a single
// file: each reaches the share with its content, a read-only one cannot
// be written there even from a mount namespace made before it was staged
// (as virtiofsd's is), and a single file's siblings are not reachable.
func TestStagedIsExactlyWhatWasAsked(t *testing.T) {
	s := newStaging(t)
	host := t.TempDir()
	data := filepath.Join(host, "data")
	os.Mkdir(data, 0o755)
	os.WriteFile(filepath.Join(data, "hello"), []byte("from the host\n"), 0o644)
	etc := filepath.Join(host, "etc")
	os.Mkdir(etc, 0o755)
	os.WriteFile(filepath.Join(etc, "app.conf"), []byte("conf\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "secret"), []byte("sibling\n"), 0o600)

	// virtiofsd's view: a mount namespace, slave of ours, made before.
	daemon := exec.Command("unshare", "--mount", "--propagation", "slave", "sh", "-c",
		`read x; echo written > "$1/c1/m2/new" 2>/dev/null && echo ro-writable; cat "$1/c1/m1/hello"; echo via-daemon > "$1/c1/m1/daemon" && echo rw-ok`, "sh", s.Dir)
	stdin, _ := daemon.StdinPipe()
	var out strings.Builder
	daemon.Stdout = &out
	if err := daemon.Start(); err != nil {
		t.Skipf("skipping: no unshare(1): %v", err)
	}

	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/data", Type: "bind", Source: data, Options: []string{"rbind", "rw"}},
		{Destination: "/data-ro", Type: "bind", Source: data, Options: []string{"rbind", "ro"}},
		{Destination: "/etc/app.conf", Type: "bind", Source: filepath.Join(etc, "app.conf"), Options: []string{"bind", "ro"}},
	}
	got, dir, err := s.Add(mounts)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Source != mounts[0].Source || got[0].Type != "proc" {
		t.Errorf("a non-bind mount changed: %+v", got[0])
	}
	for i, want := range []string{"c1/m1", "c1/m2", "c1/m3"} {
		if got[i+1].Source != SourcePrefix+want || !ValidEntry(want) {
			t.Errorf("mount %d source %q, want %s%s", i+1, got[i+1].Source, SourcePrefix, want)
		}
	}
	stdin.Write([]byte("go\n"))
	stdin.Close()
	daemon.Wait()
	if out.String() != "from the host\nrw-ok\n" {
		t.Errorf("through a namespace made before staging: %q", out.String())
	}
	if b, err := os.ReadFile(filepath.Join(dir, "m1", "hello")); err != nil || string(b) != "from the host\n" {
		t.Errorf("rw entry: %q %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "m2", "new"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write through the read-only entry: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "m3")); err != nil || string(b) != "conf\n" {
		t.Errorf("single file: %q %v", b, err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() == "secret" {
			t.Error("a sibling of a single-file bind is in the share")
		}
	}
	if err := Remove(dir); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(data, "hello")); err != nil || string(b) != "from the host\n" {
		t.Fatalf("Remove touched the host's files: %v", err)
	}

	_, _, err = s.Add([]specs.Mount{{Destination: "/x", Type: "bind", Source: filepath.Join(host, "missing"), Options: []string{"rbind"}}})
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "/x") {
		t.Errorf("missing source: %v", err)
	}
	if entries, _ := os.ReadDir(s.Dir); len(entries) != 0 {
		t.Errorf("a failed Add left %d entries", len(entries))
	}
}
