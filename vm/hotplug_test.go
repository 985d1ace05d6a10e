package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
	"github.com/qemu-shim/qemu-shim/vm/cmdline"
	"github.com/qemu-shim/qemu-shim/vm/qmp"
	"github.com/qemu-shim/qemu-shim/vm/qmp/qmptest"
)

// fakeAgent answers Info with what the test says the guest sees.
type fakeAgent struct {
	agentapi.AgentService // anything else panics

	mu        sync.Mutex
	cpus      uint32 // online
	present   uint32
	memBytes  uint64
	setOnline []uint32 // SetCPUsOnline counts asked
}

func (a *fakeAgent) Info(context.Context, *agentapi.InfoRequest) (*agentapi.InfoResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return &agentapi.InfoResponse{CpusOnline: a.cpus, MemoryTotalBytes: a.memBytes}, nil
}

// SetCPUsOnline onlines or offlines as the guest would, within present.
func (a *fakeAgent) SetCPUsOnline(_ context.Context, r *agentapi.SetCPUsOnlineRequest) (*agentapi.SetCPUsOnlineResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.setOnline = append(a.setOnline, r.Count)
	if r.Count > a.present {
		return nil, errdefs.ErrFailedPrecondition
	}
	a.cpus = r.Count
	return &agentapi.SetCPUsOnlineResponse{Online: a.cpus, Present: a.present}, nil
}

func (a *fakeAgent) update(f func(*fakeAgent)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(a)
}

// hotplugRig is a running Instance whose QEMU is a qmptest.Server and
// whose agent is a fakeAgent.
type hotplugRig struct {
	inst  *Instance
	qemu  *qmptest.Server
	agent *fakeAgent
	ctx   context.Context
}

