package network

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	api "github.com/qemu-shim/qemu-shim/api/network/v1"
)

func TestParseRefusesBadRequests(t *testing.T) {
	good := func() *api.ConfigureInterfaceRequest {
		return &api.ConfigureInterfaceRequest{Name: "eth0", Mac: "02:42:0a:58:00:07", Mtu: 1500,
			Addresses: []string{"10.88.0.7/16"}, Routes: []*api.Route{{Gateway: "10.88.0.1"}}}
	}
	if _, err := Parse(good()); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(r *api.ConfigureInterfaceRequest){
		"lo":        func(r *api.ConfigureInterfaceRequest) { r.Name = "lo" },
		"long name": func(r *api.ConfigureInterfaceRequest) { r.Name = strings.Repeat("e", 16) },
		"path name": func(r *api.ConfigureInterfaceRequest) { r.Name = "../eth0" },
		"bad mac":   func(r *api.ConfigureInterfaceRequest) { r.Mac = "02:42" },
		"infiniband mac": func(r *api.ConfigureInterfaceRequest) {
			r.Mac = "00:00:00:00:fe:80:00:00:00:00:00:00:00:00:00:00:00:00:00:01"
		},
		"tiny mtu":       func(r *api.ConfigureInterfaceRequest) { r.Mtu = 10 },
		"bad address":    func(r *api.ConfigureInterfaceRequest) { r.Addresses = []string{"10.88.0.7"} },
		"many addresses": func(r *api.ConfigureInterfaceRequest) { r.Addresses = make([]string, maxAddresses+1) },
		"many routes":    func(r *api.ConfigureInterfaceRequest) { r.Routes = make([]*api.Route, maxRoutes+1) },
		"no gateway":     func(r *api.ConfigureInterfaceRequest) { r.Routes = []*api.Route{{}} },
		"mixed families": func(r *api.ConfigureInterfaceRequest) {
			r.Routes = []*api.Route{{Destination: "10.0.0.0/8", Gateway: "fd00::1"}}
		},
		"bad destination": func(r *api.ConfigureInterfaceRequest) {
			r.Routes = []*api.Route{{Destination: "nowhere", Gateway: "10.88.0.1"}}
		},
	} {
		r := good()
		mutate(r)
		if r.Routes != nil && len(r.Routes) > 0 && r.Routes[0] == nil {
			for i := range r.Routes {
				r.Routes[i] = &api.Route{Gateway: "10.88.0.1"}
			}
		}
		if _, err := Parse(r); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
	}
}

// TestConfigureMovesAndConfiguresTheCard plays the guest: a fresh network
// namespace stands for the guest's root one, a veth end in it for the
// virtio card the host plugged.
func TestConfigureMovesAndConfiguresTheCard(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: network namespaces need root")
	}
	path := filepath.Join(t.TempDir(), "containers")
	t.Cleanup(func() { unix.Unmount(path, unix.MNT_DETACH) })
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // this thread ends in the "guest root" namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		mac, _ := net.ParseMAC("02:42:0a:58:00:07")
		// (A veth: dummy links need a module the host may lack.)
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "enp0s1", HardwareAddr: mac}, PeerName: "other0"}); err != nil {
			done <- err
			return
		}
		s := &Service{Path: path}
		_, err := s.ConfigureInterface(context.Background(), &api.ConfigureInterfaceRequest{
			Name: "eth0", Mac: mac.String(), Mtu: 1450,
			Addresses: []string{"10.88.0.7/16", "fd00:88::7/64"},
			Routes:    []*api.Route{{Gateway: "10.88.0.1"}, {Destination: "192.168.50.0/24", Gateway: "10.88.0.254", Metric: 5}},
		})
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatalf("no eth0 in the container namespace: %v", err)
	}
	if l.Attrs().MTU != 1450 || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("eth0 mtu %d flags %v", l.Attrs().MTU, l.Attrs().Flags)
	}
	if lo, err := h.LinkByName("lo"); err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("lo is not up: %v", err)
	}
	addrs, _ := h.AddrList(l, netlink.FAMILY_ALL)
	var got []string
	for _, a := range addrs {
		got = append(got, a.IPNet.String())
	}
	for _, want := range []string{"10.88.0.7/16", "fd00:88::7/64"} {
		if !strings.Contains(strings.Join(got, " "), want) {
			t.Errorf("addresses %v lack %s", got, want)
		}
	}
	routes, _ := h.RouteList(l, netlink.FAMILY_V4)
	var def, via bool
	for _, r := range routes {
		if ones, _ := maskOf(r.Dst); ones == 0 && r.Gw.String() == "10.88.0.1" {
			def = true
		}
		if r.Dst != nil && r.Dst.String() == "192.168.50.0/24" && r.Gw.String() == "10.88.0.254" && r.Priority == 5 {
			via = true
		}
	}
	if !def || !via {
		t.Errorf("routes %+v: default %v, 192.168.50.0/24 %v", routes, def, via)
	}
}

func maskOf(n *net.IPNet) (int, int) {
	if n == nil {
		return 0, 0
	}
	return n.Mask.Size()
}
