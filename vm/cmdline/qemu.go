package cmdline

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Accel is a QEMU accelerator.
type Accel string

const (
	KVM Accel = "kvm"
	TCG Accel = "tcg"
)

// Disk is a block device present at boot.
type Disk struct {
	// ID names the QEMU objects; Serial is what the guest finds it by.
	ID, Serial string
	Path       string
	// Format is "raw" (the default) or "qcow2".
	Format   string
	ReadOnly bool
}

// NIC is a network card present at boot, backed by an open tap device that
// QEMU inherits as file descriptor FD.
type NIC struct {
	ID  string
	FD  int
	MAC string
}

// Machine describes one VM's QEMU command line.
type Machine struct {
	Accel    Accel
	Firmware string
	// CPUs at boot, and the most hot-plug may reach.
	CPUs, MaxCPUs int
	// Memory at boot and the most hot-plug may reach, with the number of
	// DIMM slots for it.
	MemoryMiB, MaxMemoryMiB, MemorySlots int
	// VirtioMemMiB, when set, adds a virtio-mem device of that size
	// (requested size 0) for fine-grained memory hot-plug.
	VirtioMemMiB int
	// TCGCacheMiB bounds TCG's translation cache (tb-size); 0 leaves
	// QEMU's default (1 GiB, or an eighth of the host's memory if less),
	// which an idle guest fills with code it no longer runs. KVM has none.
	TCGCacheMiB int

	Kernel, Initrd, KernelCmdline string

	// ConsoleFD, when set, is an inherited descriptor of a connected
	// stream socket that the guest's serial console (ttyS0) is written to;
	// whoever holds the other end bounds what it keeps.
	ConsoleFD int
	QMPSocket string
	// OperatorQMPSocket, when set, is a second QMP monitor for operators'
	// tools, so that they never take the driver's.
	OperatorQMPSocket string
	PidFile           string

	// The agent's transport: a virtio-serial port on AgentSocket (a Unix
	// socket QEMU listens on), or vhost-vsock with VsockCID.
	AgentSocket, AgentPortName string
	VsockCID                   uint32

	Disks []Disk
	NICs  []NIC
	// HotplugPorts PCIe root ports are left free for hot-plugged devices
	// (network cards), named HotplugPortName(i).
	HotplugPorts int
	// SCSIController adds a virtio-scsi controller (ScsiControllerID) for
	// hot-plugged disks: one PCI device holds up to ScsiTargets disks, so
	// the number of disks is not bounded by the root ports.
	SCSIController bool
	// SharedMemory puts the guest's RAM (and hot-plugged memory) in
	// shared memory (memfd, share=on), as vhost-user devices need.
	SharedMemory bool
	// VirtiofsSocket, when set, adds a vhost-user-fs device on virtiofsd's
	// socket, which the guest mounts by VirtiofsTag.
	VirtiofsSocket, VirtiofsTag string
	// Sandbox turns on QEMU's seccomp filter.
	Sandbox bool
	// RunAs ("uid:gid"), when set, is the user QEMU switches to once it
	// has opened what the command line names, after chrooting into
	// Chroot. It must start as root to do so.
	RunAs, Chroot string
	// MemoryFD, when set, is an inherited descriptor of the file that holds
	// the guest's RAM (shared with the host, so that the host can save it
	// or fill it from a saved copy). Saved and restored states then leave
	// all guest memory out of the migration stream (see IgnoreShared).
	MemoryFD int
	// IncomingDefer starts QEMU waiting for a saved state to restore
	// instead of booting: migrate-incoming gives it the stream.
	IncomingDefer bool
}

// IgnoreShared is the migration capability that leaves shared guest
// memory out of the stream: a VM whose RAM is in a MemoryFD file saves and
// restores that file beside the stream.
const IgnoreShared = "x-ignore-shared"

// MemoryBackend is the QEMU object type of guest memory: shared memory
// (memfd, to be given share=on) when vhost-user devices need it.
func MemoryBackend(shared bool) string {
	if shared {
		return "memory-backend-memfd"
	}
	return "memory-backend-ram"
}

// BalloonID is the virtio-balloon device's id. It is there for free page
// reporting only: nothing inflates it.
const BalloonID = "balloon0"

// ScsiControllerID is the virtio-scsi controller's device id; its bus is
// ScsiControllerID + ".0".
const ScsiControllerID = "scsi0"

// ScsiTargets is how many disks the controller holds (LUNs 1-256 of its
// target 0, see vm.AttachDisk).
const ScsiTargets = 256

// HotplugPortName names the i-th PCIe root port kept for hot-plug.
func HotplugPortName(i int) string { return "hp" + strconv.Itoa(i) }

