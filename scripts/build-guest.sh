#!/usr/bin/env bash
# Builds the guest image: an uncompressed PVH kernel (vmlinux) from Debian's
# cloud kernel package; an initramfs holding our agent as /init and the
# kernel modules the agent loads, with their dependencies computed by depmod;
# and a read-only erofs "tools" disk holding the task service
# (qemu-shim-taskd) and runc. They stay out of the initramfs because the
# kernel unpacks every initramfs byte before /init runs (about 20 ms a MB
# under TCG), while the disk is mounted after the host has connected. The
# same inputs give byte-identical images.
#
# Usage: build-guest.sh OUT_DIR AGENT_BINARY TASKD_BINARY [RUNC_BINARY [CRUN_DIR]]
# CRUN_DIR is scripts/build-crun.sh's output: its static crun goes to the
# tools disk's root beside runc.
# Environment: GUEST_KERNEL_PACKAGE (default linux-image-cloud-amd64; a
# metapackage is resolved to the kernel it depends on today),
# GUEST_MODULES (the modules the guest needs; their dependencies are added).
set -euo pipefail

usage="usage: build-guest.sh OUT_DIR AGENT_BINARY TASKD_BINARY [RUNC_BINARY [CRUN_DIR]]"
out=${1:?$usage}
agent=${2:?$usage}
taskd=${3:?$usage}
runc=${4:-}
crun=${5:-}
package=${GUEST_KERNEL_PACKAGE:-linux-image-cloud-amd64}
modules=${GUEST_MODULES:-virtio_pci virtio_blk virtio_scsi sd_mod virtiofs bridge virtio_net virtio_console vsock vmw_vsock_virtio_transport overlay erofs virtio_mem virtio_balloon}

die() { echo "build-guest: $*" >&2; exit 1; }
for tool in apt-cache apt-get dpkg-deb depmod lz4 cpio mkfs.erofs; do
	command -v "$tool" >/dev/null || die "$tool is missing: run 'make deps'"
done
[ -x "$agent" ] || die "agent binary $agent is missing: run 'make'"
[ -x "$taskd" ] || die "task service binary $taskd is missing: run 'make'"

work="$out/work"
mkdir -p "$work"

