#!/usr/bin/env bash
# vmsup benchmarks against libvirt 9.0 and bare exec: see docs/performance.md.
# Usage: bench/run.sh [bench.py options]     (./dev bench builds vmsup first, then runs this)
#   BENCH_OUT=DIR (default .build/bench), e.g. bench/run.sh --runs 3 --phases latency
# Needs root: installs libvirt from Debian, edits /etc/libvirt/qemu.conf, starts and stops
# libvirtd and virtlogd itself (refuses to run if either is already running).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
top=$PWD

die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'bench: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || die "run as root (libvirt, swtpm as root, /etc/libvirt/qemu.conf)"
[ -x "$top/vmsup" ] || die "build vmsup first (./dev build)"

PACKAGES=(libvirt-daemon-system libvirt-clients python3-libvirt python3 procps barbican-api python3-pastedeploy
  swtpm swtpm-tools qemu-system-x86 ovmf linux-image-amd64 busybox-static cpio gzip gcc libc6-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# With libvirt's default users, /dev/kvm being 0600 here makes libvirt re-probe QEMU on
# every start (about 850 ms): run QEMU and swtpm as root, as vmsup does in the benchmark.
conf=/etc/libvirt/qemu.conf
for key in user group swtpm_user swtpm_group; do
  if ! grep -qx "$key = \"root\"" "$conf"; then
    sed -i -E "/^[[:space:]]*$key[[:space:]]*=/d" "$conf"
    printf '%s = "root"\n' "$key" >>"$conf"
  fi
done

out=${BENCH_OUT:-$top/.build/bench}
mkdir -p "$out"
tests/guest/build.sh "$top/.build/guest" >/dev/null
# Debian's python3 (the first python3 on PATH may not see python3-libvirt).
exec /usr/bin/python3 "$top/bench/bench.py" --guest-dir "$top/.build/guest" --out "$out" "$@"
