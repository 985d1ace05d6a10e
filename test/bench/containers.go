package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
	"github.com/qemu-shim/qemu-shim/test/guestimage"
	"github.com/qemu-shim/qemu-shim/test/rig"
	"github.com/qemu-shim/qemu-shim/vm"
)

// containerLatencies measures, in one guest, create+start of `true` and an
// exec round trip (exec, start, wait of `true`) through the agent's task
// API, and the same with the same runc binary on the host.
func containerLatencies(work string, img guestimage.Image, runcPath string, runs int) (guestCreate, guestExec, hostCreate, hostExec []float64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	layer, err := rig.BusyboxLayer(work)
	if err != nil {
		return
	}
	inst, err := vm.New(vm.Config{ID: "bench-ctr", StateRoot: work, Kernel: img.Kernel, Initrd: img.Initrd, Tools: img.Tools,
		MemoryMiB: 512, Disks: []vm.Disk{{ID: rig.LayerSerial, Path: layer, ReadOnly: true}}})
	if err != nil {
		return
	}
	if err = inst.Start(ctx); err != nil {
		return
	}
	defer inst.Shutdown(ctx)
	r, err := rig.New(inst, work)
	if err != nil {
		return
	}
	defer r.Disconnect()

	// One untimed container first: runc's first start in a fresh guest is
	// slower (page cache), and every later one is what users see.
	if _, _, err = r.Run(ctx, "warm", "true"); err != nil {
		return
	}
	for i := 0; i < runs; i++ {
		id := "c" + strconv.Itoa(i)
		if err = r.AttachUpper(ctx, id); err != nil {
			return
		}
		start := time.Now()
		var p *rig.Proc
		if p, err = r.CreateAttached(ctx, id, []string{"true"}, rig.CreateOpts{}); err != nil {
			return
		}
		if err = r.Start(ctx, id, ""); err != nil {
			return
		}
		guestCreate = append(guestCreate, time.Since(start).Seconds())
		if _, err = r.Wait(ctx, id, ""); err != nil {
			return
		}
		<-p.OutEOF
		if err = r.Remove(ctx, id); err != nil {
			return
		}
	}
	if _, err = r.Create(ctx, "execs", []string{"sleep", "1000"}, rig.CreateOpts{}); err != nil {
		return
	}
	if err = r.Start(ctx, "execs", ""); err != nil {
		return
	}
	for i := 0; i <= runs; i++ {
		id := "e" + strconv.Itoa(i)
		start := time.Now()
		if err = r.Exec(ctx, "execs", id, nil, "true"); err != nil {
			return
		}
		if err = r.Start(ctx, "execs", id); err != nil {
			return
		}
		if _, err = r.Wait(ctx, "execs", id); err != nil {
			return
		}
		if i > 0 { // the first is a warm-up
			guestExec = append(guestExec, time.Since(start).Seconds())
		}
	}

	hostCreate, hostExec, err = hostRunc(ctx, work, runcPath, runs)
	return
}

// hostRunc is the baseline: the same runc on the host, same busybox rootfs.
func hostRunc(ctx context.Context, work, runcPath string, runs int) (create, execs []float64, err error) {
	bundle := filepath.Join(work, "host-bundle")
	if err = busybox.BusyboxRoot(filepath.Join(bundle, "rootfs")); err != nil {
		return
	}
	logFile := filepath.Join(work, "host-runc.log")
	r := &runc.Runc{Command: runcPath, Root: filepath.Join(work, "host-runc"), Log: logFile}
	writeSpec := func(id string, args ...string) error {
		spec, err := oci.GenerateSpec(namespaces.WithNamespace(ctx, "bench"), nil, &containers.Container{ID: id},
			oci.WithDefaultPathEnv, oci.WithProcessArgs(args...), oci.WithRootFSPath("rootfs"))
		if err != nil {
			return err
		}
		b, err := json.Marshal(spec)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600)
	}
	// go-runc closes a NullIO after each start: one per call.
	null := func() runc.IO {
		io, _ := runc.NewNullIO()
		return io
	}
	for i := 0; i <= runs; i++ {
		id := "host" + strconv.Itoa(i)
		if err = writeSpec(id, "true"); err != nil {
			return
		}
		start := time.Now()
		err = r.Create(ctx, id, bundle, &runc.CreateOpts{IO: null()})
		defer r.Delete(context.WithoutCancel(ctx), id, &runc.DeleteOpts{Force: true})
		if err != nil {
			b, _ := os.ReadFile(logFile)
			return nil, nil, fmt.Errorf("host runc create: %w: %s", err, b)
		}
		if err = r.Start(ctx, id); err != nil {
			return nil, nil, fmt.Errorf("host runc start: %w", err)
		}
		if i > 0 {
			create = append(create, time.Since(start).Seconds())
		}
	}
	if err = writeSpec("host-execs", "sleep", "1000"); err != nil {
		return
	}
	if err = r.Create(ctx, "host-execs", bundle, &runc.CreateOpts{IO: null()}); err != nil {
		return
	}
	defer r.Delete(context.WithoutCancel(ctx), "host-execs", &runc.DeleteOpts{Force: true})
	if err = r.Start(ctx, "host-execs"); err != nil {
		return
	}
	for i := 0; i <= runs; i++ {
		start := time.Now()
		if err = r.Exec(ctx, "host-execs", specs.Process{Args: []string{"true"}, Cwd: "/", Env: []string{"PATH=/bin"}}, &runc.ExecOpts{IO: null()}); err != nil {
			return nil, nil, fmt.Errorf("host runc exec: %w", err)
		}
		if i > 0 {
			execs = append(execs, time.Since(start).Seconds())
		}
	}
	return
}
