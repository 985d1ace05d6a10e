package blockdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Device is one virtio disk: virtio-blk (vd*) or a disk on the
// virtio-scsi controller (sd*).
type Device struct {
	Name, Serial string
	SizeBytes    uint64
	ReadOnly     bool
	// Major and Minor are the device's numbers in this kernel.
	Major, Minor int64
}

// Path is the device node.
func (d Device) Path() string { return filepath.Join("/dev", d.Name) }

// List returns the virtio disks the kernel sees.
func List(sysfs string) []Device {
	blk, _ := filepath.Glob(filepath.Join(sysfs, "block", "vd*"))
	scsi, _ := filepath.Glob(filepath.Join(sysfs, "block", "sd*"))
	var out []Device
	for _, d := range append(blk, scsi...) {
		serial := readTrim(filepath.Join(d, "serial"))
		if strings.HasPrefix(filepath.Base(d), "sd") {
			serial = scsiSerial(filepath.Join(d, "device", "vpd_pg80"))
		}
		dev := Device{Name: filepath.Base(d), Serial: serial}
		if sectors, err := strconv.ParseUint(readTrim(filepath.Join(d, "size")), 10, 64); err == nil {
			dev.SizeBytes = sectors * 512
		}
		dev.ReadOnly = readTrim(filepath.Join(d, "ro")) == "1"
		if maj, min, ok := strings.Cut(readTrim(filepath.Join(d, "dev")), ":"); ok {
			dev.Major, _ = strconv.ParseInt(maj, 10, 64)
			dev.Minor, _ = strconv.ParseInt(min, 10, 64)
		}
		out = append(out, dev)
	}
	return out
}

// Find returns the disk with this serial.
func Find(sysfs, serial string) (Device, bool) {
	for _, d := range List(sysfs) {
		if d.Serial == serial {
			return d, true
		}
	}
	return Device{}, false
}

// Wait waits up to wait for a (hot-plugged) disk to appear with its
// capacity known: a SCSI disk shows in sysfs (serial and all) before the
// kernel has read its capacity, and a mount then finds no superblock.
// While it waits it asks the SCSI controllers for new disks, and has the
// kernel query again a SCSI disk that shows no serial or no capacity (a
// command of its probe that failed, under load, is not retried by itself).
func Wait(ctx context.Context, sysfs, serial string, wait time.Duration) (Device, error) {
	if serial == "" || len(serial) > 20 {
		return Device{}, fmt.Errorf("disk serial %q: want 1-20 characters: %w", serial, errdefs.ErrInvalidArgument)
	}
	deadline := time.Now().Add(wait)
	var lastScan, lastRescan time.Time
	for {
		d, ok := Find(sysfs, serial)
		if ok && d.SizeBytes > 0 {
			return d, nil
		}
		if time.Now().After(deadline) {
			if ok {
				return Device{}, fmt.Errorf("disk %s with serial %q shows no capacity after %v: %w", d.Name, serial, wait, errdefs.ErrFailedPrecondition)
			}
			return Device{}, fmt.Errorf("no disk with serial %q after %v: %w", serial, wait, errdefs.ErrNotFound)
		}
		if !ok && time.Since(lastScan) >= scanEvery {
			ScanSCSI(sysfs)
			lastScan = time.Now()
		}
		if lastRescan.IsZero() {
			lastRescan = time.Now()
		} else if time.Since(lastRescan) >= rescanEvery {
			if ok {
				rescanDisk(sysfs, d.Name)
			} else {
				for _, other := range List(sysfs) {
					if other.Serial == "" {
						rescanDisk(sysfs, other.Name)
					}
				}
			}
			lastRescan = time.Now()
		}
		select {
		case <-ctx.Done():
			return Device{}, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// scanEvery spaces the scans of a wait; rescanEvery the queries of disks
// that show no serial or no capacity, which reach the device.
const (
	scanEvery   = 100 * time.Millisecond
	rescanEvery = time.Second
)

// rescanning holds the disks whose rescan is under way.
var rescanning sync.Map

// rescanDisk has the kernel read a SCSI disk's identity and capacity again,
// in the background: the write returns only when the device has answered
// (or its commands timed out, after up to 30 s each), while Wait goes on
// watching its context and deadline. One rescan of a disk at a time. A
// virtio-blk disk takes both from its configuration, which has no rescan.
func rescanDisk(sysfs, name string) {
	if !strings.HasPrefix(name, "sd") {
		return
	}
	path := filepath.Join(sysfs, "block", name, "device", "rescan")
	if _, busy := rescanning.LoadOrStore(path, true); busy {
		return
	}
	go func() {
		defer rescanning.Delete(path)
		os.WriteFile(path, []byte("1"), 0)
	}()
}

// ScanSCSI asks each virtio-scsi controller for the LUNs of its target 0,
// where the host plugs disks (one REPORT LUNS command; the LUNs known
// already cost nothing). The guest's scsi_mod loads with scan=manual, so
// nothing scans by itself: a disk the controller reported while its driver
// was not loaded yet, or whose report was lost, is found this way.
func ScanSCSI(sysfs string) {
	hosts, _ := filepath.Glob(filepath.Join(sysfs, "class", "scsi_host", "host*"))
	for _, h := range hosts {
		if readTrim(filepath.Join(h, "proc_name")) != "virtio_scsi" {
			continue
		}
		os.WriteFile(filepath.Join(h, "scan"), []byte("0 0 -"), 0)
	}
}

// scsiSerial reads a SCSI disk's unit serial number from its VPD page 0x80
// (a 4-byte header, the length in bytes 2-3, then the serial), which QEMU
// fills from the scsi-hd device's serial.
func scsiSerial(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) < 4 || b[1] != 0x80 {
		return ""
	}
	n := int(b[2])<<8 | int(b[3])
	if n > len(b)-4 {
		n = len(b) - 4
	}
	return strings.Trim(string(b[4:4+n]), " \x00")
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// einvalWait bounds the retries of a mount that found no superblock.
const einvalWait = 5 * time.Second

// Mount mounts a freshly plugged disk. The kernel shows a disk (in sysfs
// and /dev) a moment before it can be opened (device_add comes before the
// block device is registered): until then mount fails with ENXIO, and is
// tried again for up to wait. EINVAL (no valid superblock) is tried again
// for a short while too: it was seen once, under heavy load, on an erofs
// layer that mounted fine otherwise.
func Mount(ctx context.Context, dev, dir, fstype string, flags uintptr, data string, wait time.Duration) error {
	start := time.Now()
	deadline := start.Add(wait)
	for {
		err := unix.Mount(dev, dir, fstype, flags, data)
		retry := errors.Is(err, unix.ENXIO) || (errors.Is(err, unix.EINVAL) && time.Since(start) < einvalWait)
		if !retry || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}
