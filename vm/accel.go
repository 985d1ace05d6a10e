package vm

import (
	"bytes"
	"fmt"
	"os"

	"github.com/qemu-shim/qemu-shim/vm/cmdline"
)

// DetectAccel picks KVM when /dev/kvm opens and the CPU has hardware
// virtualisation, TCG otherwise, and says why. A /dev/kvm without vmx or
// svm (for example kvm-pvm inside another VM) cannot run our guest kernel:
// QEMU would start and then hang, so it counts as absent.
func DetectAccel() (cmdline.Accel, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return cmdline.TCG, fmt.Sprintf("KVM unavailable (%v): using TCG, expect slower VMs", err)
	}
	f.Close()
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	if err == nil && !hasVirtFlag(cpuinfo) {
		return cmdline.TCG, "/dev/kvm opens but the CPU has neither vmx nor svm (nested KVM such as kvm-pvm cannot run a stock guest kernel): using TCG"
	}
	return cmdline.KVM, "/dev/kvm is usable: using KVM"
}

func hasVirtFlag(cpuinfo []byte) bool {
	for _, line := range bytes.Split(cpuinfo, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("flags")) {
			continue
		}
		for _, f := range bytes.Fields(line) {
			if string(f) == "vmx" || string(f) == "svm" {
				return true
			}
		}
		return false
	}
	return false
}
