package vm

import (
	"context"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"unsafe"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/qemu-shim/qemu-shim/vm/cmdline"
)

// NIC is a network card backed by an existing tap device on the host (the
// way a CNI namespace is wired to a VM: veth + tap + tc redirect).
type NIC struct {
	// ID names the device in QEMU.
	ID string
	// Tap is the host tap device's name.
	Tap string
	// File, when set, is the tap already open (perhaps in another network
	// namespace, where Tap names nothing here); QEMU gets its own copy and
	// the caller keeps this one.
	File *os.File
	// MAC is the card's address; empty lets QEMU choose.
	MAC string
}

var validTapName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

func (n NIC) check() error {
	if !validDiskID.MatchString(n.ID) {
		return fmt.Errorf("nic id %q: want 1-20 letters, digits, '_' or '-': %w", n.ID, errdefs.ErrInvalidArgument)
	}
	if !validTapName.MatchString(n.Tap) && n.File == nil {
		return fmt.Errorf("nic %s: tap name %q: want 1-15 letters, digits, '_', '.' or '-': %w", n.ID, n.Tap, errdefs.ErrInvalidArgument)
	}
	if n.MAC != "" {
		if _, err := net.ParseMAC(n.MAC); err != nil {
			return fmt.Errorf("nic %s: mac %q: %v: %w", n.ID, n.MAC, err, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// openTap opens an existing tap device for QEMU.
func openTap(name string) (*os.File, error) {
	if _, err := os.Stat("/sys/class/net/" + name + "/tun_flags"); err != nil {
		return nil, fmt.Errorf("tap device %s does not exist: %w", name, errdefs.ErrNotFound)
	}
	return TapFile(name)
}

// TapFile opens the tap device called name in the calling thread's network
// namespace, making it if there is none, as QEMU wants it: no packet
// information, with virtio-net headers. A tap made here is not
// persistent: it lasts as long as a descriptor of it is open.
func TapFile(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	var req struct {
		name  [unix.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	copy(req.name[:], name)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: %w", name, errno)
	}
	return os.NewFile(uintptr(fd), "tap-"+name), nil
}

// AttachNIC hot-plugs a virtio-net card on an existing tap device. The tap
// is opened here and its descriptor handed to QEMU, which needs no
// privileges of its own for it.
func (i *Instance) AttachNIC(ctx context.Context, n NIC) error {
	if err := i.state.require(i.cfg.ID, "attach a network card", StateRunning); err != nil {
		return err
	}
	if err := n.check(); err != nil {
		return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
	}
	i.hp.mu.Lock()
	defer i.hp.mu.Unlock()
	if _, ok := i.hp.disks[n.ID]; ok || slices.Contains(i.hp.ports, n.ID) {
		return fmt.Errorf("vm %s: device %s: %w", i.cfg.ID, n.ID, errdefs.ErrAlreadyExists)
	}
	port := slices.Index(i.hp.ports, "")
	if port < 0 {
		return fmt.Errorf("vm %s: all %d hot-plug slots are in use: %w", i.cfg.ID, len(i.hp.ports), errdefs.ErrResourceExhausted)
	}
	tap := n.File
	if tap == nil {
		var err error
		if tap, err = openTap(n.Tap); err != nil {
			return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
		}
		defer tap.Close() // QEMU has its own copy once getfd returns
	}
	fd, netdev := "fd-"+n.ID, "net-"+n.ID
	if err := i.qmp.RunWithFile(ctx, "getfd", fdName{FDName: fd}, nil, tap); err != nil {
		return fmt.Errorf("vm %s: pass tap %s to QEMU: %w", i.cfg.ID, n.Tap, err)
	}
	undo := func(cmd string, args any) {
		if err := i.qmp.Run(context.WithoutCancel(ctx), cmd, args, nil); err != nil {
			log.G(ctx).WithError(err).WithField("command", cmd).Warn("undo after failed attach")
		}
	}
	if err := i.qmp.Run(ctx, "netdev_add", tapNetdevAdd{Type: "tap", ID: netdev, FD: fd}, nil); err != nil {
		undo("closefd", fdName{FDName: fd})
		return fmt.Errorf("vm %s: tap backend for %s: %w", i.cfg.ID, n.Tap, err)
	}
	dev := nicDeviceAdd{Driver: "virtio-net-pci", ID: n.ID, Netdev: netdev, Bus: cmdline.HotplugPortName(port), MAC: n.MAC}
	if err := i.qmp.Run(ctx, "device_add", dev, nil); err != nil {
		undo("netdev_del", netdevDel{ID: netdev})
		return fmt.Errorf("vm %s: plug network card %s: %w", i.cfg.ID, n.ID, err)
	}
	i.hp.ports[port] = n.ID
	return nil
}

// DetachNIC unplugs a card attached by AttachNIC and frees its tap.
func (i *Instance) DetachNIC(ctx context.Context, id string) error {
	if err := i.state.require(i.cfg.ID, "detach a network card", StateRunning); err != nil {
		return err
	}
	i.hp.mu.Lock()
	defer i.hp.mu.Unlock()
	port := slices.Index(i.hp.ports, id)
	if _, isDisk := i.hp.disks[id]; port < 0 || isDisk {
		return fmt.Errorf("vm %s: network card %s: %w", i.cfg.ID, id, errdefs.ErrNotFound)
	}
	if err := i.unplug(ctx, id); err != nil {
		return err
	}
	i.hp.ports[port] = ""
	if err := i.qmp.Run(ctx, "netdev_del", netdevDel{ID: "net-" + id}, nil); err != nil {
		return fmt.Errorf("vm %s: remove tap backend of %s: %w", i.cfg.ID, id, err)
	}
	return nil
}
