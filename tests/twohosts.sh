#!/bin/sh
# Two "hosts" on this machine for live-migration tests: two network namespaces joined by
# a veth pair, and the x509 certificates QEMU's tls-creds-x509 reads for each.
#
#   tests/twohosts.sh up PREFIX BASEDIR
#       creates namespaces PREFIX-a and PREFIX-b, one veth end "mig0" in each (lo up in
#       both), a /24 of 10.64.0.0/10 that no other live PREFIX of this script holds, and
#       runs tests/migcerts.sh BASEDIR/certs a:IP_A b:IP_B. Prints on stdout only
#       shell-parsable lines (eval "$(tests/twohosts.sh up ...)"):
#         ns_a=PREFIX-a ns_b=PREFIX-b ip_a=10.X.Y.1 ip_b=10.X.Y.2 dev=mig0
#         certs_a=BASEDIR/certs/a certs_b=BASEDIR/certs/b   (the supervisors' channel)
#         qemu_certs_a=BASEDIR/certs/qemu-ca/a qemu_certs_b=...  (QEMU's; one variable a line)
#       Refuses (exit 1) when either namespace already exists: run down first.
#   tests/twohosts.sh down PREFIX
#       kills every process still in either namespace (ip netns pids: SIGTERM, then
#       SIGKILL after 2 s), deletes both namespaces (the veth pair goes with them).
#       Idempotent: exit 0 when nothing is there.
#   tests/twohosts.sh cut PREFIX     both veth ends down: a lost connection (TCP
#                                    connections stay open, packets are dropped)
#   tests/twohosts.sh heal PREFIX    both ends up again
#
# PREFIX: 1-20 characters of [A-Za-z0-9_.-], e.g. "vt$$". The subnet is taken from a
# hash of PREFIX, moved on to the next free /24 when another live prefix holds it; the
# allocation is recorded in /run/vmsup-twohosts/PREFIX.net under a lock, so parallel
# test programs get distinct subnets. Needs root and iproute2 (and gnutls-bin's
# certtool for the certificates).
set -eu

me=$0
here=$(cd "$(dirname "$0")" && pwd)
regdir=/run/vmsup-twohosts
dev=mig0

die() { printf 'twohosts: %s\n' "$*" >&2; exit "${2:-1}"; }
usage() { die "usage: $me up PREFIX BASEDIR | down PREFIX | cut PREFIX | heal PREFIX" 64; }