func newHotplugRig(t *testing.T, cfg Config) *hotplugRig {
	t.Helper()
	cfg.ID = "hp"
	cfg.StateRoot = t.TempDir()
	cfg.setDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	r := &hotplugRig{qemu: qmptest.New(t), agent: &fakeAgent{cpus: uint32(cfg.CPUs), memBytes: uint64(cfg.MemoryMiB) << 20}, ctx: ctx}
	m, err := qmp.Connect(ctx, r.qemu.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	r.inst = &Instance{cfg: cfg, qmp: m, agent: r.agent}
	r.inst.hp.init(cfg)
	// add-fd answers with a new set for each descriptor, as QEMU does.
	fdset := 0
	r.qemu.Handle("add-fd", func(c qmptest.Call) qmptest.Reply {
		if c.FDs != 1 {
			return qmptest.Reply{Error: &qmptest.Error{Class: "GenericError", Desc: "No file descriptor supplied via SCM_RIGHTS"}}
		}
		fdset++
		return qmptest.Reply{Return: addFDResult{FDSetID: fdset, FD: 20 + fdset}}
	})
	r.qemu.Return("remove-fd", nil)
	for _, s := range []State{StateStarting, StateRunning} {
		if err := r.inst.state.transition(cfg.ID, "test", r.inst.state.get(), s); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// deletes makes device_del answer with DEVICE_DELETED, as a guest that
// lets go does, and run f first.
func (r *hotplugRig) deletes(f func(id string)) {
	r.qemu.Handle("device_del", func(c qmptest.Call) qmptest.Reply {
		var a deviceDel
		c.Decode(&a)
		if f != nil {
			f(a.ID)
		}
		return qmptest.Reply{Events: []qmptest.Event{{Name: "DEVICE_DELETED", Data: map[string]string{"device": a.ID}}}}
	})
}

func (r *hotplugRig) commands() string { return strings.Join(r.qemu.Commands(), " ") }

func intp(v int) *int { return &v }

// fakeCPUs is QEMU's side of vCPU hot-plug for 4 cores, core 0 booted;
// device_del of a vCPU answers as the guest does with ost (nil: QEMU 7.2's
// successful eject, no DEVICE_DELETED naming the vCPU).
type fakeCPUs struct {
	mu      sync.Mutex
	present map[int]string // core → qom-path
	plugged []cpuDeviceAdd
	deleted []string
}

func (r *hotplugRig) fakeCPUs(t *testing.T, ostStatus int) *fakeCPUs {
	f := &fakeCPUs{present: map[int]string{0: "/machine/unattached/device[0]"}}
	r.agent.update(func(a *fakeAgent) { a.present = 1 })
	r.qemu.Handle("query-hotpluggable-cpus", func(qmptest.Call) qmptest.Reply {
		f.mu.Lock()
		defer f.mu.Unlock()
		var slots []map[string]any
		for core := 3; core >= 0; core-- { // QEMU lists them descending
			s := map[string]any{"type": "qemu64-x86_64-cpu", "vcpus-count": 1,
				"props": map[string]int{"socket-id": 0, "core-id": core, "thread-id": 0}}
			if p := f.present[core]; p != "" {
				s["qom-path"] = p
			}
			slots = append(slots, s)
		}
		return qmptest.Reply{Return: slots}
	})
	r.qemu.Handle("device_add", func(c qmptest.Call) qmptest.Reply {
		var a cpuDeviceAdd
		if err := c.Decode(&a); err != nil {
			t.Error(err)
		}
		f.mu.Lock()
		f.present[*a.CoreID] = "/machine/peripheral/" + a.ID
		f.plugged = append(f.plugged, a)
		f.mu.Unlock()
		r.agent.update(func(a *fakeAgent) { a.cpus++; a.present++ })
		return qmptest.Reply{}
	})
	r.qemu.Handle("device_del", func(c qmptest.Call) qmptest.Reply {
		var a deviceDel
		c.Decode(&a)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.deleted = append(f.deleted, a.ID)
		core := -1
		for k, p := range f.present {
			if p == "/machine/peripheral/"+a.ID {
				core = k
			}
		}
		slot := fmt.Sprint(core)
		ost := func(status int, device bool) qmptest.Event {
			info := map[string]any{"slot": slot, "slot-type": "CPU", "source": 3, "status": status}
			if device {
				info["device"] = a.ID
			}
			return qmptest.Event{Name: "ACPI_DEVICE_OST", Data: map[string]any{"info": info}}
		}
		if ostStatus != 0 {
			return qmptest.Reply{Events: []qmptest.Event{ost(0x84, true), ost(ostStatus, true)}}
		}
		delete(f.present, core)
		r.agent.update(func(a *fakeAgent) { a.cpus--; a.present-- })
		return qmptest.Reply{Events: []qmptest.Event{
			ost(0x84, true),
			{Name: "DEVICE_DELETED", Data: map[string]string{"path": "/machine/peripheral/" + a.ID + "/lapic"}},
			ost(0, false),
		}}
	})
	return f
}

func (f *fakeCPUs) cores() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var c []int
	for k := range f.present {
		c = append(c, k)
	}
	slices.Sort(c)
	return c
}

func TestSetCPUsPlugsTheLowestFreeCores(t *testing.T) {
	r := newHotplugRig(t, Config{CPUs: 1, MaxCPUs: 4})
	f := r.fakeCPUs(t, 0)
	if err := r.inst.SetCPUs(r.ctx, 3); err != nil {
		t.Fatal(err)
	}
	want := []cpuDeviceAdd{
		{Driver: "qemu64-x86_64-cpu", ID: "cpu-1-1", SocketID: intp(0), CoreID: intp(1), ThreadID: intp(0)},
		{Driver: "qemu64-x86_64-cpu", ID: "cpu-2-2", SocketID: intp(0), CoreID: intp(2), ThreadID: intp(0)},
	}
	if len(f.plugged) != len(want) {
		t.Fatalf("plugged %+v", f.plugged)
	}
	for j := range want {
		if g, w := f.plugged[j], want[j]; g.Driver != w.Driver || g.ID != w.ID || *g.SocketID != 0 || *g.CoreID != *w.CoreID || *g.ThreadID != 0 || g.DieID != nil || g.NodeID != nil {
			t.Errorf("device_add %d: %+v, want %+v", j, g, w)
		}
	}
	if err := r.inst.SetCPUs(r.ctx, 5); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("past the maximum: %v", err)
	}
	if err := r.inst.SetCPUs(r.ctx, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("no vCPU at all: %v", err)
	}
}

// Under TCG a shrink offlines vCPUs in the guest and keeps them plugged; a
// grow onlines them again before it plugs more.
func TestSetCPUsShrinksByOffliningUnderTCG(t *testing.T) {
	r := newHotplugRig(t, Config{CPUs: 1, MaxCPUs: 4})
	r.inst.accel = cmdline.TCG
	f := r.fakeCPUs(t, 0)
	for _, n := range []int{3, 1, 2, 4} {
		if err := r.inst.SetCPUs(r.ctx, n); err != nil {
			t.Fatalf("SetCPUs(%d): %v", n, err)
		}
		if info, _ := r.agent.Info(r.ctx, nil); int(info.CpusOnline) != n {
			t.Fatalf("SetCPUs(%d): %d online", n, info.CpusOnline)
		}
	}
	if len(f.deleted) != 0 {
		t.Errorf("device_del of %v under TCG", f.deleted)
	}
	if got := r.agent.setOnline; !slices.Equal(got, []uint32{1, 2, 3}) {
		t.Errorf("SetCPUsOnline asked %v, want [1 2 3] (shrink to 1, grow to 2, all 3 back before plugging the 4th)", got)
	}
	if got := f.cores(); !slices.Equal(got, []int{0, 1, 2, 3}) {
		t.Errorf("cores %v plugged", got)
	}
}

// Under KVM a shrink ejects the highest hot-plugged cores, waiting for the
// guest's _OST; the next grow plugs the lowest free core again.
func TestSetCPUsShrinksByEjectingUnderKVM(t *testing.T) {
	r := newHotplugRig(t, Config{CPUs: 1, MaxCPUs: 4})
	r.inst.accel = cmdline.KVM
	f := r.fakeCPUs(t, 0)
	if err := r.inst.SetCPUs(r.ctx, 3); err != nil {
		t.Fatal(err)
	}
	if err := r.inst.SetCPUs(r.ctx, 1); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.deleted, []string{"cpu-2-2", "cpu-1-1"}) {
		t.Errorf("device_del %v, want the highest core first", f.deleted)
	}
	if got := f.cores(); !slices.Equal(got, []int{0}) {
		t.Errorf("cores %v left", got)
	}
	if len(r.inst.hp.cpus) != 0 {
		t.Errorf("hot-plugged vCPUs still recorded: %v", r.inst.hp.cpus)
	}
	if err := r.inst.SetCPUs(r.ctx, 2); err != nil {
		t.Fatal(err)
	}
	if got := f.cores(); !slices.Equal(got, []int{0, 1}) {
		t.Errorf("cores %v after growing again, want [0 1]", got)
	}
	if len(r.agent.setOnline) != 0 {
		t.Errorf("SetCPUsOnline %v under KVM", r.agent.setOnline)
	}
}

