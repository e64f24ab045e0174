#!/usr/bin/env bash
# Smoke test of the demo guest with raw QEMU + swtpm (no vmsup): manufacture a TPM 2.0
# with swtpm_setup, boot the guest twice on the same state, and check that the NV
# counter went up by exactly one and the EK stayed the one swtpm_setup created.
#
# Usage: tests/guest/smoke.sh
# Environment: SMOKE_FIRMWARE=ovmf|seabios (default ovmf), SMOKE_MODEL=tpm-crb|tpm-tis
# (default tpm-crb), SMOKE_ACCEL (default tcg: never kvm on our machines),
# SMOKE_TIMEOUT seconds per boot (default 180), SMOKE_KEEP=1 keeps the temp dir.
# Exit: 0 pass, 1 fail, 69 a needed program is missing.
set -euo pipefail

firmware=${SMOKE_FIRMWARE:-ovmf}
model=${SMOKE_MODEL:-tpm-crb}
accel=${SMOKE_ACCEL:-tcg}
boot_timeout=${SMOKE_TIMEOUT:-180}
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd
ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd
src=$(cd "$(dirname "$0")" && pwd)

say() { printf 'smoke: %s\n' "$*"; }
fail() { printf 'smoke: FAIL: %s\n' "$*" >&2; exit 1; }
missing() { printf 'smoke: missing %s (install the Debian package %s)\n' "$1" "$2" >&2; exit 69; }

for t in swtpm:swtpm swtpm_setup:swtpm-tools swtpm_ioctl:swtpm-tools \
	qemu-system-x86_64:qemu-system-x86 timeout:coreutils; do
	command -v "${t%%:*}" >/dev/null || missing "${t%%:*}" "${t#*:}"
done
[ "$firmware" != ovmf ] || [ -r "$ovmf_code" ] || missing "$ovmf_code" ovmf
case $firmware in ovmf | seabios) ;; *) fail "SMOKE_FIRMWARE must be ovmf or seabios" ;; esac
case $model in tpm-crb | tpm-tis) ;; *) fail "SMOKE_MODEL must be tpm-crb or tpm-tis" ;; esac

tmp=$(mktemp -d /tmp/vmsup-smoke.XXXXXX)
qemu_pid=
swtpm_pidfile=$tmp/swtpm.pid
swtpm_pid=
swtpm_ctrl=$tmp/ctrl

