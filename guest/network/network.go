// Package network gives the guest's containers their network: one network
// namespace of the VM's own (not the guest's root namespace), shared by
// every container that asks for a network namespace, holding lo and the
// cards the host wired to the container's host-side namespace, each
// configured with what CNI gave the interface it stands in for. It serves
// the host's qemushim.network.v1 API.
package network

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
	api "github.com/qemu-shim/qemu-shim/api/network/v1"
	"github.com/qemu-shim/qemu-shim/internal/nsthread"
)

// NamespacePath is where the VM's container network namespace is mounted.
const NamespacePath = agentapi.ContainerNetnsPath

// Bounds on what the host may ask.
const (
	maxAddresses = 16
	maxRoutes    = 64
	cardWait     = 20 * time.Second
)

var validName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

// Service configures the VM's container network namespace.
type Service struct {
	// Path is where the namespace is mounted (NamespacePath).
	Path string

	once    sync.Once
	onceErr error
	mu      sync.Mutex // one configuration at a time
}

var _ api.NetworkService = (*Service)(nil)

// Namespace returns the path of the VM's container network namespace,
// making it (with lo up) the first time.
func (s *Service) Namespace() (string, error) {
	s.once.Do(func() { s.onceErr = create(s.Path) })
	return s.Path, s.onceErr
}

// create makes a network namespace mounted at path, with lo up.
func create(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return nsthread.NewNetNamespace(path, func() error {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			return fmt.Errorf("lo up in the container network namespace: %w", err)
		}
		return nil
	})
}

// Interface is a validated request.
type Interface struct {
	Name   string
	MAC    net.HardwareAddr
	MTU    int
	Addrs  []netip.Prefix
	Routes []Route
}

// Route is a validated route.
type Route struct {
	Dst     netip.Prefix // not valid: default route
	Gateway netip.Addr
	Src     netip.Addr
	Metric  int
}

// Parse validates a request from the (untrusted) host.
func Parse(r *api.ConfigureInterfaceRequest) (Interface, error) {
	bad := func(format string, args ...any) (Interface, error) {
		return Interface{}, fmt.Errorf("interface %q: "+format+": %w", append(append([]any{r.Name}, args...), errdefs.ErrInvalidArgument)...)
	}
	if !validName.MatchString(r.Name) || r.Name == "lo" {
		return bad("want a name of 1-15 letters, digits, '_', '.' or '-', not lo")
	}
	mac, err := net.ParseMAC(r.Mac)
	if err != nil || len(mac) != 6 {
		return bad("mac %q: want an Ethernet address", r.Mac)
	}
	if r.Mtu < 68 || r.Mtu > 65535 {
		return bad("mtu %d: want 68-65535", r.Mtu)
	}
	if len(r.Addresses) > maxAddresses || len(r.Routes) > maxRoutes {
		return bad("%d addresses and %d routes: at most %d and %d", len(r.Addresses), len(r.Routes), maxAddresses, maxRoutes)
	}
	in := Interface{Name: r.Name, MAC: mac, MTU: int(r.Mtu)}
	for _, a := range r.Addresses {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return bad("address %q: %v", a, err)
		}
		in.Addrs = append(in.Addrs, p)
	}
	for _, rt := range r.Routes {
		var out Route
		if rt.Destination != "" {
			if out.Dst, err = netip.ParsePrefix(rt.Destination); err != nil {
				return bad("route destination %q: %v", rt.Destination, err)
			}
			out.Dst = out.Dst.Masked()
		}
		if rt.Gateway != "" {
			if out.Gateway, err = netip.ParseAddr(rt.Gateway); err != nil {
				return bad("route gateway %q: %v", rt.Gateway, err)
			}
		}
		if rt.Source != "" {
			if out.Src, err = netip.ParseAddr(rt.Source); err != nil {
				return bad("route source %q: %v", rt.Source, err)
			}
		}
		if !out.Dst.IsValid() && !out.Gateway.IsValid() {
			return bad("a default route needs a gateway")
		}
		if out.Dst.IsValid() && out.Gateway.IsValid() && out.Dst.Addr().Is4() != out.Gateway.Is4() {
			return bad("route to %s via %s mixes address families", out.Dst, out.Gateway)
		}
		out.Metric = int(rt.Metric)
		in.Routes = append(in.Routes, out)
	}
	return in, nil
}

