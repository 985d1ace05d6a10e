#!/usr/bin/env bash
# Runs a container in its own VM through a private containerd (own root,
# state and socket), with the shim, guest image and busybox image this
# checkout builds. Everything it starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
work=$top/build/quickstart
run=/run/qemu-shim-quickstart
mkdir -p "$work" "$run"

cat > "$work/qemu-shim.toml" <<TOML
[vm]
kernel = "$top/build/guest/vmlinux"
initrd = "$top/build/guest/initramfs.cpio"
tools = "$top/build/guest/tools.erofs"
state_root = "$run/vms"
[rootfs]
layer_cache = "$work/layers"
[template]
dir = "$work/templates"
TOML
cat > "$work/containerd.toml" <<TOML
version = 3
root = "$work/containerd"
state = "$run/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
[grpc]
  address = "$run/containerd.sock"
[ttrpc]
  address = "$run/containerd.sock.ttrpc"
TOML

# ctr warns on every call that this host's cgroup v1 is deprecated: not news here.
ctr() { "$top/build/containerd-bin/ctr" --address "$run/containerd.sock" "$@" 2> >(grep -v 'DEPRECATION: The support for cgroup v1' >&2); }

PATH="$top/bin:$top/build/containerd-bin:$PATH" QEMU_SHIM_CONFIG="$work/qemu-shim.toml" \
	"$top/build/containerd-bin/containerd" --config "$work/containerd.toml" > "$work/containerd.log" 2>&1 &
containerd_pid=$!
trap 'kill $containerd_pid 2>/dev/null; wait $containerd_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
	ctr version >/dev/null 2>&1 && break
	kill -0 $containerd_pid 2>/dev/null || { cat "$work/containerd.log"; exit 1; }
	sleep 0.1
done

image=qemu-shim.dev/busybox:latest
if ! ctr images ls -q | grep -qx "$image"; then
	"$top/bin/qemu-shim" busybox-image "$work/busybox.tar"
	ctr images import "$work/busybox.tar" >/dev/null
fi

echo "host kernel:      $(uname -r)"
start=$(date +%s%N)
echo -n "container kernel: "
ctr run --rm --runtime io.containerd.qemu.v1 "$image" "quickstart-$$" uname -r
took=$(( ($(date +%s%N) - start) / 1000000 ))
echo "ctr run took ${took} ms, VM start included ('qemu-shim check' says whether QEMU has KVM here)"
echo "(the first run here also builds the VM template later runs restore from: run it again to see a restored start)"
