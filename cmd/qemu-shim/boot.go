package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/qemu-shim/qemu-shim/vm"
)

func boot(args []string) error {
	fs := flag.NewFlagSet("boot", flag.ExitOnError)
	guestDir := fs.String("guest-dir", defaultGuestDir(), "directory of the guest kernel and initramfs")
	cpus := fs.Int("cpus", 1, "vCPUs")
	mem := fs.Int("memory", 256, "memory in MiB")
	accel := fs.String("accel", "auto", "auto, kvm or tcg")
	hold := fs.Duration("hold", 0, "keep the VM running this long before shutting it down (to inspect it)")
	fs.Parse(args)

	inst, err := vm.New(vm.Config{
		ID:        "boot-" + strconv.Itoa(os.Getpid()),
		Kernel:    filepath.Join(*guestDir, "vmlinux"),
		Initrd:    filepath.Join(*guestDir, "initramfs.cpio"),
		Tools:     filepath.Join(*guestDir, "tools.erofs"),
		CPUs:      *cpus,
		MemoryMiB: *mem,
		Accel:     *accel,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute+*hold)
	defer cancel()
	start := time.Now()
	if err := inst.Start(ctx); err != nil {
		return err
	}
	ready := time.Since(start)
	defer inst.Shutdown(ctx)
	info, err := inst.Info(ctx)
	if err != nil {
		return err
	}
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Printf("VM %s up in %v (QEMU pid %d, accel %s, transport %s)\n", inst.ID(), ready.Round(time.Millisecond), inst.Pid(), inst.Accel(), inst.Transport())
	fmt.Printf("  guest kernel  %s (host: %s)\n", info.KernelRelease, string(host[:max(len(host)-1, 0)]))
	fmt.Printf("  vCPUs online  %d\n", info.CpusOnline)
	fmt.Printf("  memory        %d MiB\n", info.MemoryTotalBytes>>20)
	fmt.Printf("  guest uptime  %v\n", time.Duration(info.UptimeNs).Round(time.Millisecond))
	fmt.Printf("  agent         %s, %d kernel modules loaded\n", info.AgentVersion, len(info.ModulesLoaded))
	for _, s := range info.BootTimeline {
		fmt.Printf("  boot step     %-18s at %v\n", s.Name, time.Duration(s.AtNs).Round(time.Millisecond))
	}
	if *hold > 0 {
		fmt.Printf("holding the VM for %v (state directory %s)\n", *hold, inst.StateDir())
		select {
		case <-time.After(*hold):
		case <-inst.Done():
		}
	}
	start = time.Now()
	if err := inst.Shutdown(ctx); err != nil {
		return err
	}
	fmt.Printf("VM shut down in %v\n", time.Since(start).Round(time.Millisecond))
	return nil
}