// A guest that cannot offline the vCPU says so by _OST: the error says so
// at once, not after the unplug timeout.
func TestSetCPUsEjectRefused(t *testing.T) {
	r := newHotplugRig(t, Config{CPUs: 1, MaxCPUs: 4})
	r.inst.accel = cmdline.KVM
	r.fakeCPUs(t, 0x82)
	if err := r.inst.SetCPUs(r.ctx, 2); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := r.inst.SetCPUs(r.ctx, 1)
	if err == nil || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), "0x82") {
		t.Errorf("refused eject: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("refusal took %v", time.Since(start))
	}
}

func TestSetCPUsRefusesUnknownTopology(t *testing.T) {
	r := newHotplugRig(t, Config{CPUs: 1, MaxCPUs: 2})
	r.qemu.Return("query-hotpluggable-cpus", []map[string]any{
		{"type": "qemu64-x86_64-cpu", "vcpus-count": 1, "props": map[string]int{"core-id": 1, "book-id": 0}},
		{"type": "qemu64-x86_64-cpu", "vcpus-count": 1, "props": map[string]int{"core-id": 0}, "qom-path": "/machine/cpu0"},
	})
	if err := r.inst.SetCPUs(r.ctx, 2); err == nil || !strings.Contains(err.Error(), "book-id") {
		t.Errorf("a topology member this code does not know: %v", err)
	}
	if got := r.commands(); got != "query-hotpluggable-cpus" {
		t.Errorf("sent %s", got)
	}
}

