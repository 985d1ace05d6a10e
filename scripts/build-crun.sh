#!/usr/bin/env bash
# Builds the guest's crun: Debian's crun and the shared libraries it loads,
# from the packages it depends on (downloaded, never installed), with its
# program interpreter and library path rewritten to where the tools disk is
# mounted in the guest (the guest has no /lib). The same packages give the
# same files.
#
# Usage: build-crun.sh OUT_DIR
# OUT_DIR gets crun and lib/ (the loader and the libraries), ready to copy
# to the tools disk's root; OUT_DIR/work keeps the downloaded packages.
# Environment: GUEST_TOOLS_DIR, where the guest mounts the tools disk
# (/run/qemu-shim/tools, api/agent/v1.ToolsMountPoint).
set -euo pipefail

out=${1:?usage: build-crun.sh OUT_DIR}
tools_dir=${GUEST_TOOLS_DIR:-/run/qemu-shim/tools}
die() { echo "build-crun: $*" >&2; exit 1; }
for tool in apt-cache apt-get dpkg-deb readelf patchelf; do
	command -v "$tool" >/dev/null || die "$tool is missing: run 'make deps'"
done

work="$out/work"
mkdir -p "$work/debs"
# crun and what it depends on, recursively; alternatives and virtual
# packages are left to the first real package named.
declare -A seen=()
queue=(crun)
while [ ${#queue[@]} -gt 0 ]; do
	p=${queue[0]}
	queue=("${queue[@]:1}")
	[ -z "${seen[$p]:-}" ] || continue
	seen[$p]=1
	for d in $(apt-cache depends "$p" 2>/dev/null | awk '$1 == "Depends:" || $1 == "PreDepends:" {print $2}' | grep -v '^<'); do
		[ -n "${seen[$d]:-}" ] || queue+=("$d")
	done
done
for p in "${!seen[@]}"; do
	ls "$work/debs/${p}"_*.deb >/dev/null 2>&1 && continue
	(cd "$work/debs" && apt-get download "$p" >/dev/null 2>&1) || die "cannot download $p (run 'apt-get update'?)"
done
root="$work/root"
rm -rf "$root"
mkdir -p "$root"
for deb in "$work"/debs/*.deb; do
	dpkg-deb -x "$deb" "$root"
done
[ -x "$root/usr/bin/crun" ] || die "no usr/bin/crun in the crun package"

# The libraries crun loads, found by their sonames in the unpacked tree.
libdirs=("$root/lib/x86_64-linux-gnu" "$root/usr/lib/x86_64-linux-gnu")
find_lib() {
	for d in "${libdirs[@]}"; do
		[ -e "$d/$1" ] && { echo "$d/$1"; return; }
	done
	die "library $1 (needed by crun) is in none of its packages"
}
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
rm -rf "$out/lib" "$out/crun"
mkdir -p "$out/lib"
declare -A have=()
todo=($(needed "$root/usr/bin/crun"))
while [ ${#todo[@]} -gt 0 ]; do
	so=${todo[0]}
	todo=("${todo[@]:1}")
	[ -z "${have[$so]:-}" ] || continue
	have[$so]=1
	f=$(find_lib "$so")
	cp -L "$f" "$out/lib/$so"
	todo+=($(needed "$f"))
done
interp=$(readelf -l "$root/usr/bin/crun" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
cp -L "$(find_lib "$(basename "$interp")")" "$out/lib/$(basename "$interp")"
cp "$root/usr/bin/crun" "$out/crun"
# RPATH, not RUNPATH: it also applies to the libraries' own dependencies.
patchelf --set-interpreter "$tools_dir/lib/$(basename "$interp")" --force-rpath --set-rpath "$tools_dir/lib" "$out/crun"
chmod 0755 "$out/crun" "$out/lib"/*
version=$(dpkg-deb -f "$(ls "$work"/debs/crun_*.deb)" Version)
printf '%s\n' "$version" > "$out/crun-version"
echo "crun $version: $out/crun and $(ls "$out/lib" | wc -l) libraries ($(du -sk "$out" --exclude=work | cut -f1) KiB)"
