#!/usr/bin/env bash
# QEMU's own live migration between two "hosts" (network namespaces joined by a veth
# pair, tests/twohosts.sh), with swtpm on each side: the baseline ("limit") that vmsup's
# migration is measured against. No vmsup involved.
#
# Usage: bench/migrate_qemu.sh [--tls | --plain | --tunnel] [options] [N]
#   N                  migrations, alternating a->b, b->a, ... (default 10)
#   --tls              QEMU's TLS (tls-creds-x509, verify-peer=true both ends; default)
#   --plain            plain tcp
#   --tunnel           QEMU's plain stream through a TLS 1.3 tunnel between two relays
#                      (bench/tls_relay.c) that play the two supervisors: see below
#   --cpu              also print the CPU time (utime+stime) each QEMU used per run
#   --no-guest         no kernel: OVMF alone (it idles in the UEFI shell)
#   --no-boot-wait     migrate as soon as the guest runs, not after it booted to userspace
#   --sandbox          QEMU with -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny
#   --max-bandwidth B  migrate-set-parameters max-bandwidth (bytes/s) on each source
#   --mem MIB          guest RAM (default 256)
#   --keep             keep the work directory (logs, state dirs) and print its path
#
# Each side is set up as vmsup will: swtpm socket --tpm2 --tpmstate dir=STATE,mode=0600
# --ctrl type=unixio,path=CTRL --migration-key fd=3,format=binary,mode=aes-256-cbc (one
# random 32-byte key shared by both sides; the first source's state made by swtpm_setup
# --tpm2 --createek, every destination's state dir empty) and QEMU (TCG, q35, OVMF,
# tpm-crb, -S, the destination with -incoming defer), QMP over a pipe chardev. Per
# migration: return-path on both sides, tls-creds (+ tls-hostname = the destination's
# IP) when --tls, migrate-incoming tcp:IP_DST:0 and the port from query-migrate's
# socket-address, migrate on the source, poll query-migrate every 10 ms until completed,
# wait for the destination to be paused, cont it, check that its tpm2-00.permall is
# byte-identical to the source's, quit the source. After the last run the guest is sent
# the ACPI power button; with the demo guest it must answer on the console (proof that
# it survived every migration), then it powers off.
#
# --tunnel: the alternative to QEMU's TLS where each supervisor carries the stream over
# its own TLS channel. bench/tls_relay.c is built (gcc, gnutls) into the work directory.
# Per migration, before the timed part (the supervisors' channel would exist already):
# migrate-incoming tcp:127.0.0.1:0 on the destination (QEMU listens on that host's
# loopback only), `tls_relay server IP_DST:0 127.0.0.1:QEMU_PORT` on the destination
# (server-cert/key), `tls_relay client 127.0.0.1:0 IP_DST:RELAY_PORT` on the source
# (client-cert/key; it connects and completes the TLS 1.3 handshake, mutual x509 with
# the certificates --tls uses, then listens); the source QEMU migrates in plain tcp to
# the client relay. Both relays carry both directions (the return path) and exit when
# both are closed; each prints its CPU time (getrusage, user + system) at its exit,
# shown per run as relay_cpu_ms client+server, with its median.
#
# Prints per run: total_ms and downtime_ms as QEMU's query-migrate on the source reports
# them (total-time, downtime), setup_ms, wall_ms (our `migrate` command until the
# destination's `cont` returned) and MiB transferred; then medians. --cpu adds each
# QEMU's CPU time from just before `migrate` until `cont` returned (/proc/PID/stat
# utime+stime, 10 ms ticks): src_cpu_ms, dst_cpu_ms. Exit 0 on success, 1 on any
# failure. Needs root, and Debian packages only: iproute2, gnutls-bin, qemu-system-x86,
# swtpm, swtpm-tools, ovmf (and for the demo guest: linux-image-amd64 busybox-static cpio
# gzip gcc libc6-dev; for --tunnel: gcc libc6-dev libgnutls28-dev pkg-config); missing
# ones are installed with apt-get.

