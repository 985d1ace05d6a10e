package share

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/qemu-shim/qemu-shim/internal/mountutil"
)

const virtiofsd = "/usr/lib/qemu/virtiofsd"

// newStaging starts a real virtiofsd on a staging directory, as the VM
// does, and returns the staging once virtiofsd's namespace has it as root.
func newStaging(t *testing.T) *Staging {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: mounting needs root")
	}
	if _, err := os.Stat(virtiofsd); err != nil {
		t.Skipf("skipping: no %s (make deps installs qemu-system-common)", virtiofsd)
	}
	dir := filepath.Join(t.TempDir(), "share")
	os.Mkdir(dir, 0o700)
	os.WriteFile(filepath.Join(dir, Marker), nil, 0o400)
	sock := filepath.Join(t.TempDir(), "vfs.sock")
	cmd := exec.Command(virtiofsd, "--socket-path="+sock, "-o", "source="+dir, "-o", "sandbox=namespace")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	s := &Staging{Dir: dir, Pid: cmd.Process.Pid}
	// virtiofsd enters its sandbox once a vhost-user front end (QEMU)
	// connects: this connection stands in for QEMU.
	deadline := time.Now().Add(10 * time.Second)
	var front net.Conn
	for {
		var err error
		if front, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("virtiofsd does not listen: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(func() { front.Close() })
	for s.inNamespace(func() error { return nil }) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("virtiofsd's namespace never had the share at its root: %v", s.inNamespace(func() error { return nil }))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}

// inDaemon runs fn in virtiofsd's mount namespace, where the share is
// the root, as virtiofsd sees it.
func inDaemon(t *testing.T, s *Staging, fn func() error) {
	t.Helper()
	if err := s.inNamespace(fn); err != nil {
		t.Error(err)
	}
}

func readIn(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Errorf("read %s: %v", p, err)
	}
	return string(b)
}

// TestStagedIsExactlyWhatWasAsked: a directory rw and ro, and a single
// file: each reaches virtiofsd with its content, a read-only one cannot
// be written there, a single file's siblings are not reachable, and none
// of it is mounted in the host's namespace.
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

	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/data", Type: "bind", Source: data, Options: []string{"rbind", "rw"}},
		{Destination: "/data-ro", Type: "bind", Source: data, Options: []string{"rbind", "ro"}},
		{Destination: "/etc/app.conf", Type: "bind", Source: filepath.Join(etc, "app.conf"), Options: []string{"bind", "ro"}},
	}
	got, entry, err := s.Add(mounts)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Source != "proc" || got[0].Type != "proc" {
		t.Errorf("a non-bind mount changed: %+v", got[0])
	}
	for i, want := range []string{"c1/m1", "c1/m2", "c1/m3"} {
		if got[i+1].Source != SourcePrefix+want || !ValidEntry(want) {
			t.Errorf("mount %d source %q, want %s%s", i+1, got[i+1].Source, SourcePrefix, want)
		}
	}
	inDaemon(t, s, func() error {
		if got := readIn(t, "/c1/m1/hello"); got != "from the host\n" {
			t.Errorf("rw entry: %q", got)
		}
		if err := os.WriteFile("/c1/m2/new", nil, 0o644); !errors.Is(err, unix.EROFS) {
			t.Errorf("write through the read-only entry: %v", err)
		}
		if err := os.WriteFile("/c1/m1/daemon", []byte("via the daemon\n"), 0o644); err != nil {
			t.Errorf("write through the rw entry: %v", err)
		}
		if got := readIn(t, "/c1/m3"); got != "conf\n" {
			t.Errorf("single file: %q", got)
		}
		if entries, _ := os.ReadDir("/c1"); len(entries) != 3 {
			t.Errorf("entries %v: want m1 m2 m3 alone", entries)
		}
		return nil
	})
	if got := readIn(t, filepath.Join(data, "daemon")); got != "via the daemon\n" {
		t.Errorf("the host sees %q", got)
	}
	if _, err := os.Stat(filepath.Join(data, "new")); err == nil {
		t.Error("a write through the read-only entry reached the host")
	}
	if m, _ := mountutil.MountsUnder(s.Dir); len(m) != 0 {
		t.Errorf("staged mounts in the host's namespace: %v", m)
	}
	if err := s.Remove(entry); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(data, "hello")); err != nil || string(b) != "from the host\n" {
		t.Fatalf("Remove touched the host's files: %v", err)
	}
	inDaemon(t, s, func() error {
		if entries, _ := os.ReadDir("/"); len(entries) != 1 {
			t.Errorf("left in the share after Remove: %v", entries)
		}
		return nil
	})

	_, _, err = s.Add([]specs.Mount{{Destination: "/x", Type: "bind", Source: filepath.Join(host, "missing"), Options: []string{"rbind"}}})
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "/x") {
		t.Errorf("missing source: %v", err)
	}
	if entries, _ := os.ReadDir(s.Dir); len(entries) != 1 { // the marker
		t.Errorf("a failed Add left %d entries", len(entries)-1)
	}
}

// TestNonRecursiveReadOnlyKeepsSubmountsWritable: as with runc, ro covers
// the top mount; its submounts come as mounts of their own, and the host
// can remove the submount's directory while it is staged.
func TestNonRecursiveReadOnlyKeepsSubmountsWritable(t *testing.T) {
	s := newStaging(t)
	host := t.TempDir()
	sub := filepath.Join(host, "tmpfs")
	os.Mkdir(sub, 0o755)
	if err := unix.Mount("none", sub, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(sub, unix.MNT_DETACH)
	got, entry, err := s.Add([]specs.Mount{{Destination: "/mnt", Type: "bind", Source: host, Options: []string{"rbind", "ro"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Remove(entry)
	if len(got) != 2 || got[1].Destination != "/mnt/tmpfs" || got[1].Source != SourcePrefix+"c1/m0/tmpfs" || got[1].Options[1] != "rw" {
		t.Fatalf("mounts %+v: want the tmpfs as a writable mount of its own", got)
	}
	inDaemon(t, s, func() error {
		if err := os.WriteFile("/c1/m0/tmpfs/file", nil, 0o644); err != nil {
			t.Errorf("the submount is not writable: %v", err)
		}
		if err := os.WriteFile("/c1/m0/top", nil, 0o644); !errors.Is(err, unix.EROFS) {
			t.Errorf("the read-only top: %v", err)
		}
		return nil
	})
	if err := unix.Unmount(sub, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(sub); err != nil {
		t.Errorf("the host cannot remove its directory while it is staged: %v", err)
	}
}
