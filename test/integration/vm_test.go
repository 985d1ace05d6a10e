package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
	"github.com/qemu-shim/qemu-shim/test/guestimage"
	"github.com/qemu-shim/qemu-shim/vm"
)

// bootVM starts a VM and registers its shutdown.
func bootVM(t *testing.T, edit func(*vm.Config)) *vm.Instance {
	t.Helper()
	img := guestimage.Require(t)
	cfg := vm.Config{
		ID:          strings.NewReplacer("/", "-", "_", "-").Replace(strings.ToLower(t.Name())),
		StateRoot:   t.TempDir(),
		Kernel:      img.Kernel,
		Initrd:      img.Initrd,
		Tools:       img.Tools,
		CPUs:        1,
		MaxCPUs:     4,
		MemoryMiB:   256,
		BootTimeout: 90 * time.Second,
		Debug:       os.Getenv("QEMU_SHIM_DEBUG") == "1",
	}
	if edit != nil {
		edit(&cfg)
	}
	inst, err := vm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := inst.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			// What the guest said is the best clue to a failure.
			if b, err := os.ReadFile(filepath.Join(inst.StateDir(), "console.log")); err == nil {
				t.Logf("guest console:\n%s", b)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := inst.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return inst
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// assertGone checks that nothing of the VM is left on the host.
func assertGone(t *testing.T, inst *vm.Instance, pid int) {
	t.Helper()
	select {
	case <-inst.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("VM resources not released 30s after QEMU ended")
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("QEMU pid %d still exists (kill 0: %v)", pid, err)
	}
	if _, err := os.Stat(inst.StateDir()); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(inst.StateDir())
		t.Errorf("state directory %s left behind (%v): %v", inst.StateDir(), err, entries)
	}
	if inst.State() != vm.StateShutdown {
		t.Errorf("state %s after QEMU ended, want shutdown", inst.State())
	}
}

func TestBootInfoAndShutdown(t *testing.T) {
	t.Parallel()
	img := guestimage.Require(t)
	inst := bootVM(t, nil)
	ctx := testContext(t)
	info, err := inst.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest: kernel %s, %d CPUs, %d MiB, up %v, transport %s, accel %s, modules %v",
		info.KernelRelease, info.CpusOnline, info.MemoryTotalBytes>>20, time.Duration(info.UptimeNs), info.Transport, inst.Accel(), info.ModulesLoaded)
	if img.KernelVersion != "" && info.KernelRelease != img.KernelVersion {
		t.Errorf("guest kernel %q, want the built %q", info.KernelRelease, img.KernelVersion)
	}
	if host, _ := os.ReadFile("/proc/sys/kernel/osrelease"); strings.TrimSpace(string(host)) == info.KernelRelease {
		t.Errorf("guest reports the host's kernel %s", info.KernelRelease)
	}
	if info.CpusOnline != 1 {
		t.Errorf("%d CPUs online, want 1", info.CpusOnline)
	}
	if mib := info.MemoryTotalBytes >> 20; mib < 150 || mib > 256 {
		t.Errorf("MemTotal %d MiB, want a little under 256", mib)
	}
	if info.Transport != string(inst.Transport()) {
		t.Errorf("agent serves on %q, host uses %q", info.Transport, inst.Transport())
	}
	for _, want := range []string{inst.StateDir() + "/qmp.sock", inst.StateDir() + "/console.log", inst.StateDir() + "/qemu.pid"} {
		if _, err := os.Stat(want); err != nil {
			t.Errorf("while running: %v", err)
		}
	}
	pid := inst.Pid()
	if err := inst.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	assertGone(t, inst, pid)
	// A second shutdown is harmless, a restart is not allowed.
	if err := inst.Shutdown(ctx); err != nil {
		t.Errorf("second shutdown: %v", err)
	}
	if err := inst.Start(ctx); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("start after shutdown: got %v, want a failed-precondition error", err)
	}
}