// ConfigureInterface moves the card with the request's MAC into the
// container namespace and configures it.
func (s *Service) ConfigureInterface(ctx context.Context, r *api.ConfigureInterfaceRequest) (*api.ConfigureInterfaceResponse, error) {
	in, err := Parse(r)
	if err != nil {
		return nil, err
	}
	path, err := s.Namespace()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ns, h, err := handleAt(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	defer h.Close()
	link, err := waitCard(ctx, ns, h, in.MAC)
	if err != nil {
		return nil, err
	}
	if err := configure(h, link, in); err != nil {
		return nil, fmt.Errorf("interface %s (%s): %w", in.Name, in.MAC, err)
	}
	log.G(ctx).WithField("interface", in.Name).WithField("mac", in.MAC.String()).WithField("addresses", in.Addrs).Info("network card configured")
	return &api.ConfigureInterfaceResponse{}, nil
}

// handleAt opens the namespace at path and a route netlink handle in it.
func handleAt(path string) (netns.NsHandle, *netlink.Handle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return ns, nil, err
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		return ns, nil, err
	}
	return ns, h, nil
}

// waitCard finds the card in the container namespace, or moves it there
// from the root namespace once the guest's driver has it.
func waitCard(ctx context.Context, ns netns.NsHandle, h *netlink.Handle, mac net.HardwareAddr) (netlink.Link, error) {
	deadline := time.Now().Add(cardWait)
	for {
		if l := byMAC(h.LinkList, mac); l != nil {
			return l, nil
		}
		if l := byMAC(netlink.LinkList, mac); l != nil {
			if err := netlink.LinkSetNsFd(l, int(ns)); err != nil {
				return nil, fmt.Errorf("move card %s into the container network namespace: %w", mac, err)
			}
			continue
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no network card with mac %s after %v: %w", mac, cardWait, errdefs.ErrNotFound)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func byMAC(list func() ([]netlink.Link, error), mac net.HardwareAddr) netlink.Link {
	links, err := list()
	if err != nil {
		return nil
	}
	for _, l := range links {
		if l.Attrs().HardwareAddr.String() == mac.String() {
			return l
		}
	}
	return nil
}

func configure(h *netlink.Handle, l netlink.Link, in Interface) error {
	if l.Attrs().Name != in.Name {
		if err := h.LinkSetDown(l); err != nil {
			return err
		}
		if err := h.LinkSetName(l, in.Name); err != nil {
			return fmt.Errorf("rename %s: %w", l.Attrs().Name, err)
		}
	}
	if err := h.LinkSetMTU(l, in.MTU); err != nil {
		return fmt.Errorf("mtu %d: %w", in.MTU, err)
	}
	for _, p := range in.Addrs {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD // the host's interface did DAD already
		}
		if err := h.AddrReplace(l, a); err != nil {
			return fmt.Errorf("address %s: %w", p, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	// On-link routes first: a gateway must be reachable before a route
	// through it is added.
	ordered := make([]Route, 0, len(in.Routes))
	for _, r := range in.Routes {
		if !r.Gateway.IsValid() {
			ordered = append(ordered, r)
		}
	}
	for _, r := range in.Routes {
		if r.Gateway.IsValid() {
			ordered = append(ordered, r)
		}
	}
	for _, r := range ordered {
		nr := &netlink.Route{LinkIndex: l.Attrs().Index, Priority: r.Metric, Scope: netlink.SCOPE_UNIVERSE}
		if r.Dst.IsValid() {
			nr.Dst = &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())}
		}
		if r.Gateway.IsValid() {
			nr.Gw = r.Gateway.AsSlice()
		} else {
			nr.Scope = netlink.SCOPE_LINK
		}
		if r.Src.IsValid() {
			nr.Src = r.Src.AsSlice()
		}
		if !r.Dst.IsValid() {
			nr.Family = unix.AF_INET
			if r.Gateway.Is6() {
				nr.Family = unix.AF_INET6
			}
		}
		if err := h.RouteReplace(nr); err != nil {
			return fmt.Errorf("route %+v: %w", r, err)
		}
	}
	return nil
}

// RemoveInterface takes the card's configuration down before the host
// unplugs it.
func (s *Service) RemoveInterface(ctx context.Context, r *api.RemoveInterfaceRequest) (*api.RemoveInterfaceResponse, error) {
	mac, err := net.ParseMAC(r.Mac)
	if err != nil {
		return nil, fmt.Errorf("mac %q: %v: %w", r.Mac, err, errdefs.ErrInvalidArgument)
	}
	path, err := s.Namespace()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ns, h, err := handleAt(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	defer h.Close()
	if l := byMAC(h.LinkList, mac); l != nil {
		if err := h.LinkSetDown(l); err != nil {
			return nil, fmt.Errorf("interface %s down: %w", l.Attrs().Name, err)
		}
	}
	return &api.RemoveInterfaceResponse{}, nil
}
