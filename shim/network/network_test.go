package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// newNamespace makes a network namespace mounted in a temporary file, as
// CNI's callers do, and removes it after the test.
func newNamespace(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: network namespaces need root")
	}
	path := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // this thread ends in the new namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- unix.Mount(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), path, "", unix.MS_BIND, "")
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(path, unix.MNT_DETACH) })
	return path
}

func handle(t *testing.T, path string) (netns.NsHandle, *netlink.Handle) {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(); ns.Close() })
	return ns, h
}

// TestWireRedirectsBothWays wires a namespace set up the way CNI's bridge
// plugin leaves one (a veth with an address and a default route), then
// checks what the guest would be told and that frames cross the tap both
// ways: a peer's ARP request arrives on the tap, and a frame written to
// the tap leaves by the veth.
func TestWireRedirectsBothWays(t *testing.T) {
	pod, peer := newNamespace(t), newNamespace(t)
	podNS, podH := handle(t, pod)
	_, peerH := handle(t, peer)
	mac, _ := net.ParseMAC("02:42:0a:58:00:07")
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1450, HardwareAddr: mac, Namespace: netlink.NsFd(podNS)}, PeerName: "peer0"}
	if err := peerH.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	eth0, err := podH.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	peer0, err := peerH.LinkByName("peer0")
	if err != nil {
		t.Fatal(err)
	}
	for h, l := range map[*netlink.Handle]netlink.Link{podH: eth0, peerH: peer0} {
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	addr, _ := netlink.ParseAddr("10.88.0.7/16")
	peerAddr, _ := netlink.ParseAddr("10.88.0.1/16")
	v6, _ := netlink.ParseAddr("fd00:88::7/64")
	for _, a := range []*netlink.Addr{addr, v6} {
		if err := podH.AddrAdd(eth0, a); err != nil {
			t.Fatal(err)
		}
	}
	if err := peerH.AddrAdd(peer0, peerAddr); err != nil {
		t.Fatal(err)
	}
	if err := podH.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("10.88.0.1")}); err != nil {
		t.Fatal(err)
	}

	n, err := Wire(pod)
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Endpoints) != 1 {
		t.Fatalf("endpoints %+v, want eth0 alone", n.Endpoints)
	}
	ep := n.Endpoints[0]
	if ep.Name != "eth0" || ep.MAC.String() != mac.String() || ep.MTU != 1450 {
		t.Errorf("endpoint %s %s mtu %d", ep.Name, ep.MAC, ep.MTU)
	}
	wantAddrs := map[netip.Prefix]bool{netip.MustParsePrefix("10.88.0.7/16"): true, netip.MustParsePrefix("fd00:88::7/64"): true}
	if len(ep.Addrs) != len(wantAddrs) {
		t.Errorf("addresses %v, want %v (no link-local)", ep.Addrs, wantAddrs)
	}
	for _, a := range ep.Addrs {
		if !wantAddrs[a] {
			t.Errorf("address %v not expected", a)
		}
	}
	if len(ep.Routes) != 1 || ep.Routes[0].Dst.IsValid() || ep.Routes[0].Gateway != netip.MustParseAddr("10.88.0.1") {
		t.Errorf("routes %+v, want the default route via 10.88.0.1 alone (kernel routes left out)", ep.Routes)
	}
	tap, err := podH.LinkByName(ep.TapName)
	if err != nil {
		t.Fatalf("tap %s not in the pod namespace: %v", ep.TapName, err)
	}
	if tap.Attrs().MTU != 1450 {
		t.Errorf("tap MTU %d, want the interface's 1450", tap.Attrs().MTU)
	}
	if _, err := netlink.LinkByName(ep.TapName); err == nil {
		t.Errorf("tap %s is in the host's namespace", ep.TapName)
	}
	// A second Wire (a restarted wiring) leaves the tap alone.
	if n2, err := Wire(pod); err == nil {
		if len(n2.Endpoints) != 1 {
			t.Errorf("second wiring: %d endpoints", len(n2.Endpoints))
		}
		n2.closeTaps()
	}

	// Peer → pod: the ARP request for 10.88.0.7 comes out of the tap.
	ep.Tap.SetReadDeadline(time.Now().Add(5 * time.Second))
	go sendFrom(peer, "10.88.0.7:9")
	buf := make([]byte, 2048)
	const vnetHdr = 10
	for {
		k, err := ep.Tap.Read(buf)
		if err != nil {
			t.Fatalf("nothing came out of the tap: %v", err)
		}
		frame := buf[vnetHdr:k]
		if len(frame) >= 14 && frame[12] == 0x08 && frame[13] == 0x06 && net.HardwareAddr(frame[6:12]).String() == peer0.Attrs().HardwareAddr.String() {
			break
		}
	}
	// Tap → peer: a frame written to the tap leaves by eth0 and reaches
	// peer0 (counted there).
	before := rxPackets(t, peerH, "peer0")
	frame := make([]byte, vnetHdr+60)
	copy(frame[vnetHdr:], peer0.Attrs().HardwareAddr)
	copy(frame[vnetHdr+6:], mac)
	frame[vnetHdr+12], frame[vnetHdr+13] = 0x88, 0xb5 // local experimental ethertype
	if _, err := ep.Tap.Write(frame); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for rxPackets(t, peerH, "peer0") == before {
		if time.Now().After(deadline) {
			t.Fatal("a frame written to the tap never reached the peer")
		}
		time.Sleep(10 * time.Millisecond)
	}

	if err := n.Unwire(); err != nil {
		t.Fatal(err)
	}
	if _, err := podH.LinkByName(ep.TapName); err == nil {
		t.Errorf("tap %s left after Unwire", ep.TapName)
	}
	qdiscs, _ := podH.QdiscList(eth0)
	for _, q := range qdiscs {
		if q.Type() == "ingress" {
			t.Errorf("ingress qdisc left on eth0")
		}
	}
}

func rxPackets(t *testing.T, h *netlink.Handle, name string) uint64 {
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Statistics.RxPackets
}

// sendFrom sends a UDP datagram from inside the namespace at path.
func sendFrom(path, to string) {
	runtime.LockOSThread()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return
	}
	defer ns.Close()
	if netns.Set(ns) != nil {
		return
	}
	if c, err := net.Dial("udp", to); err == nil {
		c.Write([]byte("x"))
		c.Close()
	}
}

func TestWireErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "gone")
	if _, err := Wire(missing); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("missing namespace: %v", err)
	}
	// A namespace with only lo wires nothing.
	n, err := Wire(newNamespace(t))
	if err != nil || len(n.Endpoints) != 0 {
		t.Errorf("lo alone: %+v %v", n, err)
	}
	// Unwiring a namespace CNI already removed is no error.
	gone := &Namespace{Path: missing, Endpoints: []*Endpoint{{Name: "eth0", TapName: "qstap0"}}}
	if err := gone.Unwire(); err != nil {
		t.Errorf("unwire of a removed namespace: %v", err)
	}
}