func TestHotplugCPUAndMemory(t *testing.T) {
	t.Parallel()
	inst := bootVM(t, func(c *vm.Config) { c.MaxMemoryMiB = 1024 })
	ctx := testContext(t)
	before, err := inst.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := inst.SetCPUs(ctx, 2); err != nil {
		t.Fatal(err)
	}
	t.Logf("1→2 vCPUs online in %v", time.Since(start))
	start = time.Now()
	if err := inst.AddMemory(ctx, 256); err != nil {
		t.Fatal(err)
	}
	t.Logf("+256 MiB online in %v", time.Since(start))
	after, err := inst.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.CpusOnline != 2 {
		t.Errorf("%d CPUs online after plugging one, want 2", after.CpusOnline)
	}
	if grown := int64(after.MemoryTotalBytes-before.MemoryTotalBytes) >> 20; grown != 256 {
		t.Errorf("MemTotal grew by %d MiB, want 256", grown)
	}
	if _, err := inst.RemoveMemory(ctx); err != nil {
		t.Fatal(err)
	}
	final, err := inst.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if final.MemoryTotalBytes != before.MemoryTotalBytes {
		t.Errorf("MemTotal %d MiB after unplug, want %d", final.MemoryTotalBytes>>20, before.MemoryTotalBytes>>20)
	}
	if err := inst.SetCPUs(ctx, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("below the boot vCPUs: got %v", err)
	}
	if err := inst.SetCPUs(ctx, 5); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("5 vCPUs of at most 4: got %v", err)
	}
}

// makeExt4 builds an ext4 image holding files, without mounting anything.
func makeExt4(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	for name, content := range files {
		p := filepath.Join(src, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "disk.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", src, img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	return img
}

func TestAttachReadDetachDisk(t *testing.T) {
	t.Parallel()
	img := makeExt4(t, map[string]string{"hello.txt": "hello from the host\n"})
	inst := bootVM(t, func(c *vm.Config) { c.AllowedDiskRoots = []string{filepath.Dir(img)} })
	ctx := testContext(t)

	if err := inst.AttachDisk(ctx, vm.Disk{ID: "data1", Path: img, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	agent := inst.Agent()
	mnt, err := agent.MountBlock(ctx, &agentapi.MountBlockRequest{Serial: "data1", Fstype: "ext4", Name: "data", ReadOnly: true, WaitMs: 20000})
	if err != nil {
		t.Fatal(err)
	}
	got, err := agent.ReadFile(ctx, &agentapi.ReadFileRequest{Mount: "data", Path: "hello.txt"})
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Data) != "hello from the host\n" {
		t.Errorf("read %q from %s in the guest", got.Data, mnt.Device)
	}
	if _, err := agent.ReadFile(ctx, &agentapi.ReadFileRequest{Mount: "data", Path: "../../../proc/version"}); err == nil {
		t.Error("read a file outside the mount")
	}
	if _, err := agent.UnmountBlock(ctx, &agentapi.UnmountBlockRequest{Name: "data"}); err != nil {
		t.Fatal(err)
	}
	if err := inst.DetachDisk(ctx, "data1"); err != nil {
		t.Fatal(err)
	}
	info, err := inst.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range info.BlockDevices {
		if d.Serial == "data1" {
			t.Errorf("disk still in the guest after detach: %+v", d)
		}
	}
	// Outside the allowed roots, or missing: refused before QEMU sees it.
	if err := inst.AttachDisk(ctx, vm.Disk{ID: "etc", Path: "/etc/hostname"}); !errors.Is(err, errdefs.ErrPermissionDenied) || !strings.Contains(err.Error(), "/etc/hostname") {
		t.Errorf("disk outside allowed roots: got %v", err)
	}
	missing := filepath.Join(filepath.Dir(img), "missing.img")
	if err := inst.AttachDisk(ctx, vm.Disk{ID: "gone", Path: missing}); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing disk: got %v", err)
	}
}

func TestQEMUKilledIsNoticed(t *testing.T) {
	t.Parallel()
	inst := bootVM(t, nil)
	pid := inst.Pid()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	assertGone(t, inst, pid)
	if _, err := inst.Info(testContext(t)); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("info after QEMU died: got %v", err)
	}
	if !strings.Contains(inst.ExitStatus(), "killed") {
		t.Errorf("exit status %q does not say QEMU was killed", inst.ExitStatus())
	}
}

func TestInvalidConfigAndTransitions(t *testing.T) {
	img := guestimage.Require(t)
	base := vm.Config{ID: "bad", StateRoot: t.TempDir(), Kernel: img.Kernel, Initrd: img.Initrd, Tools: img.Tools}

	c := base
	c.Disks = []vm.Disk{{ID: "root", Path: "/nonexistent/rootfs.img"}}
	if _, err := vm.New(c); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "/nonexistent/rootfs.img") {
		t.Errorf("missing disk: got %v", err)
	}
	c = base
	c.Disks = []vm.Disk{{ID: "a-serial-that-is-far-too-long", Path: img.Kernel}}
	if _, err := vm.New(c); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("long disk id: got %v", err)
	}
	c = base
	c.Kernel = "/nonexistent/vmlinux"
	if _, err := vm.New(c); err == nil || !strings.Contains(err.Error(), "/nonexistent/vmlinux") {
		t.Errorf("missing kernel: got %v", err)
	}
	inst, err := vm.New(base)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	if err := inst.SetCPUs(ctx, 2); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("hot-plug before start: got %v", err)
	}
	if err := inst.Shutdown(ctx); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("shutdown before start: got %v", err)
	}
}

