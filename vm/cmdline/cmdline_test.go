package cmdline

import (
	"slices"
	"strings"
	"testing"
)

func base() Machine {
	return Machine{
		Accel: TCG, CPUs: 1, MaxCPUs: 4, MemoryMiB: 512, MaxMemoryMiB: 2048, MemorySlots: 4,
		Kernel: "/k/vmlinux", Initrd: "/k/initrd", KernelCmdline: "console=ttyS0 quiet",
		ConsoleFD: 3, QMPSocket: "/run/x/qmp.sock", AgentSocket: "/run/x/agent.sock",
		AgentPortName: "org.test.0", Firmware: "/usr/share/qemu/qboot.rom",
	}
}

// pair reports whether flag is followed by value somewhere in args.
func pair(args []string, flag, value string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == value {
			return true
		}
	}
	return false
}

func TestArgs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		edit   func(*Machine)
		want   [][2]string
		absent []string
	}{
		{"tcg", func(m *Machine) {}, [][2]string{
			{"-machine", "q35,memory-backend=ram0"}, {"-accel", "tcg"}, {"-object", "memory-backend-ram,id=ram0,size=512M"},
			{"-device", "virtio-balloon-pci,id=balloon0,free-page-reporting=on"},
			{"-smp", "1,maxcpus=4,sockets=1,cores=4,threads=1"},
			{"-m", "512M,slots=4,maxmem=2048M"},
			{"-kernel", "/k/vmlinux"}, {"-initrd", "/k/initrd"}, {"-append", "console=ttyS0 quiet"},
			{"-bios", "/usr/share/qemu/qboot.rom"},
			{"-qmp", "unix:/run/x/qmp.sock,server=on,wait=off"},
			{"-chardev", "socket,id=console,fd=3"}, {"-serial", "chardev:console"},
			{"-chardev", "socket,id=agent,path=/run/x/agent.sock,server=on,wait=off"},
			{"-device", "virtserialport,chardev=agent,name=org.test.0"},
		}, []string{"-cpu", "-sandbox"}},
		{"kvm", func(m *Machine) { m.Accel = KVM }, [][2]string{{"-accel", "kvm"}, {"-cpu", "host"}}, nil},
		{"tcg cache", func(m *Machine) { m.TCGCacheMiB = 96 }, [][2]string{{"-accel", "tcg,tb-size=96"}}, nil},
		{"no tcg cache under kvm", func(m *Machine) { m.Accel, m.TCGCacheMiB = KVM, 96 }, [][2]string{{"-accel", "kvm"}}, nil},
		{"no hot-plug memory", func(m *Machine) { m.MaxMemoryMiB = 0 }, [][2]string{{"-m", "512M"}}, nil},
		{"vsock", func(m *Machine) { m.AgentSocket = ""; m.VsockCID = 7 }, [][2]string{{"-device", "vhost-vsock-pci,id=vsock0,guest-cid=7"}}, []string{"virtio-serial-pci,id=vser0,max_ports=2"}},
		{"disk", func(m *Machine) {
			m.Disks = []Disk{{ID: "d0", Serial: "root", Path: "/img/a,b.ext4", ReadOnly: true}}
		}, [][2]string{
			{"-blockdev", "driver=file,node-name=file-d0,filename=/img/a,,b.ext4,read-only=on,cache.direct=off"},
			{"-blockdev", "driver=raw,node-name=drv-d0,file=file-d0,read-only=on"},
			{"-device", "virtio-blk-pci,id=d0,drive=drv-d0,serial=root"},
		}, nil},
		{"nic", func(m *Machine) { m.NICs = []NIC{{ID: "eth0", FD: 4, MAC: "02:00:00:00:00:01"}} }, [][2]string{
			{"-netdev", "tap,id=net-eth0,fd=4"}, {"-device", "virtio-net-pci,id=eth0,netdev=net-eth0,mac=02:00:00:00:00:01"},
		}, nil},
		{"hotplug ports", func(m *Machine) { m.HotplugPorts = 2 }, [][2]string{
			{"-device", "pcie-root-port,id=hp0,chassis=1,slot=1"}, {"-device", "pcie-root-port,id=hp1,chassis=2,slot=2"},
		}, nil},
		{"virtio-fs", func(m *Machine) {
			m.SharedMemory, m.VirtiofsSocket, m.VirtiofsTag = true, "/run/vm/virtiofs.sock", "share"
		}, [][2]string{
			{"-machine", "q35,memory-backend=ram0"}, {"-object", "memory-backend-memfd,id=ram0,size=512M,share=on"},
			{"-chardev", "socket,id=virtiofs,path=/run/vm/virtiofs.sock"}, {"-device", "vhost-user-fs-pci,chardev=virtiofs,tag=share"},
		}, nil},
		// A VM saved or restored: its RAM in the host's memory file, all of
		// its memory shared, the state given later (migrate-incoming).
		{"memory file", func(m *Machine) { m.MemoryFD, m.VirtioMemMiB, m.IncomingDefer = 5, 1024, true }, [][2]string{
			{"-object", "memory-backend-file,id=ram0,size=512M,mem-path=/proc/self/fd/5,share=on"},
			{"-object", "memory-backend-memfd,id=vmem0,size=1024M,share=on"},
			{"-incoming", "defer"},
		}, nil},
		{"scsi controller", func(m *Machine) { m.SCSIController = true }, [][2]string{
			{"-device", "virtio-scsi-pci,id=scsi0"},
		}, nil},
		{"virtio-mem", func(m *Machine) { m.VirtioMemMiB = 1024 }, [][2]string{
			{"-object", "memory-backend-ram,id=vmem0,size=1024M"}, {"-device", "virtio-mem-pci,id=vmemdev0,memdev=vmem0,requested-size=0"},
		}, nil},
		{"operator qmp", func(m *Machine) { m.OperatorQMPSocket = "/run/x/ops.sock" }, [][2]string{{"-qmp", "unix:/run/x/ops.sock,server=on,wait=off"}, {"-qmp", "unix:/run/x/qmp.sock,server=on,wait=off"}}, nil},
		{"sandbox", func(m *Machine) { m.Sandbox = true }, [][2]string{{"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"}}, []string{"-runas", "-chroot"}},
		// QEMU switches user itself, after its filter is in place.
		{"own user", func(m *Machine) { m.Sandbox, m.RunAs, m.Chroot = true, "1500000007:1500000007", "/run/x/.qemu-root" }, [][2]string{
			{"-runas", "1500000007:1500000007"}, {"-chroot", "/run/x/.qemu-root"},
			{"-sandbox", "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"},
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := base()
			tc.edit(&m)
			args, err := m.Args()
			if err != nil {
				t.Fatal(err)
			}
			for _, flag := range []string{"-nodefaults", "-no-user-config", "-nographic", "-no-reboot"} {
				if !slices.Contains(args, flag) {
					t.Errorf("missing %s", flag)
				}
			}
			for _, w := range tc.want {
				if !pair(args, w[0], w[1]) {
					t.Errorf("missing %s %s in\n%s", w[0], w[1], strings.Join(args, " "))
				}
			}
			for _, a := range tc.absent {
				if slices.Contains(args, a) {
					t.Errorf("unexpected %s in %s", a, strings.Join(args, " "))
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		edit func(*Machine)
		want string
	}{
		{func(m *Machine) { m.Accel = "hvf" }, "accelerator"},
		{func(m *Machine) { m.CPUs = 0 }, "vCPUs 0"},
		{func(m *Machine) { m.MaxCPUs = 0 }, "max vCPUs"},
		{func(m *Machine) { m.MemoryMiB = 16 }, "memory 16 MiB"},
		{func(m *Machine) { m.TCGCacheMiB = -1 }, "translation cache"},
		{func(m *Machine) { m.MaxMemoryMiB = 256 }, "max memory"},
		{func(m *Machine) { m.MemorySlots = 0 }, "slot"},
		{func(m *Machine) { m.Kernel = "" }, "no kernel"},
		{func(m *Machine) { m.VsockCID = 5 }, "exactly one agent transport"},
		{func(m *Machine) { m.Disks = []Disk{{ID: "d", Path: "/x", Serial: strings.Repeat("s", 21)}} }, "20 characters"},
		{func(m *Machine) { m.Disks = []Disk{{ID: "d", Path: "/x", Format: "vmdk"}} }, "format"},
		{func(m *Machine) { m.RunAs = "5:5" }, "chroot"},
		{func(m *Machine) { m.MemoryFD = 2 }, "memory file descriptor 2"},
	} {
		m := base()
		tc.edit(&m)
		if _, err := m.Args(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want an error containing %q, got %v", tc.want, err)
		}
	}
}

func TestKernel(t *testing.T) {
	k := NewKernel(DefaultKernelParams...)
	k.Set("qemu_shim.transport", "serial")
	if err := k.Add("quiet", "panic=5", "maxcpus=2"); err != nil {
		t.Fatal(err)
	}
	want := "console=ttyS0 quiet panic=5 memhp_default_state=online_movable cryptomgr.notests swiotlb=noforce sysctl.kernel.hung_task_timeout_secs=20 qemu_shim.transport=serial maxcpus=2"
	if got := k.String(); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	for _, bad := range []string{"a b", "", `x="y"`} {
		if err := k.Add(bad); err == nil {
			t.Errorf("Add(%q) accepted", bad)
		}
	}
}
