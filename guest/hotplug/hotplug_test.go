package hotplug

import (
	"os"
	"path/filepath"
	"testing"
)

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestOnlineAll(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "devices/system/cpu/cpu1/online"), "1\n")
	write(t, filepath.Join(root, "devices/system/cpu/cpu2/online"), "0\n")
	write(t, filepath.Join(root, "devices/system/memory/memory8/state"), "online\n")
	write(t, filepath.Join(root, "devices/system/memory/memory9/state"), "offline\n")
	os.MkdirAll(filepath.Join(root, "devices/system/cpu/cpu0"), 0o755) // no online file, like the boot CPU

	cpus, blocks, err := (&Onliner{SysfsRoot: root}).OnlineAll()
	if err != nil {
		t.Fatal(err)
	}
	if cpus != 1 || blocks != 1 {
		t.Fatalf("onlined %d CPUs and %d blocks, want 1 and 1", cpus, blocks)
	}
	if got := read(t, filepath.Join(root, "devices/system/cpu/cpu2/online")); got != "1" {
		t.Errorf("cpu2/online = %q", got)
	}
	if got := read(t, filepath.Join(root, "devices/system/memory/memory9/state")); got != "online_movable" {
		t.Errorf("memory9/state = %q", got)
	}
}

func TestParseUevent(t *testing.T) {
	msg := []byte("add@/devices/system/cpu/cpu3\x00ACTION=add\x00DEVPATH=/devices/system/cpu/cpu3\x00SUBSYSTEM=cpu\x00SEQNUM=1")
	a, d, s := parseUevent(msg)
	if a != "add" || d != "/devices/system/cpu/cpu3" || s != "cpu" {
		t.Errorf("got %q %q %q", a, d, s)
	}
	if a, _, _ := parseUevent([]byte("libudev\x00ACTION=add")); a != "" {
		t.Error("accepted a message that is not the kernel's")
	}
	if _, d, _ := parseUevent([]byte("add@x\x00ACTION=add\x00DEVPATH=/../../etc\x00SUBSYSTEM=cpu")); d != "" {
		t.Error("accepted a devpath with ..")
	}
}