# A metapackage depends on exactly one versioned kernel image.
real=$(apt-cache depends "$package" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
real=${real:-$package}
deb=$(ls "$work"/"${real}"_*.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
	(cd "$work" && apt-get download "$real" >/dev/null 2>&1) || die "cannot download $real (run 'apt-get update'?)"
	deb=$(ls "$work"/"${real}"_*.deb | head -n1)
fi
kroot="$work/kernel-$real"
if [ ! -d "$kroot/lib/modules" ]; then
	rm -rf "$kroot.tmp"
	dpkg-deb -x "$deb" "$kroot.tmp"
	mv "$kroot.tmp" "$kroot"
fi
version=$(ls "$kroot/lib/modules" | head -n1)
[ -n "$version" ] || die "no modules directory in $deb"

# The cloud kernel's bzImage is LZ4 (legacy frame): find the payload and
# unpack the ELF vmlinux, which QEMU boots directly through its PVH note.
vmlinux="$out/vmlinux"
if [ ! -s "$vmlinux" ] || [ "$vmlinux" -ot "$deb" ] || [ "$vmlinux" -ot "$0" ]; then
	bz="$kroot/boot/vmlinuz-$version"
	offset=$(grep -aobUP '\x02\x21\x4c\x18' "$bz" | head -n1 | cut -d: -f1)
	[ -n "$offset" ] || die "no LZ4 payload in $bz"
	tail -c +"$((offset + 1))" "$bz" | lz4 -dc > "$vmlinux.tmp" 2>/dev/null || true
	head -c 4 "$vmlinux.tmp" | grep -q ELF || die "unpacking $bz did not give an ELF kernel"
	# QEMU keeps each loaded segment's file bytes mapped (and resident)
	# for as long as the VM runs, to reload them on reset. The last
	# segment ends in about 11 MiB of zeros (.bss, .brk, .init.scratch):
	# end each segment's file part at its last non-zero byte instead, and
	# QEMU fills the rest of the segment's memory with zeros itself.
	perl -e '
		my $f = shift; open(my $fh, "+<:raw", $f) or die "$f: $!"; local $/; my $b = <$fh>;
		my ($phoff, $phentsize, $phnum) = (unpack("Q<", substr($b, 0x20, 8)), unpack("v", substr($b, 0x36, 2)), unpack("v", substr($b, 0x38, 2)));
		for my $i (0 .. $phnum - 1) {
			my $ph = $phoff + $i * $phentsize;
			next unless unpack("V", substr($b, $ph, 4)) == 1; # PT_LOAD
			my ($off, $filesz) = (unpack("Q<", substr($b, $ph + 8, 8)), unpack("Q<", substr($b, $ph + 32, 8)));
			my $seg = substr($b, $off, $filesz); $seg =~ s/\0+\z//;
			seek($fh, $ph + 32, 0); print $fh pack("Q<", length($seg));
		}
		close $fh or die "$f: $!";' "$vmlinux.tmp"
	mv "$vmlinux.tmp" "$vmlinux"
fi

# Dependencies of the wanted modules, from depmod over the whole package.
[ -s "$kroot/lib/modules/$version/modules.dep" ] || depmod -b "$kroot" "$version"
rd="$work/initramfs"
rm -rf "$rd"
mkdir -p "$rd/lib/modules/$version" "$rd/dev" "$rd/proc" "$rd/sys" "$rd/run" "$rd/tmp" "$rd/etc"
want=""
for m in $modules; do
	path=$(awk -v m="$m" -F: '{n=$1; sub(/.*\//, "", n); sub(/\.ko.*/, "", n); gsub(/-/, "_", n); if (n == m) {print $0; exit}}' "$kroot/lib/modules/$version/modules.dep")
	if [ -z "$path" ]; then
		# Built into the kernel is fine; absent is not.
		grep -q "/$m.ko" "$kroot/lib/modules/$version/modules.builtin" || die "module $m is neither a module nor built into $version"
		continue
	fi
	want="$want ${path%%:*} ${path#*:}"
done
for f in $(echo $want | tr ' ' '\n' | sort -u); do
	mkdir -p "$rd/lib/modules/$version/$(dirname "$f")"
	cp "$kroot/lib/modules/$version/$f" "$rd/lib/modules/$version/$f"
done
# Drop the modules' signatures: checking them costs about 6 ms a module
# under TCG on the boot's critical path, and the initramfs that carries
# them is as trusted as the kernel beside it (the kernel notes the unsigned
# modules as a taint, nothing more).
perl -e '
	my $magic = "~Module signature appended~\n";
	for my $f (@ARGV) {
		open(my $in, "<:raw", $f) or die "$f: $!"; local $/; my $b = <$in>; close $in;
		next unless substr($b, -length $magic) eq $magic;
		my $siglen = unpack("N", substr($b, -length($magic) - 4, 4));
		open(my $out, ">:raw", $f) or die "$f: $!";
		print $out substr($b, 0, length($b) - length($magic) - 12 - $siglen); close $out;
	}' $(find "$rd/lib/modules" -name '*.ko')
# Parameters the agent loads modules with (guest/kmod's modules.options).
# scsi_mod scan=manual: the virtio-scsi controller's probe would scan its
# 256 targets (about a quarter of a second under TCG); the host plugs
# every disk as a LUN of target 0, which the guest adds when the
# controller reports it, without a scan (see vm.AttachDisk).
printf 'options scsi_mod scan=manual\n' > "$rd/lib/modules/$version/modules.options"
cp "$kroot/lib/modules/$version/modules.builtin" "$kroot/lib/modules/$version/modules.builtin.modinfo" "$kroot/lib/modules/$version/modules.order" "$rd/lib/modules/$version/"
depmod -b "$rd" "$version"
# Keep only what the agent reads: the binary indexes differ between runs.
find "$rd/lib/modules/$version" -maxdepth 1 -type f ! -name modules.dep ! -name modules.options -delete

cp "$agent" "$rd/init"
printf 'root:x:0:0:root:/:/bin/sh\n' > "$rd/etc/passwd"
printf 'root:x:0:\n' > "$rd/etc/group"

find "$rd" -exec touch -h -d @0 {} +
(cd "$rd" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null --create --format=newc --reproducible --owner=0:0 --quiet) > "$out/initramfs.cpio.tmp"
mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"
tools="$work/tools"
rm -rf "$tools"
mkdir -p "$tools"
cp "$taskd" "$tools/qemu-shim-taskd"
[ -z "$runc" ] || cp "$runc" "$tools/runc"
if [ -n "$crun" ]; then
	[ -x "$crun/crun" ] || die "no crun in $crun: run scripts/build-crun.sh"
	cp "$crun/crun" "$tools/crun"
fi
find "$tools" -exec touch -h -d @0 {} +
mkfs.erofs --quiet -T0 -U 00000000-0000-0000-0000-00000000a9e7 --all-root "$out/tools.erofs.tmp" "$tools"
mv "$out/tools.erofs.tmp" "$out/tools.erofs"

printf '%s\n' "$real" > "$out/kernel-package"
printf '%s\n' "$version" > "$out/kernel-version"
echo "guest image: $out/vmlinux ($version), $out/initramfs.cpio ($(du -k "$out/initramfs.cpio" | cut -f1) KiB), $out/tools.erofs ($(du -k "$out/tools.erofs" | cut -f1) KiB)"
