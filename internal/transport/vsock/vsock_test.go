package vsock

import (
	"context"
	"os"
	"testing"
	"time"
)

// TestDialGuest needs a real guest behind vhost-vsock; this package's tests
// never dial a CID on a host without /dev/vhost-vsock (such hosts are often
// VMs themselves, where CID 2 is someone else's hypervisor).
func TestDialGuest(t *testing.T) {
	if _, err := os.Stat("/dev/vhost-vsock"); err != nil {
		t.Skipf("skipping: no vhost-vsock on this host (%v); vsock is only exercised where guests can be reached", err)
	}
	cid := os.Getenv("QEMU_SHIM_TEST_VSOCK_CID")
	if cid == "" {
		t.Skip("skipping: set QEMU_SHIM_TEST_VSOCK_CID to a running guest's CID to dial its agent")
	}
	var n uint32
	for _, c := range cid {
		n = n*10 + uint32(c-'0')
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := (&Host{CID: n, Port: AgentPort}).Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
