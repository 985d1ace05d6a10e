#!/usr/bin/env bash
# Installs what qemu-shim needs on Debian 12, idempotently: Debian packages
# first (only the missing ones), then the tools built from Go modules.
set -euo pipefail

packages=(
	qemu-system-x86 qemu-utils   # the hypervisor, qemu-img
	qemu-system-common           # virtiofsd, for bind mounts
	e2fsprogs erofs-utils        # mkfs.ext4 -d, mkfs.erofs for image layers
	kmod cpio lz4                # guest image: depmod, initramfs, vmlinux unpacking
	busybox-static               # the busybox test and quickstart image
	libseccomp-dev pkg-config gcc libc6-dev # static runc with seccomp for the guest
	libcap-dev libyajl-dev make dpkg-dev binutils python3 # static crun for the guest, from Debian's source
	iproute2 procps ca-certificates # ip (tap devices in tests), pgrep
	containernetworking-plugins iptables # CNI bridge/host-local/portmap for the network tests
)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The guest kernel is downloaded (not installed) by scripts/build-guest.sh;
# it needs the package lists.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
	apt-get update -qq
fi
command -v go >/dev/null || { echo "deps: Go is missing (it comes with the machine image)" >&2; exit 1; }
echo "deps: ok"
