// Command containerd-shim-qemu-v1 is the containerd runtime shim that runs
// each container, or each pod, in its own QEMU VM
// (runtime io.containerd.qemu.v1).
package main

import (
	"context"

	"github.com/containerd/containerd/v2/pkg/shim"

	"github.com/qemu-shim/qemu-shim/shim/manager"
	_ "github.com/qemu-shim/qemu-shim/shim/task/plugin"
)

func main() {
	shim.RunShim(context.Background(), manager.NewShimManager("io.containerd.qemu.v1"), manager.BinaryOpts)
}