# shellcheck disable=SC2054,SC2154 # QEMU's options have commas; ns_a ... come from eval
set -euo pipefail

top=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
say() { printf 'migrate_qemu: %s\n' "$*" >&2; }
die() { printf 'migrate_qemu: error: %s\n' "$*" >&2; exit 1; }

runs=10 tls=1 tunnel=0 cpu=0 guest=1 boot_wait=1 sandbox=0 maxbw='' mem=256 keep=0
while [ $# -gt 0 ]; do
	case $1 in
	--tls) tls=1 tunnel=0 ;;
	--plain) tls=0 tunnel=0 ;;
	--tunnel) tls=0 tunnel=1 ;;
	--cpu) cpu=1 ;;
	--no-guest) guest=0 boot_wait=0 ;;
	--no-boot-wait) boot_wait=0 ;;
	--sandbox) sandbox=1 ;;
	--max-bandwidth) maxbw=${2:?}; shift ;;
	--mem) mem=${2:?}; shift ;;
	--keep) keep=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	[0-9]*) runs=$1 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
	shift
done
case $runs in '' | *[!0-9]* | 0) die "N must be a positive number" ;; esac
case $mem in '' | *[!0-9]* | 0) die "--mem must be a positive number of MiB" ;; esac
case $maxbw in *[!0-9]*) die "--max-bandwidth must be a number of bytes per second" ;; esac
[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces)"

ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd
ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd
packages=(iproute2 gnutls-bin qemu-system-x86 swtpm swtpm-tools ovmf)
[ $guest -eq 0 ] || packages+=(linux-image-amd64 busybox-static cpio gzip gcc libc6-dev)
[ $tunnel -eq 0 ] || packages+=(gcc libc6-dev libgnutls28-dev pkg-config)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	say "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/vmsup-migq.XXXXXX)
prefix=mq$$
declare -A NS IP CERTS QCERTS QPID SPID QIN QOUT DIR RPID
slot_live=()

# ---- QMP over a pipe chardev: QEMU reads DIR/qmp.in and writes DIR/qmp.out -------------
R=
# One line from slot's QMP into L, within $2 seconds; 1 on timeout or when QEMU exited.
# read -t keeps what it got of a line when it times out: put the pieces together.
qmp_line() {
	local s=$1 part='' i
	L=
	for i in $(seq $(($2 * 10))); do
		if IFS= read -r -t 0.1 L <&"${QOUT[$s]}"; then
			L=$part$L
			return 0
		fi
		part=$part$L
		alive "${QPID[$s]}" || { L="(QEMU exited: $(tail -c 600 "${DIR[$s]}/qemu.log"))"; return 1; }
	done
	L="(no reply from QEMU within $2 s)"
	return 1
}
qmp_try() { # slot json: R = the reply line; 1 if it is an error
	printf '%s\n' "$2" >&"${QIN[$1]}"
	while qmp_line "$1" 60; do
		case $L in
		'{"return"'*) R=$L; return 0 ;;
		'{"error"'*) R=$L; return 1 ;;
		esac # events: skipped
	done
	R=$L
	return 1
}
qmp() { qmp_try "$@" || die "$1: $2 -> $R"; }
jnum() { sed -n "s/.*\"$1\": \\([0-9][0-9]*\\).*/\\1/p" <<<"$R"; }
jstr() { sed -n "s/.*\"$1\": \"\\([^\"]*\\)\".*/\\1/p" <<<"$R"; }
status() { qmp "$1" '{"execute":"query-status"}'; jstr status; }

