// Package network wires a container's host-side network namespace (the one
// CNI configured) to its VM: beside each interface of the namespace it
// makes a tap device in that same namespace and redirects each one's
// ingress to the other's egress with tc (tc-redirect-tap, as Kata and
// firecracker-containerd do), so the guest's card, given the interface's
// MAC, addresses and routes, stands in for the interface. The taps never
// live in the host's own namespace.
package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/qemu-shim/qemu-shim/internal/nsthread"
	"github.com/qemu-shim/qemu-shim/vm"
)

// TapPrefix starts the names of the taps this package makes.
const TapPrefix = "qstap"

// maxInterfaces bounds how many interfaces of a namespace are wired.
const maxInterfaces = 8

// Route is a route of an interface, in the guest's terms.
type Route struct {
	// Dst is the destination; not valid for a default route.
	Dst     netip.Prefix
	Gateway netip.Addr
	Src     netip.Addr
	Metric  int
	// IPv6 tells a default route's family.
	IPv6 bool
}

// Endpoint is one interface of the namespace wired to a tap.
type Endpoint struct {
	// Name is the interface's name (eth0), which the guest gives its card.
	Name   string
	MAC    net.HardwareAddr
	MTU    int
	Addrs  []netip.Prefix
	Routes []Route
	// Tap is the open tap device for QEMU. The tap exists as long as a
	// descriptor of it is open: once QEMU has its copy, closing this one
	// leaves the tap to live and die with QEMU.
	Tap     *os.File
	TapName string
	link    int // the interface's index
}

// Namespace is a wired network namespace.
type Namespace struct {
	Path      string
	Endpoints []*Endpoint
}

// Wire wires every interface of the namespace at path except lo and taps
// made here before, and reports each with its configuration. The
// interfaces are left as CNI made them. On error nothing is left behind.
func Wire(path string) (_ *Namespace, retErr error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", path, notFound(err))
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("links of %s: %w", path, err)
	}
	n := &Namespace{Path: path}
	defer func() {
		if retErr != nil {
			n.unwire(h)
		}
	}()
	taps := 0
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || isOurTap(a.Name) || l.Type() == "tuntap" {
			continue
		}
		if len(n.Endpoints) == maxInterfaces {
			return n, fmt.Errorf("network namespace %s has more than %d interfaces: %w", path, maxInterfaces, errdefs.ErrResourceExhausted)
		}
		if len(a.HardwareAddr) != 6 {
			return n, fmt.Errorf("interface %s in %s is not Ethernet (%s): %w", a.Name, path, l.Type(), errdefs.ErrNotImplemented)
		}
		ep := &Endpoint{Name: a.Name, MAC: a.HardwareAddr, MTU: a.MTU, link: a.Index, TapName: TapPrefix + strconv.Itoa(taps)}
		taps++
		if ep.Addrs, ep.Routes, err = config(h, l); err != nil {
			return n, fmt.Errorf("interface %s in %s: %w", a.Name, path, err)
		}
		if ep.Tap, err = createTap(ns, ep.TapName); err != nil {
			return n, fmt.Errorf("tap beside %s in %s: %w", a.Name, path, err)
		}
		n.Endpoints = append(n.Endpoints, ep)
		if err := redirect(h, ep); err != nil {
			return n, fmt.Errorf("redirect %s and %s in %s: %w", a.Name, ep.TapName, path, err)
		}
	}
	return n, nil
}

// Unwire removes what Wire made: the taps (once QEMU has let go of them)
// and the ingress qdiscs with their filters. A namespace already gone
// (CNI deleted it) has nothing left to remove.
func (n *Namespace) Unwire() error {
	ns, err := netns.GetFromPath(n.Path)
	if err != nil {
		n.closeTaps()
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("network namespace %s: %w", n.Path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		n.closeTaps()
		return fmt.Errorf("netlink in %s: %w", n.Path, err)
	}
	defer h.Close()
	return n.unwire(h)
}

func (n *Namespace) closeTaps() {
	for _, ep := range n.Endpoints {
		if ep.Tap != nil {
			ep.Tap.Close()
			ep.Tap = nil
		}
	}
}

func (n *Namespace) unwire(h *netlink.Handle) error {
	n.closeTaps()
	var errs []error
	for _, ep := range n.Endpoints {
		if l, err := h.LinkByIndex(ep.link); err == nil {
			if err := delIngress(h, l); err != nil {
				errs = append(errs, fmt.Errorf("ingress qdisc of %s: %w", ep.Name, err))
			}
		}
		// A tap QEMU still holds goes when QEMU does; one nobody holds is
		// gone already. A persistent one (never made here) is removed.
		if l, err := h.LinkByName(ep.TapName); err == nil {
			if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("tap %s: %w", ep.TapName, err))
			}
		}
	}
	return errors.Join(errs...)
}

