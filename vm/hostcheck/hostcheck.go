package hostcheck

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/qemu-shim/qemu-shim/internal/transport"
	"github.com/qemu-shim/qemu-shim/vm"
	"github.com/qemu-shim/qemu-shim/vm/cmdline"
)

// Level grades a finding.
type Level string

const (
	OK   Level = "ok"
	Warn Level = "warn" // works, slower or with less
	Fail Level = "fail" // qemu-shim cannot run
)

// Result is one check.
type Result struct {
	Name   string
	Level  Level
	Detail string
	// Fix is one line saying what to do, when Level is not OK.
	Fix string
}

// Options say where to look.
type Options struct {
	QEMU     string
	GuestDir string
}

// Run performs every check.
func Run(o Options) []Result {
	if o.QEMU == "" {
		o.QEMU = "qemu-system-x86_64"
	}
	return []Result{kvm(), cpuShrink(), vhostVsock(), qemu(o.QEMU), confinement(o.QEMU), firmware(), virtiofsd(), guestImage(o.GuestDir), cgroup2()}
}

// confinement checks that QEMU can run with its seccomp filter and
// without capabilities, as VMs start only so by default.
func confinement(binary string) Result {
	if err := vm.CheckConfinement(binary); err != nil {
		return Result{Name: "qemu confinement", Level: Fail, Detail: err.Error(),
			Fix: "apt-get install qemu-system-x86 util-linux, run the shim as root (or set vm.allow_unconfined = true)"}
	}
	return Result{Name: "qemu confinement", Level: OK, Detail: "seccomp (-sandbox on), no capabilities (" + vm.Setpriv + "), " +
		"a user ID of its VM's own (vm.qemu_uid_first, vm.qemu_uid_count) chrooted into an empty directory"}
}

// virtiofsd checks for the daemon that shares bind mounts with the guest.
func virtiofsd() Result {
	if _, err := os.Stat(vm.DefaultVirtiofsd); err != nil {
		return Result{Name: "virtiofsd", Level: Warn, Detail: fmt.Sprintf("%s: %v: containers with bind mounts (and pods) cannot be created", vm.DefaultVirtiofsd, err),
			Fix: "apt-get install qemu-system-common (or run 'make deps')"}
	}
	return Result{Name: "virtiofsd", Level: OK, Detail: vm.DefaultVirtiofsd}
}

func kvm() Result {
	accel, why := vm.DetectAccel()
	if accel == cmdline.KVM {
		return Result{Name: "kvm", Level: OK, Detail: why}
	}
	return Result{Name: "kvm", Level: Warn, Detail: why,
		Fix: "VMs run under TCG (several times slower); on bare metal load kvm_intel or kvm_amd, in a VM enable nested virtualisation"}
}

// cpuShrink says how Update gives vCPUs back: ejected where QEMU survives
// it, offlined in the guest elsewhere.
func cpuShrink() Result {
	accel, _ := vm.DetectAccel()
	eject, why := vm.CPUEject(accel)
	if eject {
		return Result{Name: "vCPU shrink", Level: OK, Detail: why}
	}
	return Result{Name: "vCPU shrink", Level: Warn, Detail: why + " (the host keeps their slots)",
		Fix: "use KVM: there vCPUs are ejected"}
}

func vhostVsock() Result {
	k, why := transport.Resolve(transport.Auto)
	if k == transport.VSock {
		return Result{Name: "vhost-vsock", Level: OK, Detail: why}
	}
	return Result{Name: "vhost-vsock", Level: Warn, Detail: why + "; the agent is reached over virtio-serial instead",
		Fix: "modprobe vhost_vsock (needs a host kernel with CONFIG_VHOST_VSOCK)"}
}

func qemu(binary string) Result {
	path, err := exec.LookPath(binary)
	if err != nil {
		return Result{Name: "qemu", Level: Fail, Detail: err.Error(), Fix: "apt-get install qemu-system-x86 (or run 'make deps')"}
	}
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return Result{Name: "qemu", Level: Fail, Detail: fmt.Sprintf("%s --version: %v", path, err), Fix: "reinstall qemu-system-x86"}
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return Result{Name: "qemu", Level: OK, Detail: path + ": " + first}
}

func firmware() Result {
	if _, err := os.Stat(vm.DefaultFirmware); err != nil {
		return Result{Name: "firmware", Level: Warn, Detail: "no qboot (" + vm.DefaultFirmware + "): SeaBIOS boots slower",
			Fix: "apt-get install qemu-system-data"}
	}
	return Result{Name: "firmware", Level: OK, Detail: vm.DefaultFirmware}
}

func guestImage(dir string) Result {
	var missing []string
	for _, f := range []string{"vmlinux", "initramfs.cpio", "tools.erofs"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return Result{Name: "guest image", Level: Fail, Detail: fmt.Sprintf("%s lacks %s", dir, strings.Join(missing, " and ")),
			Fix: "run 'make guest' in the qemu-shim checkout"}
	}
	v, _ := os.ReadFile(filepath.Join(dir, "kernel-version"))
	return Result{Name: "guest image", Level: OK, Detail: fmt.Sprintf("%s (kernel %s)", dir, strings.TrimSpace(string(v)))}
}

func cgroup2() Result {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return Result{Name: "cgroup v2", Level: OK, Detail: "host uses the unified hierarchy"}
	}
	return Result{Name: "cgroup v2", Level: Warn, Detail: "host uses cgroup v1 (containers inside the guest always get cgroup v2)",
		Fix: "boot the host with systemd.unified_cgroup_hierarchy=1 for shim accounting under cgroup v2"}
}
