#!/bin/sh
# Build the vTPM demo guest: OUTDIR/vmlinuz (Debian's kernel) and OUTDIR/initrd.img
# (busybox-static, init, tpmprobe).  See tests/guest/README.md.
#
# Debian packages: linux-image-amd64 busybox-static cpio gzip gcc libc6-dev
#
# Usage: tests/guest/build.sh OUTDIR
set -eu

die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }
need_pkg() { die "$1 (install the Debian package $2)"; }

[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 64; }
src=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

for tool in cpio:cpio gzip:gzip gcc:gcc; do
	command -v "${tool%%:*}" >/dev/null 2>&1 || need_pkg "${tool%%:*} not found" "${tool#*:}"
done

busybox=
for b in /bin/busybox /usr/bin/busybox; do
	[ -x "$b" ] && { busybox=$b; break; }
done
[ -n "$busybox" ] || need_pkg "busybox not found" busybox-static
# The dynamic busybox package would die in an initramfs without a libc.
if command -v dpkg-query >/dev/null 2>&1; then
	dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' ||
		need_pkg "busybox is not the static build" busybox-static
fi

kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
[ -n "$kernel" ] || need_pkg "no kernel in /boot" linux-image-amd64
[ -r "$kernel" ] || die "cannot read $kernel (run as root)"
# The initramfs carries no modules: the TPM drivers must be built in (Debian: =y).
kver=${kernel#/boot/vmlinuz-}
if [ -r "/boot/config-$kver" ]; then
	for opt in CONFIG_TCG_TPM CONFIG_TCG_TIS CONFIG_TCG_CRB CONFIG_DEVTMPFS CONFIG_SERIAL_8250_CONSOLE CONFIG_RD_GZIP; do
		grep -q "^$opt=y" "/boot/config-$kver" || die "kernel $kver lacks $opt=y (the guest loads no modules)"
	done
fi

work=$out/.build
rm -rf "$work"
mkdir -p "$work/root/bin" "$work/root/proc" "$work/root/sys" "$work/root/dev"

gcc -static -O2 -Wall -Wextra -Werror -o "$work/root/tpmprobe" "$src/tpmprobe.c" ||
	need_pkg "static link of tpmprobe failed" "libc6-dev (static glibc) and gcc"
strip "$work/root/tpmprobe" 2>/dev/null || true

cp "$busybox" "$work/root/bin/busybox"
for applet in sh mount mkdir sleep cat echo poweroff grep insmod timeout yes ip ls; do
	ln -s busybox "$work/root/bin/$applet"
done
# The ACPI power button and evdev are modules in Debian's kernel: the held guest loads
# them to hear the host's power-button press. pvpanic (the ISA device's ACPI driver,
# pvpanic-mmio) too: the guest that panics on vmsup.panic tells QEMU through it.
for mod in drivers/acpi/button.ko drivers/input/evdev.ko drivers/misc/pvpanic/pvpanic.ko \
	drivers/misc/pvpanic/pvpanic-mmio.ko; do
	m=/lib/modules/$kver/kernel/$mod
	[ -r "$m" ] || need_pkg "no $m" "linux-image-$kver"
	cp "$m" "$work/root/"
done
# virtio-net (a NIC of "nics"), with what it needs, in the order init loads them
# (modinfo -F depends), and e1000.
mkdir -p "$work/root/net"
for mod in drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko drivers/virtio/virtio_pci_legacy_dev.ko \
	drivers/virtio/virtio_pci_modern_dev.ko drivers/virtio/virtio_pci.ko net/core/failover.ko \
	drivers/net/net_failover.ko drivers/net/virtio_net.ko drivers/net/ethernet/intel/e1000/e1000.ko; do
	m=/lib/modules/$kver/kernel/$mod
	[ -r "$m" ] || need_pkg "no $m" "linux-image-$kver"
	cp "$m" "$work/root/net/"
	echo "${mod##*/}" >>"$work/root/net/order"
done
cp "$src/init" "$work/root/init"
chmod 0755 "$work/root/init" "$work/root/tpmprobe"
# /dev/console comes from the kernel's built-in initramfs, unpacked before this one.

(cd "$work/root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
	gzip -9n >"$work/initrd.img"
mv -f "$work/initrd.img" "$out/initrd.img"
# Also left next to the images, for running it on the host against swtpm's socket.
cp "$work/root/tpmprobe" "$out/tpmprobe"
if ! cmp -s "$kernel" "$out/vmlinuz" 2>/dev/null; then
	cp "$kernel" "$out/vmlinuz.tmp"
	mv -f "$out/vmlinuz.tmp" "$out/vmlinuz"
fi
rm -rf "$work"
printf 'build.sh: %s/vmlinuz (%s), %s/initrd.img, %s/tpmprobe\n' "$out" "$kver" "$out" "$out"