// Validate reports the first thing wrong with m.
func (m *Machine) Validate() error {
	switch {
	case m.Accel != KVM && m.Accel != TCG:
		return fmt.Errorf("accelerator %q: want %q or %q", m.Accel, KVM, TCG)
	case m.CPUs < 1:
		return fmt.Errorf("vCPUs %d: want at least 1", m.CPUs)
	case m.MaxCPUs < m.CPUs:
		return fmt.Errorf("max vCPUs %d is below the %d at boot", m.MaxCPUs, m.CPUs)
	case m.MaxCPUs > 255:
		return fmt.Errorf("max vCPUs %d: at most 255", m.MaxCPUs)
	case m.TCGCacheMiB < 0:
		return fmt.Errorf("TCG translation cache %d MiB: want 0 (QEMU's default) or more", m.TCGCacheMiB)
	case m.MemoryMiB < 64:
		return fmt.Errorf("memory %d MiB: want at least 64", m.MemoryMiB)
	case m.MaxMemoryMiB != 0 && m.MaxMemoryMiB < m.MemoryMiB+m.VirtioMemMiB:
		return fmt.Errorf("max memory %d MiB is below the %d MiB at boot (with %d MiB virtio-mem)", m.MaxMemoryMiB, m.MemoryMiB, m.VirtioMemMiB)
	case m.MaxMemoryMiB > m.MemoryMiB && m.MemorySlots < 1:
		return errors.New("memory hot-plug needs at least one slot")
	case m.Kernel == "":
		return errors.New("no kernel")
	case m.VirtiofsSocket != "" && !m.sharedMemory():
		return errors.New("virtio-fs needs the guest's memory shared")
	case m.ConsoleFD < 0 || m.ConsoleFD > 0 && m.ConsoleFD < 3:
		return fmt.Errorf("console descriptor %d: want an inherited one (3 or more)", m.ConsoleFD)
	case m.MemoryFD < 0 || m.MemoryFD > 0 && m.MemoryFD < 3:
		return fmt.Errorf("memory file descriptor %d: want an inherited one (3 or more)", m.MemoryFD)
	case m.QMPSocket == "":
		return errors.New("no QMP socket")
	case (m.AgentSocket == "") == (m.VsockCID == 0):
		return errors.New("exactly one agent transport (a serial socket or a vsock CID) is needed")
	case m.VsockCID != 0 && m.VsockCID < 3:
		return fmt.Errorf("vsock CID %d is reserved", m.VsockCID)
	case (m.RunAs == "") != (m.Chroot == ""):
		return errors.New("a user to run as needs a directory to chroot into, and the other way round")
	}
	for _, d := range m.Disks {
		if d.ID == "" || d.Path == "" {
			return fmt.Errorf("disk %+v: needs an ID and a path", d)
		}
		if len(d.Serial) > 20 {
			return fmt.Errorf("disk %s: serial %q is longer than the 20 characters QEMU keeps", d.ID, d.Serial)
		}
		if d.Format != "" && d.Format != "raw" && d.Format != "qcow2" {
			return fmt.Errorf("disk %s: format %q: want raw or qcow2", d.ID, d.Format)
		}
	}
	return nil
}