func testDisk(t *testing.T, dir, id string) Disk {
	p := filepath.Join(dir, id+".img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return Disk{ID: id, Path: p}
}

func TestAttachAndDetachDisks(t *testing.T) {
	dir := t.TempDir()
	r := newHotplugRig(t, Config{AllowedDiskRoots: []string{dir}})
	r.qemu.Return("blockdev-add", nil)
	r.qemu.Return("blockdev-del", nil)
	r.qemu.Return("device_add", nil)
	r.deletes(nil)

	a, b := testDisk(t, dir, "a"), testDisk(t, dir, "b")
	b.ReadOnly, b.Format = true, "qcow2"
	for _, d := range []Disk{a, b} {
		if err := r.inst.AttachDisk(r.ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.inst.AttachDisk(r.ctx, a); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("attaching a twice: %v", err)
	}
	calls := r.qemu.Calls()
	// QEMU opens each image from a descriptor the shim opened.
	if got := r.commands(); got != "add-fd blockdev-add blockdev-add device_add add-fd blockdev-add blockdev-add device_add" {
		t.Fatalf("sent %s", got)
	}
	var file, format blockdevAdd
	var dev scsiDiskAdd
	calls[5].Decode(&file)
	calls[6].Decode(&format)
	calls[7].Decode(&dev)
	if file != (blockdevAdd{Driver: "file", NodeName: "file-b", Filename: "/dev/fdset/2", ReadOnly: true}) {
		t.Errorf("file node %+v", file)
	}
	if format != (blockdevAdd{Driver: "qcow2", NodeName: "drv-b", File: "file-b", ReadOnly: true}) {
		t.Errorf("format node %+v", format)
	}
	if dev != (scsiDiskAdd{Driver: "scsi-hd", ID: "b", Drive: "drv-b", Serial: "b", Bus: "scsi0.0", SCSIID: 0, LUN: 2}) {
		t.Errorf("device %+v", dev)
	}

	// Detach: device_del, DEVICE_DELETED, then both nodes, newest first,
	// then the descriptor set.
	if err := r.inst.DetachDisk(r.ctx, "a"); err != nil {
		t.Fatal(err)
	}
	calls = r.qemu.Calls()[8:]
	var del deviceDel
	var n1, n2 blockdevDel
	var set removeFD
	calls[0].Decode(&del)
	calls[1].Decode(&n1)
	calls[2].Decode(&n2)
	calls[3].Decode(&set)
	if len(calls) != 4 || calls[0].Command != "device_del" || del.ID != "a" || n1.NodeName != "drv-a" || n2.NodeName != "file-a" || calls[3].Command != "remove-fd" || set.FDSetID != 1 {
		t.Errorf("detach sent %+v", calls)
	}
	if err := r.inst.DetachDisk(r.ctx, "a"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("detaching a twice: %v", err)
	}
	// a's LUN is free again.
	c := testDisk(t, dir, "c")
	if err := r.inst.AttachDisk(r.ctx, c); err != nil {
		t.Fatal(err)
	}
	calls = r.qemu.Calls()
	calls[len(calls)-1].Decode(&dev)
	if dev.ID != "c" || dev.SCSIID != 0 || dev.LUN != 1 {
		t.Errorf("c went to %+v", dev)
	}
}

func TestAttachDiskUndoesAFailedPlug(t *testing.T) {
	dir := t.TempDir()
	r := newHotplugRig(t, Config{AllowedDiskRoots: []string{dir}})
	r.qemu.Return("blockdev-add", nil)
	r.qemu.Return("blockdev-del", nil)
	r.qemu.Fail("device_add", "GenericError", "Bus 'scsi0.0' not found")
	if err := r.inst.AttachDisk(r.ctx, testDisk(t, dir, "a")); err == nil || !strings.Contains(err.Error(), "scsi0.0") {
		t.Fatalf("got %v", err)
	}
	calls := r.qemu.Calls()
	var n1, n2 blockdevDel
	calls[4].Decode(&n1)
	calls[5].Decode(&n2)
	if r.commands() != "add-fd blockdev-add blockdev-add device_add blockdev-del blockdev-del remove-fd" || n1.NodeName != "drv-a" || n2.NodeName != "file-a" {
		t.Errorf("sent %+v", calls)
	}
	if len(r.inst.hp.disks) != 0 || slices.ContainsFunc(r.inst.hp.luns, func(s string) bool { return s != "" }) {
		t.Error("a failed attach left the disk recorded")
	}
}

func TestDetachDiskTheGuestKeeps(t *testing.T) {
	dir := t.TempDir()
	r := newHotplugRig(t, Config{AllowedDiskRoots: []string{dir}})
	old := unplugTimeout
	unplugTimeout = 100 * time.Millisecond
	t.Cleanup(func() { unplugTimeout = old })
	r.qemu.Return("blockdev-add", nil)
	r.qemu.Return("device_add", nil)
	r.qemu.Return("device_del", nil) // and no DEVICE_DELETED
	if err := r.inst.AttachDisk(r.ctx, testDisk(t, dir, "a")); err != nil {
		t.Fatal(err)
	}
	// Another device's deletion is not this one's.
	r.qemu.Handle("device_del", func(qmptest.Call) qmptest.Reply {
		return qmptest.Reply{Events: []qmptest.Event{{Name: "DEVICE_DELETED", Data: map[string]string{"device": "other"}}}}
	})
	err := r.inst.DetachDisk(r.ctx, "a")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "did not release a") {
		t.Fatalf("got %v", err)
	}
	if _, ok := r.inst.hp.disks["a"]; !ok {
		t.Error("a disk the guest did not release was forgotten")
	}
	if strings.Contains(r.commands(), "blockdev-del") {
		t.Error("closed the image of a disk the guest still has")
	}
}

// memoryGuest makes QEMU's DIMM commands change what the fake guest sees.
func memoryGuest(t *testing.T, r *hotplugRig) {
	var mu sync.Mutex
	sizes := map[string]uint64{} // backend → bytes
	dimms := map[string]string{} // dimm → backend
	r.qemu.Handle("object-add", func(c qmptest.Call) qmptest.Reply {
		var a memoryBackendAdd
		if err := c.Decode(&a); err != nil {
			t.Error(err)
		}
		mu.Lock()
		sizes[a.ID] = a.Size
		mu.Unlock()
		return qmptest.Reply{}
	})
	r.qemu.Handle("device_add", func(c qmptest.Call) qmptest.Reply {
		var a dimmDeviceAdd
		c.Decode(&a)
		mu.Lock()
		dimms[a.ID] = a.Memdev
		size := sizes[a.Memdev]
		mu.Unlock()
		r.agent.update(func(g *fakeAgent) { g.memBytes += size })
		return qmptest.Reply{}
	})
	r.deletes(func(id string) {
		mu.Lock()
		size := sizes[dimms[id]]
		mu.Unlock()
		r.agent.update(func(g *fakeAgent) { g.memBytes -= size })
	})
	r.qemu.Return("object-del", nil)
}

func TestAddAndRemoveMemory(t *testing.T) {
	r := newHotplugRig(t, Config{MemoryMiB: 256, MaxMemoryMiB: 1024, MemorySlots: 2, Share: &Share{}})
	memoryGuest(t, r)
	if err := r.inst.AddMemory(r.ctx, 100); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("100 MiB: %v", err)
	}
	if err := r.inst.AddMemory(r.ctx, 256); err != nil {
		t.Fatal(err)
	}
	calls := r.qemu.Calls()
	var obj memoryBackendAdd
	var dev dimmDeviceAdd
	calls[0].Decode(&obj)
	calls[1].Decode(&dev)
	if obj != (memoryBackendAdd{QOMType: "memory-backend-memfd", ID: "mem-dimm1", Size: 256 << 20, Share: true}) {
		t.Errorf("backend %+v", obj)
	}
	if dev != (dimmDeviceAdd{Driver: "pc-dimm", ID: "dimm1", Memdev: "mem-dimm1"}) {
		t.Errorf("dimm %+v", dev)
	}
	if got := r.inst.MemoryMiB(); got != 512 {
		t.Errorf("MemoryMiB %d after adding 256 to 256", got)
	}
	if err := r.inst.AddMemory(r.ctx, 768); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("past the maximum: %v", err)
	}
	if err := r.inst.AddMemory(r.ctx, 128); err != nil {
		t.Fatal(err)
	}
	if err := r.inst.AddMemory(r.ctx, 128); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Errorf("a third DIMM in two slots: %v", err)
	}
	size, err := r.inst.RemoveMemory(r.ctx)
	if err != nil || size != 128 {
		t.Fatalf("remove: %d, %v", size, err)
	}
	calls = r.qemu.Calls()
	var del deviceDel
	var odel objectDel
	calls[len(calls)-2].Decode(&del)
	calls[len(calls)-1].Decode(&odel)
	if del.ID != "dimm2" || odel.ID != "mem-dimm2" {
		t.Errorf("removed %+v, %+v", del, odel)
	}
}