alive() { [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z ' "/proc/$1/stat" 2>/dev/null; }

# Start swtpm + QEMU in slot's namespace, in a new directory. $2=incoming (0|1).
gen=0
start_vm() {
	local s=$1 incoming=$2 d i
	gen=$((gen + 1))
	d=$work/$s.$gen
	DIR[$s]=$d
	mkdir -p "$d/state"
	chmod 0700 "$d/state"
	[ "$incoming" -eq 1 ] || cp -p "$work/mfg/tpm2-00.permall" "$d/state/"
	cp "$ovmf_vars" "$d/VARS.fd"
	ip netns exec "${NS[$s]}" swtpm socket --tpm2 --tpmstate "dir=$d/state,mode=0600" \
		--ctrl "type=unixio,path=$d/ctrl" --migration-key fd=3,format=binary,mode=aes-256-cbc \
		--log "file=$d/swtpm.log" 3<"$work/mkey" &
	SPID[$s]=$!
	for i in $(seq 500); do
		[ -S "$d/ctrl" ] && break
		alive "${SPID[$s]}" || die "swtpm in ${NS[$s]} exited: $(cat "$d/swtpm.log" 2>/dev/null)"
		sleep 0.01
	done
	[ -S "$d/ctrl" ] || die "swtpm in ${NS[$s]}: no control socket after 5 s"
	mkfifo "$d/qmp.in" "$d/qmp.out"
	local args=(-accel tcg -machine q35 -m "$mem" -nographic -nodefaults -display none
		-drive "if=pflash,format=raw,unit=0,readonly=on,file=$ovmf_code"
		-drive "if=pflash,format=raw,unit=1,file=$d/VARS.fd"
		-chardev "socket,id=chrtpm,path=$d/ctrl" -tpmdev emulator,id=tpm0,chardev=chrtpm
		-device tpm-crb,tpmdev=tpm0 -serial "file:$d/serial.log"
		-chardev "pipe,id=qmp0,path=$d/qmp" -mon chardev=qmp0,mode=control -S)
	[ $guest -eq 0 ] || args+=(-kernel "$work/guest/vmlinuz" -initrd "$work/guest/initrd.img"
		-append 'console=ttyS0 tpmprobe.hold')
	[ $sandbox -eq 0 ] || args+=(-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny)
	[ "$incoming" -eq 0 ] || args+=(-incoming defer)
	ip netns exec "${NS[$s]}" qemu-system-x86_64 "${args[@]}" >"$d/qemu.log" 2>&1 &
	QPID[$s]=$!
	local qin qout
	exec {qin}<>"$d/qmp.in" {qout}<>"$d/qmp.out"
	QIN[$s]=$qin QOUT[$s]=$qout
	slot_live+=("$s")
	qmp_line "$s" 30 || die "QEMU in ${NS[$s]}: no QMP greeting: $L"
	case $L in '{"QMP"'*) ;; *) die "QEMU in ${NS[$s]}: not a QMP greeting: $L" ;; esac
	qmp "$s" '{"execute":"qmp_capabilities"}'
	qmp "$s" '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"return-path","state":true}]}}'
	if [ $tls -eq 1 ]; then
		local ep=client
		[ "$incoming" -eq 0 ] || ep=server
		qmp "$s" '{"execute":"object-add","arguments":{"qom-type":"tls-creds-x509","id":"tls-'$ep'","endpoint":"'$ep'","dir":"'"${QCERTS[$s]}"'","verify-peer":true}}'
	fi
}

# Stop a slot's QEMU (QMP quit; swtpm then exits by itself) and close its QMP pipes.
stop_vm() {
	local s=$1 i
	if alive "${QPID[$s]}"; then
		qmp_try "$s" '{"execute":"quit"}' || kill -TERM "${QPID[$s]}" 2>/dev/null || true
	fi
	wait "${QPID[$s]}" 2>/dev/null || true
	for i in $(seq 300); do
		alive "${SPID[$s]}" || break
		sleep 0.01
	done
	if alive "${SPID[$s]}"; then
		swtpm_ioctl -s --unix "${DIR[$s]}/ctrl" >/dev/null 2>&1 || kill -TERM "${SPID[$s]}" 2>/dev/null || true
	fi
	wait "${SPID[$s]}" 2>/dev/null || true
	local qin=${QIN[$s]} qout=${QOUT[$s]}
	exec {qin}>&- {qout}>&-
	local keep_slots=()
	for i in "${slot_live[@]}"; do [ "$i" = "$s" ] || keep_slots+=("$i"); done
	slot_live=(${keep_slots[@]+"${keep_slots[@]}"})
}