# The daemonised swtpm is PID 1's child, and PID 1 here reaps late: a zombie is gone.
alive() { [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z ' "/proc/$1/stat" 2>/dev/null; }
# Not our child, so no wait(2): poll for up to 5 s.
wait_gone() {
	for _ in $(seq 100); do
		alive "$1" || return 0
		sleep 0.05
	done
	return 1
}

# Stop only what we started: QEMU by its pid (SIGTERM makes it shut the TPM down),
# then swtpm through its control channel, never SIGKILL (a TPM that never saw a
# shutdown can end up in dictionary-attack lockout).
cleanup() {
	local rc=$?
	if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
		kill -TERM "$qemu_pid" 2>/dev/null || true
		wait "$qemu_pid" 2>/dev/null || true
	fi
	if [ -n "$swtpm_pid" ] && alive "$swtpm_pid"; then
		swtpm_ioctl -s --unix "$swtpm_ctrl" >/dev/null 2>&1 || kill -TERM "$swtpm_pid" 2>/dev/null || true
	fi
	if [ "${SMOKE_KEEP:-0}" = 1 ]; then
		say "kept $tmp"
	else
		rm -rf "$tmp"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$src/build.sh" "$tmp/guest" >/dev/null

# Host phase (well under a second): tpmprobe over the data socket of a fresh,
# unmanufactured swtpm that nobody started up, so tpmprobe's own TPM2_Startup, the
# counter's definition and increments are checked before the slow boots.
mkdir -p "$tmp/host-state"
swtpm socket --tpm2 --daemon --pid file="$tmp/host.pid" --flags not-need-init \
	--tpmstate dir="$tmp/host-state" --server type=unixio,path="$tmp/host.sock" \
	--ctrl type=unixio,path="$tmp/host.ctrl" --log file="$tmp/swtpm-host.log" ||
	fail "swtpm did not start (host phase)"
swtpm_pid=$(cat "$tmp/host.pid") swtpm_ctrl=$tmp/host.ctrl
h1=$("$tmp/guest/tpmprobe" "unix:$tmp/host.sock" || true)
h2=$("$tmp/guest/tpmprobe" "unix:$tmp/host.sock" || true)
swtpm_ioctl -s --unix "$tmp/host.ctrl" >/dev/null || fail "swtpm_ioctl -s failed (host phase)"
wait_gone "$swtpm_pid" || fail "swtpm still running 5 s after CMD_SHUTDOWN (host phase)"
grep -qx 'tpmprobe: nv-counter=1' <<<"$h1" && grep -qx 'tpmprobe: nv-counter=2' <<<"$h2" ||
	fail "host phase: expected nv-counter 1 then 2, got: $h1 / $h2"
# No swtpm_setup here, so no EK: the documented error line, then failure.
grep -qx 'tpmprobe: error: TPM2_ReadPublic(EK 0x81010001) rc=0x0000018b' <<<"$h2" &&
	grep -qx 'tpmprobe: failed' <<<"$h2" || fail "host phase: missing-EK error not reported: $h2"
say "host: tpmprobe over swtpm's socket: NV counter 1 -> 2, missing EK reported"

# A private local CA: swtpm_setup's defaults would put it in /var/lib/swtpm-localca.
mkdir -p "$tmp/ca" "$tmp/state" "$tmp/home"
cat >"$tmp/swtpm-localca.conf" <<EOF
statedir = $tmp/ca
signingkey = $tmp/ca/signkey.pem
issuercert = $tmp/ca/issuercert.pem
certserial = $tmp/ca/certserial
EOF
cat >"$tmp/swtpm-localca.options" <<EOF
--platform-manufacturer vmsup
--platform-version 2.1
--platform-model QEMU
EOF
cat >"$tmp/swtpm_setup.conf" <<EOF
create_certs_tool = /usr/bin/swtpm_localca
create_certs_tool_config = $tmp/swtpm-localca.conf
create_certs_tool_options = $tmp/swtpm-localca.options
active_pcr_banks = sha256
EOF
HOME=$tmp/home swtpm_setup --tpm2 --tpmstate "$tmp/state" --createek --create-ek-cert \
	--create-platform-cert --lock-nvram --config "$tmp/swtpm_setup.conf" \
	--logfile "$tmp/swtpm_setup.log" >/dev/null 2>&1 ||
	fail "swtpm_setup failed: $(tail -n 3 "$tmp/swtpm_setup.log" 2>/dev/null)"
# swtpm_setup passes the RSA EK's modulus to the certificate tool: the host's view.
host_ek=$(grep -m1 -o -- '--type ek --ek [0-9a-f]*' "$tmp/swtpm_setup.log" | awk '{print substr($4, 1, 64)}')
[ -n "$host_ek" ] || fail "no RSA EK modulus in $tmp/swtpm_setup.log"

# Prints the value of "tpmprobe: KEY=VALUE" from a serial log (lines end in CR LF).
field() { tr -d '\r' <"$2" | sed -n "s/^tpmprobe: $1=//p" | head -n 1; }

boot() {
	local n=$1 log=$tmp/serial$1.log start end fw=()
	rm -f "$swtpm_pidfile"
	# --daemon returns once the control socket listens: no start-up race.
	swtpm socket --tpm2 --daemon --pid file="$swtpm_pidfile" \
		--tpmstate dir="$tmp/state" --ctrl type=unixio,path="$tmp/ctrl" \
		--log file="$tmp/swtpm$n.log" || fail "swtpm did not start (boot $n)"
	# swtpm removes its pid file when it exits: read it now.
	swtpm_pid=$(cat "$swtpm_pidfile") swtpm_ctrl=$tmp/ctrl
	if [ "$firmware" = ovmf ]; then
		cp "$ovmf_vars" "$tmp/VARS.fd"
		fw=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$ovmf_code"
			-drive "if=pflash,format=raw,unit=1,file=$tmp/VARS.fd")
	fi
	start=$(date +%s%N)
	timeout -s TERM "$boot_timeout" qemu-system-x86_64 -accel "$accel" -machine q35 -m 256 \
		-nographic -nodefaults -display none -no-reboot "${fw[@]}" \
		-chardev socket,id=chrtpm,path="$tmp/ctrl" \
		-tpmdev emulator,id=tpm0,chardev=chrtpm -device "$model",tpmdev=tpm0 \
		-kernel "$tmp/guest/vmlinuz" -initrd "$tmp/guest/initrd.img" \
		-append 'console=ttyS0 quiet panic=-1' -serial file:"$log" &
	qemu_pid=$!
	wait "$qemu_pid" || fail "QEMU exited with status $? on boot $n (timeout ${boot_timeout}s?); serial log: $(tr -d '\r' <"$log" | tail -n 5)"
	qemu_pid=
	end=$(date +%s%N)
	# swtpm stops by itself when QEMU goes (QEMU sends CMD_SHUTDOWN on exit).
	wait_gone "$swtpm_pid" || fail "swtpm still running 5 s after QEMU exited (boot $n)"
	say "boot $n ($firmware, $model, $accel): $(((end - start) / 1000000)) ms to power-off"
	tr -d '\r' <"$log" | grep -q '^tpmprobe: done$' ||
		fail "boot $n: no 'tpmprobe: done'; serial log: $(tr -d '\r' <"$log" | grep -a 'tpmprobe\|init:' || tail -n 5 "$log")"
	[ "$(field tpm-version "$log")" = 2.0 ] || fail "boot $n: tpm-version is not 2.0"
}

boot 1
boot 2
log1=$tmp/serial1.log log2=$tmp/serial2.log
grep -q '^tpmprobe: defined NV counter index' <(tr -d '\r' <"$log1") ||
	fail "boot 1 did not define the NV counter on a fresh TPM"
! grep -q '^tpmprobe: defined NV counter index' <(tr -d '\r' <"$log2") ||
	fail "boot 2 defined the NV counter again: TPM state was not kept"
a=$(field nv-counter "$log1") b=$(field nv-counter "$log2")
ek1=$(field ek "$log1") ek2=$(field ek "$log2")
[[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ ]] || fail "nv-counter missing (boot 1: '$a', boot 2: '$b')"
[ "$b" -eq $((a + 1)) ] || fail "NV counter $a -> $b, expected $a -> $((a + 1))"
[ -n "$ek1" ] && [ "$ek1" = "$ek2" ] || fail "EK changed: '$ek1' -> '$ek2'"
[ "$ek1" = "$host_ek" ] || fail "guest EK $ek1 is not the EK swtpm_setup created ($host_ek)"
say "EK seen by the guest is the one swtpm_setup created (modulus ${host_ek:0:16}...)"
say "TPM NV counter $a -> $b; EK unchanged"