func TestSetMemoryReplacesADIMMLargerThanTheExcess(t *testing.T) {
	r := newHotplugRig(t, Config{MemoryMiB: 256, MaxMemoryMiB: 2048, MemorySlots: 4})
	memoryGuest(t, r)
	if err := r.inst.SetMemory(r.ctx, 256+512); err != nil {
		t.Fatal(err)
	}
	before := len(r.qemu.Calls())
	// 384 MiB too many, in one 512 MiB DIMM: plug 128, then unplug the 512.
	if err := r.inst.SetMemory(r.ctx, 256+128); err != nil {
		t.Fatal(err)
	}
	calls := r.qemu.Calls()[before:]
	var names []string
	for _, c := range calls {
		names = append(names, c.Command)
	}
	if strings.Join(names, " ") != "object-add device_add device_del object-del" {
		t.Fatalf("sent %v", names)
	}
	var obj memoryBackendAdd
	var del deviceDel
	calls[0].Decode(&obj)
	calls[2].Decode(&del)
	if obj.Size != 128<<20 || del.ID != "dimm1" {
		t.Errorf("plugged %d MiB, unplugged %s", obj.Size>>20, del.ID)
	}
	if got := r.inst.MemoryMiB(); got != 384 {
		t.Errorf("MemoryMiB %d, want 384", got)
	}
	r.agent.mu.Lock()
	defer r.agent.mu.Unlock()
	if r.agent.memBytes != 384<<20 {
		t.Errorf("the guest has %d MiB", r.agent.memBytes>>20)
	}
}