cleanup() {
	local rc=$? s
	trap - EXIT INT TERM
	set +e
	for s in ${slot_live[@]+"${slot_live[@]}"}; do stop_vm "$s"; done
	"$top/tests/twohosts.sh" down "$prefix" >/dev/null 2>&1
	if [ $keep -eq 1 ]; then say "kept $work"; else rm -rf "$work"; fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- set up ------------------------------------------------------------------------
eval "$("$top/tests/twohosts.sh" up "$prefix" "$work")"
NS[a]=$ns_a NS[b]=$ns_b IP[a]=$ip_a IP[b]=$ip_b CERTS[a]=$certs_a CERTS[b]=$certs_b QCERTS[a]=$qemu_certs_a QCERTS[b]=$qemu_certs_b
head -c 32 /dev/urandom >"$work/mkey"
mkdir -p "$work/mfg"
swtpm_setup --tpm2 --tpm-state "$work/mfg" --createek >"$work/mfg.log" 2>&1 ||
	die "swtpm_setup failed: $(cat "$work/mfg.log")"
if [ $tunnel -eq 1 ]; then
	# shellcheck disable=SC2046 # pkg-config's flags are words
	gcc -O2 -o "$work/tls_relay" "$top/bench/tls_relay.c" $(pkg-config --cflags --libs gnutls) \
		>"$work/relay-build.log" 2>&1 || die "cannot build bench/tls_relay.c: $(cat "$work/relay-build.log")"
fi
if [ $guest -eq 1 ]; then
	"$top/tests/guest/build.sh" "$work/guest" >"$work/guest.log" 2>&1 ||
		die "tests/guest/build.sh failed (or use --no-guest): $(cat "$work/guest.log")"
fi
mode=plain
[ $tls -eq 0 ] || mode=tls
[ $tunnel -eq 0 ] || mode=tunnel
say "$runs migrations, $mode, ${mem} MiB, guest: $([ $guest -eq 1 ] && echo demo kernel || echo OVMF only), a=${IP[a]} (${NS[a]}) b=${IP[b]} (${NS[b]})"

start_vm a 0
qmp a '{"execute":"cont"}'
if [ $boot_wait -eq 1 ]; then
	say "waiting for the guest to boot (OVMF + kernel under TCG: 20-40 s)"
	for i in $(seq 1800); do
		grep -q 'init: holding until the power button' "${DIR[a]}/serial.log" 2>/dev/null && break
		alive "${QPID[a]}" || die "QEMU exited during boot: $(cat "${DIR[a]}/qemu.log")"
		sleep 0.1
	done
	grep -q 'init: holding' "${DIR[a]}/serial.log" || die "guest did not boot within 180 s (${DIR[a]}/serial.log)"
	grep -a 'tpmprobe:' "${DIR[a]}/serial.log" | tr -d '\r' | sed 's/^/guest: /' >&2
fi

now_ms() { local t=$EPOCHREALTIME; echo $((${t%.*} * 1000 + 10#${t#*.} / 1000)); }
median() { sort -n | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else printf "%d\n", (v[NR/2]+v[NR/2+1])/2}'; }
# A process's utime+stime in ms (fields 14 and 15 of /proc/PID/stat, after the comm).
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%d\n", ($12 + $13) * 1000 / hz}' "/proc/$1/stat"; }

# Start a relay (client|server) in slot's namespace; sets RP (its port once it is ready:
# the server listens for the client, the client completed its handshake and listens for
# QEMU).
start_relay() { # slot role listen target
	local s=$1 role=$2 d=${DIR[$1]} i
	ip netns exec "${NS[$s]}" "$work/tls_relay" "$role" "$3" "$4" "${CERTS[$s]}" \
		>"$d/relay-$role.out" 2>"$d/relay-$role.log" &
	RPID[$role]=$!
	RP=
	for i in $(seq 1000); do
		RP=$(sed -n 's/^ready \([0-9][0-9]*\)$/\1/p' "$d/relay-$role.out")
		[ -z "$RP" ] || return 0
		alive "${RPID[$role]}" || die "relay $role in ${NS[$s]} exited: $(cat "$d/relay-$role.log")"
		sleep 0.01
	done
	die "relay $role in ${NS[$s]}: not ready after 10 s: $(cat "$d/relay-$role.log")"
}
# Wait for a relay to exit (both directions closed); RC = its CPU time in ms.
end_relay() { # slot role
	local s=$1 role=$2 d=${DIR[$1]} i rc=0
	for i in $(seq 1000); do
		alive "${RPID[$role]}" || break
		sleep 0.01
	done
	alive "${RPID[$role]}" && die "relay $role in ${NS[$s]} still running 10 s after the migration: $(cat "$d/relay-$role.log")"
	wait "${RPID[$role]}" || rc=$?
	[ $rc -eq 0 ] || die "relay $role in ${NS[$s]} failed ($rc): $(cat "$d/relay-$role.log")"
	RC=$(sed -n 's/.* cpu_ms \([0-9][0-9]*\) .*/\1/p' "$d/relay-$role.log")
	[ -n "$RC" ] || die "relay $role in ${NS[$s]}: no CPU time in its log: $(cat "$d/relay-$role.log")"
}

totals=() downs=() walls=() rcpus=() scpus=() dcpus=()
hdr=$(printf '%-4s %-6s %9s %12s %9s %8s %9s %-9s' run dir total_ms downtime_ms setup_ms wall_ms MiB permall)
[ $cpu -eq 0 ] || hdr+=$(printf ' %10s %10s' src_cpu_ms dst_cpu_ms)
[ $tunnel -eq 0 ] || hdr+=$(printf ' %s' 'relay_cpu_ms (client+server)')
printf '%s\n' "${hdr%"${hdr##*[! ]}"}"
src=a dst=b
for run in $(seq "$runs"); do
	start_vm "$dst" 1
	if [ $tls -eq 1 ]; then
		qmp "$dst" '{"execute":"migrate-set-parameters","arguments":{"tls-creds":"tls-server"}}'
		# A VM that arrived by migration holds the server creds: give it client ones once.
		qmp_try "$src" '{"execute":"object-add","arguments":{"qom-type":"tls-creds-x509","id":"tls-client","endpoint":"client","dir":"'"${QCERTS[$src]}"'","verify-peer":true}}' ||
			case $R in *duplicate*) ;; *) die "$src: object-add tls-client -> $R" ;; esac
		qmp "$src" '{"execute":"migrate-set-parameters","arguments":{"tls-creds":"tls-client","tls-hostname":"'"${IP[$dst]}"'"}}'
	else
		qmp "$src" '{"execute":"migrate-set-parameters","arguments":{"tls-creds":"","tls-hostname":""}}'
	fi
	qmp "$src" '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"return-path","state":true}]}}'
	[ -z "$maxbw" ] || qmp "$src" '{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":'"$maxbw"'}}'
	in_ip=${IP[$dst]}
	[ $tunnel -eq 0 ] || in_ip=127.0.0.1
	qmp "$dst" '{"execute":"migrate-incoming","arguments":{"uri":"tcp:'"$in_ip"':0"}}'
	qmp "$dst" '{"execute":"query-migrate"}'
	port=$(jstr port)
	[ -n "$port" ] || die "no port in the destination's query-migrate: $R"
	target=${IP[$dst]}:$port
	if [ $tunnel -eq 1 ]; then
		start_relay "$dst" server "${IP[$dst]}:0" "127.0.0.1:$port"
		start_relay "$src" client 127.0.0.1:0 "${IP[$dst]}:$RP"
		target=127.0.0.1:$RP
	fi
	[ $cpu -eq 0 ] || { scpu0=$(cpu_ms "${QPID[$src]}"); dcpu0=$(cpu_ms "${QPID[$dst]}"); }
	t0=$(now_ms)
	qmp "$src" '{"execute":"migrate","arguments":{"uri":"tcp:'"$target"'"}}'
	while :; do
		qmp "$src" '{"execute":"query-migrate"}'
		st=$(jstr status)
		case $st in completed) break ;; failed | cancelled) die "run $run $src->$dst: $st: $(jstr error-desc) (destination log: $(cat "${DIR[$dst]}/qemu.log"))" ;; esac
		sleep 0.01
	done
	total=$(jnum total-time) down=$(jnum downtime) setup=$(jnum setup-time) bytes=$(jnum transferred)
	for i in $(seq 1000); do
		[ "$(status "$dst")" = paused ] && break
		sleep 0.01
	done
	qmp "$dst" '{"execute":"cont"}'
	wall=$(($(now_ms) - t0))
	[ $cpu -eq 0 ] || { scpu=$(($(cpu_ms "${QPID[$src]}") - scpu0)); dcpu=$(($(cpu_ms "${QPID[$dst]}") - dcpu0)); }
	[ "$(status "$dst")" = running ] || die "run $run: destination not running after cont"
	[ "$(status "$src")" = postmigrate ] || die "run $run: source is $(status "$src"), not postmigrate"
	if cmp -s "${DIR[$src]}/state/tpm2-00.permall" "${DIR[$dst]}/state/tpm2-00.permall"; then perm=identical; else perm=DIFFERENT; fi
	if [ $tunnel -eq 1 ]; then
		end_relay "$src" client
		rc_client=$RC
		end_relay "$dst" server
		rcpus+=($((rc_client + RC)))
		rcpu_text="$((rc_client + RC)) ($rc_client+$RC)"
	fi
	line=$(printf '%-4s %-6s %9s %12s %9s %8s %9s %-9s' "$run" "$src->$dst" "$total" "$down" "$setup" "$wall" \
		"$(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1048576}')" "$perm")
	[ $cpu -eq 0 ] || { line+=$(printf ' %10s %10s' "$scpu" "$dcpu"); scpus+=("$scpu") dcpus+=("$dcpu"); }
	[ $tunnel -eq 0 ] || line+=" $rcpu_text"
	printf '%s\n' "${line%"${line##*[! ]}"}"
	[ $perm = identical ] || die "destination permall differs from the source's"
	totals+=("$total") downs+=("$down") walls+=("$wall")
	stop_vm "$src"
	tmp=$src src=$dst dst=$tmp
done
line=$(printf 'median (%s, %d runs): total_ms %s downtime_ms %s wall_ms %s' "$mode" "$runs" \
	"$(printf '%s\n' "${totals[@]}" | median)" "$(printf '%s\n' "${downs[@]}" | median)" \
	"$(printf '%s\n' "${walls[@]}" | median)")
[ $cpu -eq 0 ] || line+=" src_cpu_ms $(printf '%s\n' "${scpus[@]}" | median) dst_cpu_ms $(printf '%s\n' "${dcpus[@]}" | median)"
[ $tunnel -eq 0 ] || line+=" relay_cpu_ms $(printf '%s\n' "${rcpus[@]}" | median)"
printf '%s\n' "$line"

if [ $boot_wait -eq 1 ]; then
	qmp "$src" '{"execute":"system_powerdown"}'
	for i in $(seq 300); do
		grep -q 'init: power button pressed' "${DIR[$src]}/serial.log" 2>/dev/null && break
		sleep 0.1
	done
	grep -q 'init: power button pressed' "${DIR[$src]}/serial.log" ||
		die "the guest did not answer the power button after the last migration"
	say "guest alive after $runs migrations (answered the power button)"
	wait "${QPID[$src]}" 2>/dev/null || true
fi
