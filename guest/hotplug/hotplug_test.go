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

func TestSetCPUsOnline(t *testing.T) {
	root := t.TempDir()
	cpu := func(n string) string { return filepath.Join(root, "devices/system/cpu/cpu"+n+"/online") }
	os.MkdirAll(filepath.Join(root, "devices/system/cpu/cpu0"), 0o755) // the boot CPU: no online file
	write(t, cpu("1"), "1\n")
	write(t, cpu("2"), "1\n")
	write(t, cpu("10"), "1\n") // numbered, not sorted by name
	o := &Onliner{SysfsRoot: root}

	online, present, err := o.SetCPUsOnline(2)
	if err != nil || online != 2 || present != 4 {
		t.Fatalf("SetCPUsOnline(2) = %d, %d, %v; want 2, 4", online, present, err)
	}
	for n, want := range map[string]string{"1": "1\n", "2": "0", "10": "0"} {
		if got := read(t, cpu(n)); got != want {
			t.Errorf("cpu%s online %q after shrinking to 2, want %q", n, got, want)
		}
	}

	if online, _, err = o.SetCPUsOnline(3); err != nil || online != 3 {
		t.Fatalf("SetCPUsOnline(3) = %d, %v", online, err)
	}
	if read(t, cpu("2")) != "1" || read(t, cpu("10")) != "0" {
		t.Errorf("growing to 3 must online cpu2 (lowest) first: cpu2 %q cpu10 %q", read(t, cpu("2")), read(t, cpu("10")))
	}

	if _, _, err := o.SetCPUsOnline(5); err == nil {
		t.Error("5 online of 4 present: no error")
	}
	// The boot CPU cannot go offline.
	if online, _, err := o.SetCPUsOnline(0); err == nil || online != 1 {
		t.Errorf("SetCPUsOnline(0) = %d, %v; want 1 and an error", online, err)
	}
}
