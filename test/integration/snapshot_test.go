package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
	"github.com/qemu-shim/qemu-shim/test/guestimage"
	"github.com/qemu-shim/qemu-shim/test/rig"
	"github.com/qemu-shim/qemu-shim/vm"
	"github.com/qemu-shim/qemu-shim/vm/cmdline"
	"github.com/qemu-shim/qemu-shim/vm/template"
)

// TestSnapshotRestore saves a booted guest and restores two VMs from it:
// each answers, draws its own random numbers, has its own boot_id and the
// host's clock, can still hot-plug vCPUs and memory, runs a container and
// powers off cleanly.
func TestSnapshotRestore(t *testing.T) {
	t.Parallel()
	guestimage.Require(t)
	ctx := testContext(t)
	// Debug: the clones' warm-up says in the console log when it is done.
	tmpl := bootVM(t, func(c *vm.Config) { c.ForTemplate, c.Debug = true, true })
	saved := t.TempDir()
	begin := time.Now()
	if err := tmpl.SaveState(ctx, saved); err != nil {
		t.Fatal(err)
	}
	t.Logf("saved in %v", time.Since(begin))
	if err := tmpl.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(saved, vm.SavedStateName)); err != nil || st.Size() == 0 {
		t.Fatalf("state file: %v, %v", st, err)
	}
	// The saved memory holds what the guest wrote, not its whole RAM.
	memSize, memData := fileBlocks(t, filepath.Join(saved, vm.SavedMemoryName))
	if memSize != int64(tmpl.MemoryMiB())<<20 || memData == 0 || memData > memSize/2 {
		t.Fatalf("saved memory: %d bytes of data in a file of %d, for a guest of %d MiB", memData, memSize, tmpl.MemoryMiB())
	}
	t.Logf("saved memory: %d MiB of data", memData>>20)

	dir := t.TempDir()
	layer, err := rig.BusyboxLayer(dir)
	if err != nil {
		t.Fatal(err)
	}
	type clone struct{ random, bootID, clock string }
	clones := make([]clone, 2)
	var wg sync.WaitGroup
	for n := range clones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			began := time.Now()
			inst := bootVM(t, func(c *vm.Config) {
				c.SharedMemory = n == 1
				c.ID += "-" + strconv.Itoa(n)
				c.Restore = saved
				c.AllowedDiskRoots = []string{dir}
				c.Debug, c.WarmUp = true, true
			})
			t.Logf("clone %d: restored and adopted in %v", n, time.Since(began))
			if !inst.Restored() {
				t.Errorf("clone %d does not say it was restored", n)
			}
			// Restoring fills the clone's memory with the saved pages only:
			// its QEMU holds about that much of the guest's RAM, not all.
			if shmem := rssShmem(t, inst.Pid()); shmem > memData+32<<20 {
				t.Errorf("clone %d: QEMU holds %d MiB of guest memory after the restore, the template saved %d MiB", n, shmem>>20, memData>>20)
			}
			if err := inst.AttachDisk(ctx, vm.Disk{ID: rig.LayerSerial, Path: layer, ReadOnly: true}); err != nil {
				t.Error(err)
				return
			}
			r, err := rig.New(inst, dir)
			if err != nil {
				t.Error(err)
				return
			}
			defer r.Disconnect()
			id := "c" + strconv.Itoa(n)
			status, out, err := r.Run(ctx, id, "sh", "-c",
				"head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /proc/sys/kernel/random/boot_id; date +%s")
			if err != nil || status != 0 {
				t.Errorf("clone %d: container: status %d, %v: %s", n, status, err, out)
				return
			}
			lines := strings.Fields(out)
			if len(lines) != 3 {
				t.Errorf("clone %d: output %q", n, out)
				return
			}
			clones[n] = clone{random: lines[0], bootID: lines[1], clock: lines[2]}
			// Under TCG the clone warmed its container path up with a
			// container of its own, deleted once this one had started.
			if inst.Accel() == cmdline.TCG {
				if err := waitConsole(ctx, inst, `msg="warmed up"`); err != nil {
					t.Errorf("clone %d: %v", n, err)
				}
			}
			if n == 0 {
				if err := inst.SetCPUs(ctx, 2); err != nil {
					t.Errorf("clone %d: vCPU hot-plug: %v", n, err)
				}
				if err := inst.SetMemory(ctx, inst.MemoryMiB()+256); err != nil {
					t.Errorf("clone %d: memory hot-plug: %v", n, err)
				}
				info, err := inst.Info(ctx)
				if err != nil || info.CpusOnline != 2 {
					t.Errorf("clone %d after hot-plug: %v, %v", n, info, err)
				}
				// The guest powers itself off (the host's Shutdown does not
				// wait for that once the guest has synced).
				if _, err := inst.Agent().Shutdown(ctx, &agentapi.ShutdownRequest{}); err != nil {
					t.Errorf("clone %d: shut down: %v", n, err)
				}
				select {
				case <-inst.Done():
					if st := inst.ExitStatus(); st != "exit status 0" {
						t.Errorf("clone %d: QEMU ended with %q, want a clean power-off", n, st)
					}
				case <-ctx.Done():
					t.Errorf("clone %d: the guest did not power off: %v", n, ctx.Err())
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("clones: %+v", clones)
	if clones[0].random == clones[1].random {
		t.Errorf("both clones drew %s from /dev/urandom", clones[0].random)
	}
	if clones[0].bootID == clones[1].bootID {
		t.Errorf("both clones have boot_id %s", clones[0].bootID)
	}
	for n, c := range clones {
		sec, err := strconv.ParseInt(c.clock, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(time.Unix(sec, 0)); d < -5*time.Second || d > time.Minute {
			t.Errorf("clone %d: guest clock %s is %v off the host's", n, time.Unix(sec, 0), d)
		}
	}
}

// TestSnapshotKeyAndRefusals checks what a template must share with the VMs
// restored from it, and what cannot be saved.
func TestSnapshotKeyAndRefusals(t *testing.T) {
	img := guestimage.Require(t)
	base := vm.Config{ID: "k", StateRoot: t.TempDir(), Kernel: img.Kernel, Initrd: img.Initrd, Tools: img.Tools, Transport: "serial"}
	key := func(c vm.Config) string {
		t.Helper()
		k, err := vm.ShapeKey(c)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k0 := key(base)
	other := base
	other.ID, other.StateRoot, other.Share, other.Restore, other.SharedMemory = "other", t.TempDir(), &vm.Share{}, "/somewhere/state", true
	if key(other) != k0 {
		t.Error("the key depends on the VM's name, state root, share, restore source or kind of memory")
	}
	for name, edit := range map[string]func(*vm.Config){
		"cpus":          func(c *vm.Config) { c.CPUs = 2 },
		"memory":        func(c *vm.Config) { c.MemoryMiB = 512 },
		"kernel params": func(c *vm.Config) { c.KernelParams = []string{"qemu_shim.test=1"} },
		"debug":         func(c *vm.Config) { c.Debug = true },
	} {
		c := base
		edit(&c)
		if key(c) == k0 {
			t.Errorf("changing %s keeps the key", name)
		}
	}
	// A rewritten input file changes the key.
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	b, err := os.ReadFile(img.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kernel, b, 0o644); err != nil {
		t.Fatal(err)
	}
	c := base
	c.Kernel = kernel
	k1 := key(c)
	later := time.Now().Add(time.Minute)
	os.Chtimes(kernel, later, later)
	if key(c) == k1 {
		t.Error("a kernel touched since keeps the key")
	}
	for name, edit := range map[string]func(*vm.Config){
		"boot disk": func(c *vm.Config) { c.Disks = []vm.Disk{{ID: "d", Path: img.Tools}} },
	} {
		c := base
		edit(&c)
		if _, err := vm.ShapeKey(c); err == nil {
			t.Errorf("%s: a key for a VM that cannot be a template", name)
		}
	}
}

// TestTemplateStore: shims asking for the same template at once build it
// once; a build a dead builder left is pruned; a removed template is gone.
func TestTemplateStore(t *testing.T) {
	t.Parallel()
	img := guestimage.Require(t)
	ctx := testContext(t)
	store := &template.Store{Dir: t.TempDir()}
	cfg := vm.Config{ID: "t", StateRoot: t.TempDir(), Kernel: img.Kernel, Initrd: img.Initrd, Tools: img.Tools, BootTimeout: 90 * time.Second}
	// What a builder killed mid-way leaves.
	key, err := vm.ShapeKey(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(store.Dir, ".build-"+key+"-dead"), 0o700); err != nil {
		t.Fatal(err)
	}
	states := make([]string, 3)
	var wg sync.WaitGroup
	for n := range states {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := store.Get(ctx, cfg)
			if err != nil {
				t.Error(err)
			}
			states[n] = s
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if states[0] != states[1] || states[1] != states[2] {
		t.Errorf("three shims got %v", states)
	}
	list, err := store.List()
	if err != nil || len(list) != 1 || list[0].Key != key {
		t.Fatalf("templates: %+v, %v: want the one for key %s", list, err, key)
	}
	entries, _ := os.ReadDir(store.Dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".build-") {
			t.Errorf("left in the store: %s", e.Name())
		}
	}
	if err := store.Remove(key); err != nil {
		t.Fatal(err)
	}
	if list, _ := store.List(); len(list) != 0 {
		t.Errorf("after rm: %+v", list)
	}
	if err := store.Remove("../etc"); err == nil {
		t.Error("removed a template named ../etc")
	}
}

// fileBlocks returns a file's size and how much of it is allocated.
func fileBlocks(t *testing.T, path string) (size, data int64) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Size, st.Blocks * 512
}

// rssShmem is the shared memory a process has resident (RssShmem).
func rssShmem(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "RssShmem:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kib << 10
		}
	}
	t.Fatalf("/proc/%d/status has no RssShmem", pid)
	return 0
}

// waitConsole waits until the VM's console log holds want; a warm-up that
// failed (its warning) ends the wait at once.
func waitConsole(ctx context.Context, inst *vm.Instance, want string) error {
	path := filepath.Join(inst.StateDir(), "console.log")
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return nil
		}
		if i := strings.Index(string(b), "msg=warm-up"); i >= 0 {
			return fmt.Errorf("console log: %s", strings.SplitN(string(b[i:]), "\n", 2)[0])
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("console log never said %s: %w", want, ctx.Err())
		case <-tick.C:
		}
	}
}
