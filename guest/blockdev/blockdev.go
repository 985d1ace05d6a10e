package blockdev

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// Device is one virtio disk.
type Device struct {
	Name, Serial string
	SizeBytes    uint64
	ReadOnly     bool
}

// Path is the device node.
func (d Device) Path() string { return filepath.Join("/dev", d.Name) }

// List returns the virtio disks the kernel sees.
func List(sysfs string) []Device {
	dirs, _ := filepath.Glob(filepath.Join(sysfs, "block", "vd*"))
	var out []Device
	for _, d := range dirs {
		dev := Device{Name: filepath.Base(d), Serial: readTrim(filepath.Join(d, "serial"))}
		if sectors, err := strconv.ParseUint(readTrim(filepath.Join(d, "size")), 10, 64); err == nil {
			dev.SizeBytes = sectors * 512
		}
		dev.ReadOnly = readTrim(filepath.Join(d, "ro")) == "1"
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

// Wait waits up to wait for a (hot-plugged) disk to appear.
func Wait(ctx context.Context, sysfs, serial string, wait time.Duration) (Device, error) {
	if serial == "" || len(serial) > 20 {
		return Device{}, fmt.Errorf("disk serial %q: want 1-20 characters: %w", serial, errdefs.ErrInvalidArgument)
	}
	deadline := time.Now().Add(wait)
	for {
		if d, ok := Find(sysfs, serial); ok {
			return d, nil
		}
		if time.Now().After(deadline) {
			return Device{}, fmt.Errorf("no disk with serial %q after %v: %w", serial, wait, errdefs.ErrNotFound)
		}
		select {
		case <-ctx.Done():
			return Device{}, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
