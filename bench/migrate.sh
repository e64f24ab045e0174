#!/usr/bin/env bash
# Live migration through vmsup against QEMU's own migration between the same kind of two
# QEMUs without vmsup (the limit), in one run, on two "hosts" (network namespaces joined
# by a veth pair): total time and downtime, medians of N migrations each.
#
# Usage: bench/migrate.sh [N]    (default 10; needs root and a built tree: ./dev build)
#
# 1. QEMU alone: bench/migrate_qemu.sh (swtpm with --migration-key on both sides,
#    return-path), N migrations a<->b each: plain TCP; QEMU's TLS (tls-creds-x509); plain
#    TCP through a pair of TLS 1.3 relays (bench/tls_relay.c, standing in for a tunnel
#    through the supervisors, the design not taken: docs/migration.md); QEMU's TLS with
#    the -sandbox options vmsup gives QEMU (the limit vmsup is compared with).
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
# sandboxed: QEMU with the -sandbox options vmsup gives it
for mode in plain tls tunnel sandboxed; do
  say "QEMU alone, $mode, $runs migrations"
  opts=(--"$mode")
  [ "$mode" = sandboxed ] && opts=(--tls --sandbox)
  line=$("$top/bench/migrate_qemu.sh" "${opts[@]}" "$runs" | tee /dev/stderr | grep "^median")
  R[qemu_${mode}_total]=$(sed -E 's/.*total_ms ([0-9]+).*/\1/' <<<"$line")
  R[qemu_${mode}_down]=$(sed -E 's/.*downtime_ms ([0-9]+).*/\1/' <<<"$line")
  R[qemu_${mode}_wall]=$(sed -E 's/.*wall_ms ([0-9]+).*/\1/' <<<"$line")
  R[qemu_${mode}_line]=$line
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
qemu_tls_dir = $w/certs/qemu-ca/$h
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
totals=() downs=() qtotals=() adds=() preps=() switches=() cleanups=()
field() { sed -E "s/.*\"$1\":([0-9]+).*/\\1/" <<<"$2"; }
printf '%-4s %-6s %8s %11s %9s %10s %10s %13s %10s\n' run dir wall_ms downtime_ms qemu_ms prepare_ms switch_ms vmsup_adds_ms cleanup_ms
for i in $(seq "$runs"); do
  vm $dst run --incoming 49152 --spec "$w/guest.json" $uuid >"$w/in-$i.out" 2>"$w/in-$i.err" &
  for _ in $(seq 200); do grep -q 'waiting up to' "$w/in-$i.err" && break; sleep 0.05; done
  t0=$(now_ms)
  out=$(vm $src migrate --quiet --json $uuid --to "${IP[$dst]}" | tail -n 1) || { cat "$w/in-$i.err" >&2; exit 1; }
  t1=$(now_ms)
  down=$(field downtime_ms "$out") qt=$(field qemu_total_ms "$out") tot=$(field total_ms "$out")
  prep=$(field prepare_ms "$out") sw=$(field switchover_ms "$out") cl=$(field cleanup_ms "$out")
  printf '%-4s %-6s %8s %11s %9s %10s %10s %13s %10s\n' "$i" "$src->$dst" $((t1 - t0)) "$down" "$qt" "$prep" "$sw" \
    $((tot - qt)) "$cl"
  totals+=($((t1 - t0))) downs+=("$down") qtotals+=("$qt") adds+=($((tot - qt))) preps+=("$prep") switches+=("$sw")
  cleanups+=("$cl")
  tmp=$src src=$dst dst=$tmp
done
vm $src stop --force $uuid >/dev/null || true
R[vmsup_total]=$(printf '%s\n' "${totals[@]}" | median)
R[vmsup_down]=$(printf '%s\n' "${downs[@]}" | median)
R[vmsup_qtotal]=$(printf '%s\n' "${qtotals[@]}" | median)
R[vmsup_adds]=$(printf '%s\n' "${adds[@]}" | median)
R[vmsup_prep]=$(printf '%s\n' "${preps[@]}" | median)
R[vmsup_switch]=$(printf '%s\n' "${switches[@]}" | median)
R[vmsup_cleanup]=$(printf '%s\n' "${cleanups[@]}" | median)

echo
printf 'medians of %d migrations each, 256 MiB guest, TCG, two network namespaces on one machine\n' "$runs"
printf '%-32s %13s %13s %13s\n' "" qemu_total_ms downtime_ms wall_ms
printf '%-32s %13s %13s %13s\n' "QEMU alone, plain TCP" "${R[qemu_plain_total]}" "${R[qemu_plain_down]}" "${R[qemu_plain_wall]}"
printf '%-32s %13s %13s %13s\n' "QEMU alone, TLS" "${R[qemu_tls_total]}" "${R[qemu_tls_down]}" "${R[qemu_tls_wall]}"
printf '%-32s %13s %13s %13s\n' "QEMU alone, plain via TLS relays" "${R[qemu_tunnel_total]}" "${R[qemu_tunnel_down]}" \
  "${R[qemu_tunnel_wall]}"
printf '%-32s %13s %13s %13s\n' "QEMU alone, TLS, -sandbox (limit)" "${R[qemu_sandboxed_total]}" "${R[qemu_sandboxed_down]}" \
  "${R[qemu_sandboxed_wall]}"
printf '%-32s %13s %13s %13s\n' "vmsup (TLS)" "${R[vmsup_qtotal]}" "${R[vmsup_down]}" "${R[vmsup_total]}"
printf 'vmsup around QEMU: destination prepared in %s ms, switch-over %s ms, source copy removed in %s ms\n' \
  "${R[vmsup_prep]}" "${R[vmsup_switch]}" "${R[vmsup_cleanup]}"
printf 'vmsup adds %s ms to the total (request to guest running on the destination, less QEMU'"'"'s own total-time; aim: under 100)\n' \
  "${R[vmsup_adds]}"
printf 'downtime: %s ms through vmsup against %s ms for QEMU alone with TLS and -sandbox: %s%% (aim: under +10%%)\n' \
  "${R[vmsup_down]}" "${R[qemu_sandboxed_down]}" \
  "$(awk -v a="${R[vmsup_down]}" -v b="${R[qemu_sandboxed_down]}" 'BEGIN {printf "%+.0f", b ? (a - b) * 100 / b : 0}')"
printf 'wall_ms: QEMU alone from its migrate command until the destination'"'"'s cont returned; vmsup from\n'
printf '`vmsup migrate` until it returned (the guest runs on the destination and the source copy is gone)\n'
