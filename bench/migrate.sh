#!/usr/bin/env bash
# Live migration through vmsup against QEMU's own migration between the same kind of two
# QEMUs without vmsup (the limit), in one run, on two "hosts" (network namespaces joined
# by a veth pair): total time and downtime, medians of N migrations each.
#
# Usage: bench/migrate.sh [N]    (default 10; needs root and a built tree: ./dev build)
#
# 1. QEMU alone, TLS and plain TCP: bench/migrate_qemu.sh (swtpm with --migration-key on
#    both sides, return-path, QEMU's tls-creds-x509), N migrations a<->b each.
# 2. vmsup: the demo guest in host mode under `vmsup run` on a, `vmsup run --incoming`
#    on the other side and `vmsup migrate` N times a<->b. total = `vmsup migrate` from
#    invocation until it returns (the guest runs on the destination with its TPM state
#    sealed and the source's copy is deleted); downtime as QEMU reports it.
# Prints both side by side, with what vmsup adds.
set -euo pipefail
top=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
runs=${1:-10}
uuid=6d1b8a52-8c4e-4f43-9a3e-0c1f5b7d2e90
say() { printf 'bench/migrate: %s\n' "$*" >&2; }
median() { sort -n | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else printf "%d\n", (v[NR/2]+v[NR/2+1])/2}'; }
now_ms() { local t=$EPOCHREALTIME; echo $((${t%.*} * 1000 + 10#${t#*.} / 1000)); }
[ "$(id -u)" -eq 0 ] || { echo "bench/migrate: needs root (network namespaces)" >&2; exit 77; }
[ -x "$top/vmsup" ] || { echo "bench/migrate: build first (./dev build)" >&2; exit 69; }
"$top/tests/guest/build.sh" "$top/.build/guest" >/dev/null

declare -A R
for mode in tls plain; do
  say "QEMU alone, $mode, $runs migrations"
  line=$("$top/bench/migrate_qemu.sh" --"$mode" "$runs" | grep '^median')
  R[qemu_${mode}_total]=$(sed -E 's/.*total_ms ([0-9]+).*/\1/' <<<"$line")
  R[qemu_${mode}_down]=$(sed -E 's/.*downtime_ms ([0-9]+).*/\1/' <<<"$line")
  R[qemu_${mode}_wall]=$(sed -E 's/.*wall_ms ([0-9]+).*/\1/' <<<"$line")
done

say "vmsup, $runs migrations"
w=$(mktemp -d /tmp/vmsup-bench-mig.XXXXXX)
prefix=vbm$$
cleanup() {
  "$top/tests/twohosts.sh" down "$prefix" >/dev/null 2>&1 || true
  "$top/tests/barbican/barbican.sh" stop "$w/barbican" >/dev/null 2>&1 || true
  rm -rf "$w"
}
trap cleanup EXIT
eval "$("$top/tests/twohosts.sh" up "$prefix" "$w")"
declare -A NS=([a]=$ns_a [b]=$ns_b) IP=([a]=$ip_a [b]=$ip_b)
mkdir "$w/barbican"
url=$(ip netns exec "$ns_a" "$top/tests/barbican/barbican.sh" start "$w/barbican" $$)
for h in a b; do
  cat >"$w/$h.conf" <<CONF
[tpm]
swtpm_enabled = true
swtpm_user = root
swtpm_group = root
[qemu]
accelerator = tcg
[paths]
state_dir = $w/$h/state
run_dir = $w/$h/run
secrets_dir = $w/$h/state/secrets
log_dir = $w/$h/log
[barbican]
endpoint = $url
auth = noauth
[migration]
tls_dir = $w/certs/$h
CONF
done
cat >"$w/guest.json" <<SPEC
{"uuid": "$uuid", "name": "bench", "vcpus": 1, "memory_mb": 256,
 "owner": {"user_id": "u", "project_id": "p"},
 "flavor": {"name": "m1.tpm", "extra_specs": {"hw:tpm_version": "2.0", "hw:tpm_model": "tpm-crb", "hw:tpm_secret_security": "host"}},
 "image": {"name": "bench", "properties": {"hw_firmware_type": "uefi"}},
 "firmware": {"kernel": "$top/.build/guest/vmlinuz", "initrd": "$top/.build/guest/initrd.img", "cmdline": "console=ttyS0 quiet tpmprobe.hold"}}
SPEC
vm() { local h=$1; shift; ip netns exec "${NS[$h]}" "$top/vmsup" --config "$w/$h.conf" "$@"; }
vm a run --token-fd 3 "$w/guest.json" 3<<<p >"$w/run-a.out" 2>"$w/run-a.err" &
for _ in $(seq 600); do
  grep -qa 'init: holding' "$w/a/log/$uuid/console.log" 2>/dev/null && break
  sleep 0.2
done
grep -qa 'init: holding' "$w/a/log/$uuid/console.log" || { cat "$w/run-a.err" >&2; exit 1; }
src=a dst=b
totals=() downs=()
printf '%-4s %-6s %9s %12s\n' run dir total_ms downtime_ms
for i in $(seq "$runs"); do
  vm $dst run --incoming 49152 $uuid >"$w/in-$i.out" 2>"$w/in-$i.err" &
  for _ in $(seq 200); do grep -q 'waiting up to' "$w/in-$i.err" && break; sleep 0.05; done
  t0=$(now_ms)
  out=$(vm $src migrate --quiet $uuid --to "${IP[$dst]}") || { cat "$w/in-$i.err" >&2; exit 1; }
  t1=$(now_ms)
  down=$(sed -E 's/.*downtime ([0-9]+) ms.*/\1/' <<<"$out")
  printf '%-4s %-6s %9s %12s\n' "$i" "$src->$dst" $((t1 - t0)) "$down"
  totals+=($((t1 - t0))) downs+=("$down")
  tmp=$src src=$dst dst=$tmp
done
vm $src stop --force $uuid >/dev/null || true
R[vmsup_total]=$(printf '%s\n' "${totals[@]}" | median)
R[vmsup_down]=$(printf '%s\n' "${downs[@]}" | median)

echo
printf 'medians of %d migrations each, 256 MiB guest, TCG, two network namespaces on one machine\n' "$runs"
printf '%-34s %10s %13s\n' "" total_ms downtime_ms
printf '%-34s %10s %13s\n' "QEMU alone, plain TCP" "${R[qemu_plain_wall]}" "${R[qemu_plain_down]}"
printf '%-34s %10s %13s\n' "QEMU alone, TLS (the limit)" "${R[qemu_tls_wall]}" "${R[qemu_tls_down]}"
printf '%-34s %10s %13s\n' "vmsup (TLS, sealed, handshake)" "${R[vmsup_total]}" "${R[vmsup_down]}"
printf 'vmsup adds %d ms to the total and %s%% to the downtime (aim: under 100 ms, under 10%%)\n' \
  $((R[vmsup_total] - R[qemu_tls_wall])) \
  "$(awk -v a="${R[vmsup_down]}" -v b="${R[qemu_tls_down]}" 'BEGIN {printf "%+.0f", b ? (a - b) * 100 / b : 0}')"