func TestAttachDetachNIC(t *testing.T) {
	t.Parallel()
	const tap, bootTap = "qstaptest0", "qstaptest1"
	for _, name := range []string{tap, bootTap} {
		if out, err := exec.Command("ip", "tuntap", "add", "dev", name, "mode", "tap").CombinedOutput(); err != nil {
			t.Skipf("skipping: cannot make a tap device here: %v: %s", err, out)
		}
		t.Cleanup(func() { exec.Command("ip", "link", "del", name).Run() })
	}
	inst := bootVM(t, func(c *vm.Config) { c.NICs = []vm.NIC{{ID: "boot0", Tap: bootTap, MAC: "02:00:00:0a:0b:0b"}} })
	ctx := testContext(t)
	hasMAC := func(mac string) bool {
		info, err := inst.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range info.Interfaces {
			if n.Mac == mac {
				return true
			}
		}
		return false
	}
	// virtio_net loads once the host has had its first answer.
	waitFor(ctx, t, "the boot NIC in the guest", func() bool { return hasMAC("02:00:00:0a:0b:0b") })
	const mac = "02:00:00:0a:0b:0c"
	if err := inst.AttachNIC(ctx, vm.NIC{ID: "nic1", Tap: tap, MAC: mac}); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the card in the guest", func() bool { return hasMAC(mac) })
	if err := inst.DetachNIC(ctx, "nic1"); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the card gone from the guest", func() bool { return !hasMAC(mac) })
	if err := inst.AttachNIC(ctx, vm.NIC{ID: "nic2", Tap: "no-such-tap"}); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "no-such-tap") {
		t.Errorf("missing tap: got %v", err)
	}
	if err := inst.AttachNIC(ctx, vm.NIC{ID: "nic3", Tap: tap, MAC: "not-a-mac"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bad mac: got %v", err)
	}
}

func TestVirtioMem(t *testing.T) {
	t.Parallel()
	inst := bootVM(t, func(c *vm.Config) { c.VirtioMemMiB = 512 })
	ctx := testContext(t)
	// virtio_mem loads once the host has its first answer.
	waitFor(ctx, t, "virtio_mem loaded", func() bool {
		info, err := inst.Info(ctx)
		return err == nil && slices.Contains(info.ModulesLoaded, "virtio_mem")
	})
	before, err := inst.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := inst.SetMemory(ctx, 256+256); err != nil {
		t.Fatal(err)
	}
	t.Logf("virtio-mem +256 MiB in %v", time.Since(start))
	waitFor(ctx, t, "MemTotal +256 MiB", func() bool {
		info, err := inst.Info(ctx)
		return err == nil && info.MemoryTotalBytes == before.MemoryTotalBytes+256<<20
	})
	start = time.Now()
	if err := inst.SetMemory(ctx, 256); err != nil {
		t.Fatal(err)
	}
	t.Logf("virtio-mem -256 MiB in %v", time.Since(start))
	waitFor(ctx, t, "MemTotal back", func() bool {
		info, err := inst.Info(ctx)
		return err == nil && info.MemoryTotalBytes == before.MemoryTotalBytes
	})
	if err := inst.SetMemory(ctx, 256+1024); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("beyond the virtio-mem size: got %v", err)
	}
}

// The console reaches console.log through the shim (which bounds it), and
// its tail outlives the VM.
func TestConsoleLog(t *testing.T) {
	t.Parallel()
	inst := bootVM(t, func(c *vm.Config) { c.KernelParams = []string{"ignore_loglevel"} })
	ctx := testContext(t)
	if b, err := os.ReadFile(filepath.Join(inst.StateDir(), vm.ConsoleLogName)); err != nil || !strings.Contains(string(b), "Linux version") {
		t.Errorf("console.log has no kernel banner (%v): %.200q", err, b)
	}
	pid := inst.Pid()
	if err := inst.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	assertGone(t, inst, pid)
	if tail := inst.ConsoleTail(vm.ConsoleTailBytes); len(tail) == 0 || len(tail) > vm.ConsoleTailBytes {
		t.Errorf("console tail of %d bytes after shutdown", len(tail))
	}
}

