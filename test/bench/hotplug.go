package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containerd/errdefs"

	"github.com/qemu-shim/qemu-shim/test/guestimage"
	"github.com/qemu-shim/qemu-shim/vm"
)

// hotplugSection times what Update and an operator's disk attach cost in
// a running VM: a vCPU plugged and onlined, given back, and a disk
// attached (seen by the guest) and detached.
func hotplugSection(work string, img guestimage.Image, runs int) error {
	inst, err := vm.New(vm.Config{ID: "hotplug", StateRoot: work, Kernel: img.Kernel, Initrd: img.Initrd, Tools: img.Tools, CPUs: 1, MaxCPUs: 4})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := inst.Start(ctx); err != nil {
		return err
	}
	defer inst.Shutdown(ctx)
	disk := filepath.Join(work, "bench-disk.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", disk, "16M").CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %v: %s", err, out)
	}
	defer os.Remove(disk)
	var grow, shrink, attach, detach []float64
	shrinkErr := error(nil)
	for i := 0; i < runs; i++ {
		start := time.Now()
		if err := inst.SetCPUs(ctx, 2); err != nil {
			return fmt.Errorf("grow to 2 vCPUs: %w", err)
		}
		grow = append(grow, time.Since(start).Seconds())
		start = time.Now()
		if err := inst.SetCPUs(ctx, 1); err != nil {
			if !errdefs.IsNotImplemented(err) {
				return fmt.Errorf("shrink to 1 vCPU: %w", err)
			}
			shrinkErr = err
			break // the vCPU stays: later grows have nothing to plug
		}
		shrink = append(shrink, time.Since(start).Seconds())
	}
	for i := 0; i < runs; i++ {
		id := "b" + strconv.Itoa(i)
		start := time.Now()
		if err := inst.AttachDisk(ctx, vm.Disk{ID: id, Path: disk, ReadOnly: true}); err != nil {
			return fmt.Errorf("attach disk: %w", err)
		}
		attach = append(attach, time.Since(start).Seconds())
		start = time.Now()
		if err := inst.DetachDisk(ctx, id); err != nil {
			return fmt.Errorf("detach disk: %w", err)
		}
		detach = append(detach, time.Since(start).Seconds())
	}
	row("vCPU grow 1 → 2, online in the guest (s)", grow)
	if len(shrink) > 0 {
		row("vCPU shrink 2 → 1 (s)", shrink)
		_, how := vm.CPUEject(inst.Accel())
		fmt.Printf("  (%s)\n", how)
	} else if shrinkErr != nil {
		fmt.Printf("%-44s %s\n", "vCPU shrink", "not supported: "+shrinkErr.Error())
	}
	row("disk attach (blockdev-add + device_add) (s)", attach)
	row("disk detach (DEVICE_DELETED) (s)", detach)
	return nil
}