[ $# -ge 2 ] || usage
cmd=$1 prefix=$2
case $prefix in
'' | *[!A-Za-z0-9_.-]* | -*) die "PREFIX must be 1-20 characters of [A-Za-z0-9_.-], not starting with -" 64 ;;
esac
[ ${#prefix} -le 20 ] || die "PREFIX is longer than 20 characters" 64
[ "$(id -u)" -eq 0 ] || die "needs root (ip netns)" 77
command -v ip >/dev/null || die "ip is missing (Debian package iproute2)" 69
ns_a=$prefix-a
ns_b=$prefix-b

ns_exists() { [ -e "/run/netns/$1" ]; }

# A subnet's third and second octet from PREFIX: cksum (POSIX CRC) of the name.
subnet_for() { # prefix attempt -> "X.Y" of 10.X.Y.0/24, X in 64..127
	h=$(printf '%s' "$1" | cksum | cut -d' ' -f1)
	h=$(((h + $2) % 16384))
	echo "$((64 + h / 256)).$((h % 256))"
}

# Serialise allocation with flock(1) when present (util-linux), else mkdir as a lock.
lock() {
	mkdir -p "$regdir"
	if command -v flock >/dev/null; then
		exec 9>"$regdir/.lock"
		flock 9
	else
		i=0
		while ! mkdir "$regdir/.lockdir" 2>/dev/null; do
			i=$((i + 1))
			[ $i -lt 500 ] || die "cannot take $regdir/.lockdir"
			sleep 0.01
		done
		locked_dir=1
	fi
}
unlock() {
	if [ -n "${locked_dir:-}" ]; then rmdir "$regdir/.lockdir"; locked_dir=; else exec 9>&-; fi
}

kill_ns_pids() { # ns
	ns_exists "$1" || return 0
	pids=$(ip netns pids "$1" 2>/dev/null || true)
	[ -n "$pids" ] || return 0
	# shellcheck disable=SC2086
	kill -TERM $pids 2>/dev/null || true
	i=0
	while [ $i -lt 40 ]; do
		pids=$(ip netns pids "$1" 2>/dev/null || true)
		[ -n "$pids" ] || return 0
		sleep 0.05
		i=$((i + 1))
	done
	# shellcheck disable=SC2086
	kill -KILL $pids 2>/dev/null || true
	i=0
	while [ $i -lt 40 ] && [ -n "$(ip netns pids "$1" 2>/dev/null || true)" ]; do
		sleep 0.05
		i=$((i + 1))
	done
}

down() {
	kill_ns_pids "$ns_a"
	kill_ns_pids "$ns_b"
	for n in "$ns_a" "$ns_b"; do
		if ns_exists "$n"; then ip netns del "$n" || die "cannot delete namespace $n"; fi
	done
	rm -f "$regdir/$prefix.net"
}

link() { # up|down
	for n in "$ns_a" "$ns_b"; do
		ns_exists "$n" || die "namespace $n does not exist (run up first)"
		ip -n "$n" link set "$dev" "$1"
	done
}

up() {
	base=$1
	if ns_exists "$ns_a" || ns_exists "$ns_b"; then
		die "namespace $ns_a or $ns_b exists already: run '$me down $prefix' first"
	fi
	command -v certtool >/dev/null || die "certtool is missing (Debian package gnutls-bin)" 69
	lock
	# Drop records of prefixes whose namespaces are gone (a test that died without down).
	for f in "$regdir"/*.net; do
		[ -e "$f" ] || continue
		p=$(basename "$f" .net)
		ns_exists "$p-a" || ns_exists "$p-b" || rm -f "$f"
	done
	attempt=0
	while :; do
		net=$(subnet_for "$prefix" $attempt)
		grep -qxF "$net" "$regdir"/*.net 2>/dev/null || break
		attempt=$((attempt + 1))
		[ $attempt -lt 16384 ] || die "no free /24 left"
	done
	echo "$net" >"$regdir/$prefix.net"
	unlock
	ip_a=10.$net.1
	ip_b=10.$net.2
	trap 'down' EXIT
	ip netns add "$ns_a"
	ip netns add "$ns_b"
	ip link add name "$dev" netns "$ns_a" type veth peer name "$dev" netns "$ns_b"
	ip -n "$ns_a" addr add "$ip_a/24" dev "$dev"
	ip -n "$ns_b" addr add "$ip_b/24" dev "$dev"
	for n in "$ns_a" "$ns_b"; do
		ip -n "$n" link set lo up
		ip -n "$n" link set "$dev" up
	done
	mkdir -p "$base"
	base=$(cd "$base" && pwd)
	case $base in *[!A-Za-z0-9_./-]*) die "BASEDIR must be a path of [A-Za-z0-9_./-] (printed unquoted)" 64 ;; esac
	"$here/migcerts.sh" "$base/certs" "a:$ip_a" "b:$ip_b" >&2
	trap - EXIT
	printf 'ns_a=%s\nns_b=%s\nip_a=%s\nip_b=%s\ndev=%s\ncerts_a=%s\ncerts_b=%s\nqemu_certs_a=%s\nqemu_certs_b=%s\n' \
		"$ns_a" "$ns_b" "$ip_a" "$ip_b" "$dev" "$base/certs/a" "$base/certs/b" \
		"$base/certs/qemu-ca/a" "$base/certs/qemu-ca/b"
}

case $cmd in
up) [ $# -eq 3 ] || usage; up "$3" ;;
down) [ $# -eq 2 ] || usage; down ;;
cut) [ $# -eq 2 ] || usage; link down ;;
heal) [ $# -eq 2 ] || usage; link up ;;
*) usage ;;
esac