// Args returns QEMU's arguments (without the binary).
func (m *Machine) Args() ([]string, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	// The guest's RAM is always the named backend ram0, shared or not:
	// the migration stream names it, so a state saved from a VM with one
	// kind can be restored into a VM with the other (see vm.ShapeKey).
	machine := "q35,memory-backend=ram0"
	a := []string{
		"-name", "qemu-shim",
		"-machine", machine,
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-accel", m.accelOpts(),
	}
	if m.Accel == KVM {
		a = append(a, "-cpu", "host")
	}
	if m.Firmware != "" {
		a = append(a, "-bios", m.Firmware)
	}
	a = append(a, "-smp", fmt.Sprintf("%d,maxcpus=%d,sockets=1,cores=%d,threads=1", m.CPUs, m.MaxCPUs, m.MaxCPUs))
	mem := fmt.Sprintf("%dM", m.MemoryMiB)
	if m.MaxMemoryMiB > m.MemoryMiB {
		mem += fmt.Sprintf(",slots=%d,maxmem=%dM", m.MemorySlots, m.MaxMemoryMiB)
	}
	a = append(a, "-m", mem)
	switch {
	case m.MemoryFD != 0:
		// QEMU opens the file before it chroots: its own descriptor's
		// name then reaches the file the host gave it.
		a = append(a, "-object", fmt.Sprintf("memory-backend-file,id=ram0,size=%dM,mem-path=/proc/self/fd/%d,share=on", m.MemoryMiB, m.MemoryFD))
	case m.SharedMemory:
		a = append(a, "-object", fmt.Sprintf("memory-backend-memfd,id=ram0,size=%dM,share=on", m.MemoryMiB))
	default:
		a = append(a, "-object", fmt.Sprintf("memory-backend-ram,id=ram0,size=%dM", m.MemoryMiB))
	}
	if m.VirtioMemMiB > 0 {
		a = append(a,
			"-object", fmt.Sprintf("%s,id=vmem0,size=%dM%s", MemoryBackend(m.sharedMemory()), m.VirtioMemMiB, map[bool]string{true: ",share=on"}[m.sharedMemory()]),
			"-device", "virtio-mem-pci,id=vmemdev0,memdev=vmem0,requested-size=0")
	}
	a = append(a, "-kernel", m.Kernel)
	if m.Initrd != "" {
		a = append(a, "-initrd", m.Initrd)
	}
	if m.KernelCmdline != "" {
		a = append(a, "-append", m.KernelCmdline)
	}
	if m.ConsoleFD != 0 {
		a = append(a, "-chardev", fmt.Sprintf("socket,id=console,fd=%d", m.ConsoleFD), "-serial", "chardev:console")
	} else {
		a = append(a, "-serial", "none")
	}
	a = append(a, "-qmp", "unix:"+escape(m.QMPSocket)+",server=on,wait=off")
	if m.OperatorQMPSocket != "" {
		a = append(a, "-qmp", "unix:"+escape(m.OperatorQMPSocket)+",server=on,wait=off")
	}
	if m.PidFile != "" {
		a = append(a, "-pidfile", m.PidFile)
	}
	// Free page reporting: the guest hands back the memory it frees, which
	// QEMU then discards. The device is always there, first (its address
	// does not depend on the others), and never inflated.
	a = append(a, "-device", "virtio-balloon-pci,id="+BalloonID+",free-page-reporting=on")
	if m.AgentSocket != "" {
		name := m.AgentPortName
		if name == "" {
			name = "agent"
		}
		a = append(a,
			"-device", "virtio-serial-pci,id=vser0,max_ports=2",
			"-chardev", "socket,id=agent,path="+escape(m.AgentSocket)+",server=on,wait=off",
			"-device", "virtserialport,chardev=agent,name="+name)
	} else {
		a = append(a, "-device", fmt.Sprintf("vhost-vsock-pci,id=vsock0,guest-cid=%d", m.VsockCID))
	}
	for _, d := range m.Disks {
		format := d.Format
		if format == "" {
			format = "raw"
		}
		ro := "off"
		if d.ReadOnly {
			ro = "on"
		}
		a = append(a,
			"-blockdev", fmt.Sprintf("driver=file,node-name=file-%s,filename=%s,read-only=%s,cache.direct=off", d.ID, escape(d.Path), ro),
			"-blockdev", fmt.Sprintf("driver=%s,node-name=drv-%s,file=file-%s,read-only=%s", format, d.ID, d.ID, ro),
			"-device", fmt.Sprintf("virtio-blk-pci,id=%s,drive=drv-%s,serial=%s", d.ID, d.ID, d.Serial))
	}
	for _, n := range m.NICs {
		dev := fmt.Sprintf("virtio-net-pci,id=%s,netdev=net-%s", n.ID, n.ID)
		if n.MAC != "" {
			dev += ",mac=" + n.MAC
		}
		a = append(a, "-netdev", fmt.Sprintf("tap,id=net-%s,fd=%d", n.ID, n.FD), "-device", dev)
	}
	if m.SCSIController {
		a = append(a, "-device", "virtio-scsi-pci,id="+ScsiControllerID)
	}
	if m.VirtiofsSocket != "" {
		a = append(a,
			"-chardev", "socket,id=virtiofs,path="+escape(m.VirtiofsSocket),
			"-device", "vhost-user-fs-pci,chardev=virtiofs,tag="+escape(m.VirtiofsTag))
	}
	for i := 0; i < m.HotplugPorts; i++ {
		a = append(a, "-device", fmt.Sprintf("pcie-root-port,id=%s,chassis=%d,slot=%d", HotplugPortName(i), i+1, i+1))
	}
	if m.IncomingDefer {
		a = append(a, "-incoming", "defer")
	}
	if m.RunAs != "" {
		a = append(a, "-runas", m.RunAs, "-chroot", m.Chroot)
	}
	if m.Sandbox {
		// The filter is in place before QEMU switches user, so it must let
		// QEMU call setuid and setgid when it will. Once it has switched,
		// QEMU holds no capability and cannot gain one (no_new_privs), so
		// those calls can no longer raise it.
		elevate := "deny"
		if m.RunAs != "" {
			elevate = "allow"
		}
		a = append(a, "-sandbox", "on,obsolete=deny,elevateprivileges="+elevate+",spawn=deny,resourcecontrol=deny")
	}
	return a, nil
}

// sharedMemory says whether all guest memory is shared with the host: a
// VM whose RAM is in a MemoryFD file has its other memory shared too, so
// that none of it is in a saved state's stream.
func (m *Machine) sharedMemory() bool { return m.SharedMemory || m.MemoryFD != 0 }

// accelOpts is the -accel option: the accelerator and its settings.
func (m *Machine) accelOpts() string {
	if m.Accel == TCG && m.TCGCacheMiB > 0 {
		return fmt.Sprintf("tcg,tb-size=%d", m.TCGCacheMiB)
	}
	return string(m.Accel)
}

// escape doubles commas, QEMU's escape inside an option value.
func escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }
