#!/usr/bin/env bash
# Unpacks Debian 12's containerd package (1.6) into DIR without installing
# it, for the tests with containerd 1.x (test/compat): DIR/usr/bin holds its
# containerd and ctr. Idempotent.
set -euo pipefail
dir=${1:?usage: containerd16.sh DIR}
[ -x "$dir/usr/bin/containerd" ] && exit 0
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || { echo "containerd16: needs apt-get and dpkg-deb (Debian)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# apt's sandbox user must be able to write where it downloads.
chmod 0755 "$work"
if ! (cd "$work" && apt-get download -qq containerd 2>/dev/null); then
	apt-get update -qq
	(cd "$work" && apt-get download -qq containerd)
fi
deb=$(ls "$work"/containerd_*.deb)
mkdir -p "$dir.tmp"
dpkg-deb -x "$deb" "$dir.tmp"
dpkg-deb -f "$deb" Version >"$dir.tmp/version"
rm -rf "$dir"
mv "$dir.tmp" "$dir"
echo "containerd16: $(cat "$dir/version") in $dir"
