#!/usr/bin/env bash
# Builds the guest's crun: Debian's crun, built from Debian's source package
# (the version apt would install) and linked statically, glibc, libseccomp,
# libcap and yajl included. Debian's own binary loads ten shared libraries
# (six of them for libsystemd, which the guest has no use for), and under
# TCG that loading cost every crun call about 50 ms: `crun start` took
# 0.08-0.12 s, and 0.02 s static. The build leaves out what the guest does
# not have: systemd (its cgroup manager, journald, the notify socket), CRIU,
# and the handlers loaded at run time (krun, wasm).
#
# The source comes through a private apt state whose sources are the
# deb-src twins of this machine's own apt sources (the same mirrors and
# keys); the machine's apt configuration is not changed. apt checks the
# files against the signed index.
#
# Usage: build-crun.sh OUT_DIR
# OUT_DIR gets crun and crun-version; OUT_DIR/work keeps the source, the
# build and the private apt state.
set -euo pipefail
export LC_ALL=C # apt's output is read below

out=${1:?usage: build-crun.sh OUT_DIR}
die() { echo "build-crun: $*" >&2; exit 1; }
for tool in apt-cache apt-get dpkg-source gcc make pkg-config python3 readelf strip; do
	command -v "$tool" >/dev/null || die "$tool is missing: run 'make deps'"
done
# Debian ships yajl's static library as libyajl_s.a.
yajl=$(gcc -print-file-name=libyajl_s.a)
[ -f "$yajl" ] || die "libyajl_s.a is missing (libyajl-dev): run 'make deps'"
for lib in libseccomp.a libcap.a; do
	[ -f "$(gcc -print-file-name=$lib)" ] || die "$lib is missing: run 'make deps'"
done

mkdir -p "$out/work"
work=$(cd "$out/work" && pwd)
# crun's source holds Go files: a module of their own keeps the
# repository's `go vet ./...` and `go test ./...` out of them.
printf 'module crun-build.invalid\n' >"$work/go.mod"
apt="$work/apt"
rm -rf "$apt/parts"
mkdir -p "$apt/parts" "$apt/lists/partial" "$apt/cache/archives/partial"
# The deb-src twin of every source the machine has: one-line entries and
# deb822 stanzas alike.
shopt -s nullglob
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
	[ -f "$f" ] || continue
	sed -n 's/^[[:space:]]*deb[[:space:]]/deb-src /p' "$f" >>"$apt/parts/src.list"
done
n=0
for f in /etc/apt/sources.list.d/*.sources; do
	n=$((n + 1))
	sed 's/^Types:.*/Types: deb-src/' "$f" >"$apt/parts/src-$n.sources"
done
shopt -u nullglob
opts=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$apt/parts"
	-o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache" -o APT::Sandbox::User=root)
# A source without deb-src indexes (some third-party ones) fails here and
# is left out; only crun's source has to be found.
apt-get -qq "${opts[@]}" update || echo "build-crun: some source indexes could not be read (above); going on" >&2
# The source of the crun package apt would install: a binary-only rebuild
# (+bN) names its source's version in its Source field.
version=$(apt-cache policy crun | sed -n 's/^ *Candidate: //p')
[ -n "$version" ] && [ "$version" != "(none)" ] || die "apt has no crun package (run 'apt-get update'?)"
source_version=$(apt-cache show "crun=$version" | sed -n 's/^Source: crun (\(.*\))$/\1/p' | head -n1)
version=${source_version:-$version}
dsc="$work/crun_${version#*:}.dsc"
if [ ! -f "$dsc" ] && ! (cd "$work" && apt-get -qq "${opts[@]}" source --download-only "crun=$version" >/dev/null); then
	# The machine's package lists may be older than the source indexes
	# just read (a security update replaces its predecessor): the newest
	# source there is.
	echo "build-crun: no source of crun $version; taking the newest there is" >&2
	rm -f "$work"/crun_*.dsc
	(cd "$work" && apt-get -qq "${opts[@]}" source --download-only crun >/dev/null) || die "cannot download crun's source"
	dsc=$(ls -t "$work"/crun_*.dsc | head -n1)
	version=$(sed -n 's/^Version: //p' "$dsc" | head -n1)
fi
src="$work/src"
rm -rf "$src"
# The .dsc's own signature needs Debian's developer keys, which the machine
# need not have: its files were checked against apt's signed index.
dpkg-source -x "$dsc" "$src" >"$work/unpack.log" 2>&1 || die "cannot unpack $dsc: see $work/unpack.log"

libs="$work/static-libs"
mkdir -p "$libs"
ln -sf "$yajl" "$libs/libyajl.a"
(
	cd "$src"
	./configure --disable-systemd --disable-criu --disable-dl --disable-shared --enable-static \
		LDFLAGS="-static -L$libs" >"$work/configure.log" 2>&1 || die "configure failed: see $work/configure.log"
	make -j"$(nproc)" git-version.h crun LDFLAGS="-all-static -L$libs" >"$work/make.log" 2>&1 || die "make failed: see $work/make.log"
)
headers=$(readelf -l "$src/crun")
[[ $headers != *"program interpreter"* ]] || die "$src/crun is not linked statically"
features=$("$src/crun" --version | tail -n1)
for f in +CAP +SECCOMP +EBPF +YAJL; do
	[[ " $features " == *" $f "* ]] || die "$src/crun was built without ${f#+} ($features)"
done
rm -rf "$out/crun" "$out/lib"
cp "$src/crun" "$out/crun"
strip "$out/crun"
chmod 0755 "$out/crun"
printf '%s\n' "$version" >"$out/crun-version"
echo "crun $version (static): $out/crun ($(du -k "$out/crun" | cut -f1) KiB)"
