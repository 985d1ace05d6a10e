package kmod

import (
	"strings"
	"testing"
)

const dep = `kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vsock.ko:
`

func TestOrderPutsDependenciesFirst(t *testing.T) {
	mods, err := ParseDep(strings.NewReader(dep))
	if err != nil {
		t.Fatal(err)
	}
	order, err := Order(mods, []string{"virtio_net", "vmw_vsock_virtio_transport"})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range order {
		if _, dup := pos[m.Name]; dup {
			t.Fatalf("%s listed twice", m.Name)
		}
		pos[m.Name] = i
	}
	for _, m := range order {
		for _, d := range m.Deps {
			if pos[d] > pos[m.Name] {
				t.Errorf("%s loads before its dependency %s: %v", m.Name, d, order)
			}
		}
	}
	if len(order) != 6 {
		t.Errorf("got %d modules, want 6 (the named ones and their dependencies)", len(order))
	}
	all, err := Order(mods, nil)
	if err != nil || len(all) != 9 {
		t.Fatalf("all modules: %d, %v", len(all), err)
	}
}

func TestOrderErrors(t *testing.T) {
	mods, err := ParseDep(strings.NewReader("a.ko: b.ko\nb.ko: a.ko\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Order(mods, []string{"a"}); err == nil || !strings.Contains(err.Error(), "depends on itself") {
		t.Errorf("cycle: got %v", err)
	}
	if _, err := Order(mods, []string{"nope"}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("missing module: got %v", err)
	}
	if _, err := ParseDep(strings.NewReader("garbage\n")); err == nil {
		t.Error("a line without colon parsed")
	}
}

func TestName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/block/virtio_blk.ko":    "virtio_blk",
		"kernel/fs/erofs/erofs.ko.xz":           "erofs",
		"kernel/drivers/char/virtio-console.ko": "virtio_console",
	} {
		if got := Name(in); got != want {
			t.Errorf("Name(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseOptions(t *testing.T) {
	opts, err := ParseOptions(strings.NewReader("# comment\n\noptions scsi_mod scan=manual\noptions virtio-net napi_tx=0 x=1\noptions scsi_mod max_luns=8\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"scsi_mod": "scan=manual max_luns=8", "virtio_net": "napi_tx=0 x=1"}
	if len(opts) != len(want) {
		t.Fatalf("got %v, want %v", opts, want)
	}
	for k, v := range want {
		if opts[k] != v {
			t.Errorf("%s: got %q, want %q", k, opts[k], v)
		}
	}
	for _, bad := range []string{"scsi_mod scan=manual\n", "options scsi_mod\n", "blacklist x\n"} {
		if _, err := ParseOptions(strings.NewReader(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