// QEMU runs as its VM's own user, chrooted into an empty directory, with no
// capabilities, no new privileges and its seccomp filter; two VMs' QEMUs
// have different users, and a disk hot-plugged later (which QEMU could not
// open by path) still works.
func TestQEMUConfinement(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("QEMU switches to a user of its own only when the shim is root")
	}
	root := t.TempDir()
	const first = 1_600_000_000
	edit := func(c *vm.Config) {
		c.StateRoot, c.QEMUUIDFirst, c.QEMUUIDCount = root, first, 16
	}
	a := bootVM(t, func(c *vm.Config) { edit(c); c.ID = "confined-a" })
	b := bootVM(t, func(c *vm.Config) { edit(c); c.ID = "confined-b" })
	uids := map[string]bool{}
	for _, inst := range []*vm.Instance{a, b} {
		status := procStatus(t, inst.Pid())
		uid := status["Uid"]
		f := strings.Fields(uid)
		if len(f) != 4 || f[0] == "0" || slices.ContainsFunc(f, func(s string) bool { return s != f[0] }) {
			t.Errorf("QEMU of %s runs as uids %q, want one ID of the range for all four", inst.ID(), uid)
		} else if n, _ := strconv.Atoi(f[0]); n < first || n >= first+16 {
			t.Errorf("QEMU of %s runs as uid %d, outside %d-%d", inst.ID(), n, first, first+15)
		}
		if gid := strings.Fields(status["Gid"]); len(gid) != 4 || gid[0] != f[0] {
			t.Errorf("QEMU of %s has gids %q, want its uid %s", inst.ID(), status["Gid"], f[0])
		}
		if g := status["Groups"]; strings.TrimSpace(g) != f[0] {
			t.Errorf("QEMU of %s has groups %q, want only %s", inst.ID(), g, f[0])
		}
		uids[f[0]] = true
		for _, k := range []string{"CapPrm", "CapEff", "CapInh", "CapAmb"} {
			if status[k] != "0000000000000000" {
				t.Errorf("QEMU of %s has %s %s, want none", inst.ID(), k, status[k])
			}
		}
		if status["NoNewPrivs"] != "1" || status["Seccomp"] != "2" {
			t.Errorf("QEMU of %s: NoNewPrivs %s, Seccomp %s; want 1 and 2 (filter)", inst.ID(), status["NoNewPrivs"], status["Seccomp"])
		}
		if dir, err := os.Readlink(fmt.Sprintf("/proc/%d/root", inst.Pid())); err != nil || dir != filepath.Join(root, vm.ChrootDirName) {
			t.Errorf("QEMU of %s has root %q (%v), want %s", inst.ID(), dir, err, filepath.Join(root, vm.ChrootDirName))
		}
	}
	if len(uids) != 2 {
		t.Errorf("the two VMs' QEMUs share a user: %v", uids)
	}
	if entries, err := os.ReadDir(filepath.Join(root, vm.ChrootDirName)); err != nil || len(entries) != 0 {
		t.Errorf("QEMU's root holds %v (%v), want nothing", entries, err)
	}

	// A writable disk plugged after QEMU switched user: the guest writes
	// to it and the host reads what it wrote.
	img := makeExt4(t, map[string]string{"hello.txt": "hello\n"})
	ctx := testContext(t)
	if err := a.AttachDisk(ctx, vm.Disk{ID: "rw1", Path: img}); err != nil {
		t.Fatal(err)
	}
	agent := a.Agent()
	if _, err := agent.MountBlock(ctx, &agentapi.MountBlockRequest{Serial: "rw1", Fstype: "ext4", Name: "rw", WaitMs: 20000}); err != nil {
		t.Fatal(err)
	}
	if got, err := agent.ReadFile(ctx, &agentapi.ReadFileRequest{Mount: "rw", Path: "hello.txt"}); err != nil || string(got.Data) != "hello\n" {
		t.Errorf("read %q, %v from the hot-plugged disk", got.GetData(), err)
	}
	if _, err := agent.UnmountBlock(ctx, &agentapi.UnmountBlockRequest{Name: "rw"}); err != nil {
		t.Fatal(err)
	}
	if err := a.DetachDisk(ctx, "rw1"); err != nil {
		t.Fatal(err)
	}
	// QEMU let go of the image: nothing of it is open in QEMU any more.
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", a.Pid()))
	for _, fd := range fds {
		if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", a.Pid(), fd.Name())); target == img {
			t.Errorf("QEMU still holds %s open as descriptor %s after the detach", img, fd.Name())
		}
	}
}

// procStatus reads /proc/<pid>/status as key → value.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}