func isOurTap(name string) bool {
	_, err := strconv.Atoi(name[min(len(name), len(TapPrefix)):])
	return len(name) > len(TapPrefix) && name[:len(TapPrefix)] == TapPrefix && err == nil
}

func notFound(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%v: %w", err, errdefs.ErrNotFound)
	}
	return err
}

// config reads an interface's addresses and routes as the guest needs
// them: link-local IPv6 addresses (the guest makes its own from the same
// MAC) and the routes the kernel made from addresses are left out.
func config(h *netlink.Handle, l netlink.Link) ([]netip.Prefix, []Route, error) {
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, nil, fmt.Errorf("addresses: %w", err)
	}
	var prefixes []netip.Prefix
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() && a.IP.To4() == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		prefixes = append(prefixes, netip.PrefixFrom(ip.Unmap(), ones))
	}
	routes, err := h.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, nil, fmt.Errorf("routes: %w", err)
	}
	var out []Route
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL || r.Table != unix.RT_TABLE_MAIN || r.Type != unix.RTN_UNICAST {
			continue
		}
		var rt Route
		if r.Dst != nil {
			ip, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			rt.Dst = netip.PrefixFrom(ip.Unmap(), ones)
			if rt.Dst.Bits() == 0 {
				rt.Dst = netip.Prefix{}
			}
		}
		if r.Gw != nil {
			rt.Gateway, _ = netip.AddrFromSlice(r.Gw)
			rt.Gateway = rt.Gateway.Unmap()
		}
		if r.Src != nil {
			rt.Src, _ = netip.AddrFromSlice(r.Src)
			rt.Src = rt.Src.Unmap()
		}
		if rt.Dst.IsValid() && rt.Dst.Addr().Is6() && rt.Dst.Addr().IsLinkLocalUnicast() {
			continue
		}
		rt.Metric = r.Priority
		rt.IPv6 = r.Family == unix.AF_INET6
		out = append(out, rt)
	}
	return prefixes, out, nil
}

// createTap makes a tap device (no packet information, with virtio-net
// headers, as QEMU wants it) inside ns and returns it open. It is not
// persistent: it lasts as long as an open descriptor of it.
func createTap(ns netns.NsHandle, name string) (*os.File, error) {
	var tap *os.File
	err := nsthread.Do(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter network namespace: %w", err)
		}
		var err error
		tap, err = vm.TapFile(name)
		return err
	})
	return tap, err
}

// redirect gives the tap the interface's MTU, brings it up and sends each
// one's ingress out of the other.
func redirect(h *netlink.Handle, ep *Endpoint) error {
	tap, err := h.LinkByName(ep.TapName)
	if err != nil {
		return err
	}
	iface, err := h.LinkByIndex(ep.link)
	if err != nil {
		return err
	}
	if err := h.LinkSetMTU(tap, ep.MTU); err != nil {
		return fmt.Errorf("tap MTU %d: %w", ep.MTU, err)
	}
	if err := h.LinkSetUp(tap); err != nil {
		return fmt.Errorf("tap up: %w", err)
	}
	for _, pair := range [][2]netlink.Link{{iface, tap}, {tap, iface}} {
		from, to := pair[0], pair[1]
		if err := h.QdiscReplace(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: from.Attrs().Index, Parent: netlink.HANDLE_INGRESS, Handle: netlink.MakeHandle(0xffff, 0),
		}}); err != nil {
			return fmt.Errorf("ingress qdisc on %s: %w", from.Attrs().Name, err)
		}
		filter := &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: from.Attrs().Index, Parent: netlink.MakeHandle(0xffff, 0), Protocol: unix.ETH_P_ALL, Priority: 1,
			},
			Actions: []netlink.Action{netlink.NewMirredAction(to.Attrs().Index)},
		}
		if err := h.FilterAdd(filter); err != nil {
			return fmt.Errorf("redirect %s to %s: %w", from.Attrs().Name, to.Attrs().Name, err)
		}
	}
	return nil
}

func delIngress(h *netlink.Handle, l netlink.Link) error {
	qdiscs, err := h.QdiscList(l)
	if err != nil {
		return err
	}
	for _, q := range qdiscs {
		if q.Type() == "ingress" {
			if err := h.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
				return err
			}
		}
	}
	return nil
}