func TestVirtioMemWaitsForTheGuest(t *testing.T) {
	r := newHotplugRig(t, Config{MemoryMiB: 256, VirtioMemMiB: 512, MaxMemoryMiB: 1024})
	var mu sync.Mutex
	var requested, size uint64
	r.qemu.Handle("qom-set", func(c qmptest.Call) qmptest.Reply {
		var a qomSetSize
		c.Decode(&a)
		if a.Path != virtioMemPath || a.Property != "requested-size" {
			t.Errorf("qom-set %+v", a)
		}
		mu.Lock()
		requested = a.Value
		mu.Unlock()
		return qmptest.Reply{}
	})
	// The guest takes the memory in 64 MiB steps, one per poll.
	r.qemu.Handle("qom-get", func(c qmptest.Call) qmptest.Reply {
		mu.Lock()
		defer mu.Unlock()
		if size < requested {
			size = min(size+64<<20, requested)
		}
		return qmptest.Reply{Return: size}
	})
	if err := r.inst.SetMemory(r.ctx, 256+301); err != nil {
		t.Fatal(err)
	}
	if requested != 302<<20 {
		t.Errorf("asked for %d MiB, want 301 rounded up to 302", requested>>20)
	}
	if got := r.inst.MemoryMiB(); got != 256+302 {
		t.Errorf("MemoryMiB %d", got)
	}
	if err := r.inst.SetMemory(r.ctx, 256+1024); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("past the virtio-mem device: %v", err)
	}
}

func TestAttachNICPassesTheTap(t *testing.T) {
	r := newHotplugRig(t, Config{HotplugPorts: 2})
	for _, c := range []string{"getfd", "netdev_add", "device_add", "netdev_del"} {
		r.qemu.Return(c, nil)
	}
	r.deletes(nil)
	tap, err := os.Open(os.DevNull) // stands in for the tap
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	if err := r.inst.AttachNIC(r.ctx, NIC{ID: "net0", File: tap, MAC: "02:00:00:00:00:01"}); err != nil {
		t.Fatal(err)
	}
	calls := r.qemu.Calls()
	var fd fdName
	var nd tapNetdevAdd
	var dev nicDeviceAdd
	calls[0].Decode(&fd)
	calls[1].Decode(&nd)
	calls[2].Decode(&dev)
	if calls[0].FDs != 1 || fd.FDName != "fd-net0" {
		t.Errorf("getfd %+v with %d descriptors", fd, calls[0].FDs)
	}
	if nd != (tapNetdevAdd{Type: "tap", ID: "net-net0", FD: "fd-net0"}) {
		t.Errorf("netdev %+v", nd)
	}
	if dev != (nicDeviceAdd{Driver: "virtio-net-pci", ID: "net0", Netdev: "net-net0", Bus: "hp0", MAC: "02:00:00:00:00:01"}) {
		t.Errorf("device %+v", dev)
	}
	if err := r.inst.DetachNIC(r.ctx, "net0"); err != nil {
		t.Fatal(err)
	}
	if got := r.commands(); got != "getfd netdev_add device_add device_del netdev_del" {
		t.Errorf("sent %s", got)
	}
}
