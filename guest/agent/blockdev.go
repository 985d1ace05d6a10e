package agent

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	api "github.com/qemu-shim/qemu-shim/task/agent/v1"
)

// blockDevices lists the virtio disks the guest kernel sees.
func blockDevices(sysfs string) []*api.BlockDevice {
	dirs, _ := filepath.Glob(filepath.Join(sysfs, "block", "vd*"))
	var out []*api.BlockDevice
	for _, d := range dirs {
		dev := &api.BlockDevice{Name: filepath.Base(d), Serial: readTrim(filepath.Join(d, "serial"))}
		if sectors, err := strconv.ParseUint(readTrim(filepath.Join(d, "size")), 10, 64); err == nil {
			dev.SizeBytes = sectors * 512
		}
		dev.ReadOnly = readTrim(filepath.Join(d, "ro")) == "1"
		out = append(out, dev)
	}
	return out
}

// deviceBySerial finds a disk's /dev path from the serial the host gave it.
func deviceBySerial(sysfs, serial string) (string, bool) {
	for _, d := range blockDevices(sysfs) {
		if d.Serial == serial {
			return filepath.Join("/dev", d.Name), true
		}
	}
	return "", false
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
