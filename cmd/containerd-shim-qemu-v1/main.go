// Command containerd-shim-qemu-v1 is the containerd runtime shim that runs
// each container, or each pod, in its own QEMU VM
// (runtime io.containerd.qemu.v1).
package main

import (
	"context"
	"os"

	"github.com/containerd/containerd/v2/pkg/shim"

	"github.com/qemu-shim/qemu-shim/shim/manager"
	"github.com/qemu-shim/qemu-shim/shim/netns"
	_ "github.com/qemu-shim/qemu-shim/shim/task/plugin"
)

// holder is set when this process was started to hold a container's
// host-side network namespace for its OCI hooks (see shim/netns); it is
// known at init, while the main goroutine still runs on the main thread.
var holder = netns.IsHolder()

func main() {
	if holder {
		netns.HolderMain()
	}
	ctx, m := context.Background(), manager.NewShimManager("io.containerd.qemu.v1")
	// containerd 1.6/1.7 start shims without the bootstrap protocol.
	if manager.StartForContainerd1(ctx, m, os.Args[1:]) {
		return
	}
	shim.RunShim(ctx, m, manager.BinaryOpts)
}
