#!/usr/bin/env bash
# How long `vmsup list` takes on a host of GUESTS guests (default 50) of which STUCK
# (default 5) have a supervisor that accepts on its control socket and never answers.
# Not part of check (tests assert no times). Usage: bench/list.sh [GUESTS [STUCK [ROUNDS]]]
# Needs a built vmsup (./dev build) and python3 for the stuck supervisors.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
top=$PWD
guests=${1:-50} stuck=${2:-5} rounds=${3:-5}
[ -x "$top/vmsup" ] || { echo "bench: build vmsup first (./dev build)" >&2; exit 1; }
[ "$stuck" -le "$guests" ] || { echo "bench: STUCK ($stuck) is more than GUESTS ($guests)" >&2; exit 1; }
root=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$root"' EXIT
mkdir -p "$root/state" "$root/run"
printf '[qemu]\naccelerator = tcg\n[paths]\nstate_dir = %s/state\nrun_dir = %s/run\nlog_dir = %s/log\n' \
  "$root" "$root" "$root" >"$root/vmsup.conf"
chmod 600 "$root/vmsup.conf"
for i in $(seq 1 "$guests"); do
  u=$(printf '00000000-0000-4000-8000-%012d' "$i")
  mkdir -p "$root/state/$u"
  printf '{"uuid": "%s", "name": "g%d", "vcpus": 1, "memory_mb": 256, "flavor": {"name": "m", "extra_specs": {"hw:tpm_version": "2.0", "hw:tpm_model": "tpm-crb"}}, "image": {"name": "d", "properties": {}}}\n' \
    "$u" "$i" >"$root/state/$u/guest.json"
  [ "$i" -le "$stuck" ] && mkdir -p "$root/run/$u"
done
# the stuck supervisors: listen, accept (the kernel's backlog does), never answer
python3 - "$root" "$stuck" <<'PY' &
import socket, sys, time
root, n = sys.argv[1], int(sys.argv[2])
held = []
for i in range(1, n + 1):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind("%s/run/00000000-0000-4000-8000-%012d/control.sock" % (root, i))
    s.listen(64)
    held.append(s)
open(root + "/ready", "w").close()
time.sleep(3600)
PY
pid=$!
while [ ! -e "$root/ready" ]; do sleep 0.05; done
for r in $(seq 1 "$rounds"); do
  t0=$(date +%s%N)
  "$top/vmsup" --config "$root/vmsup.conf" list >"$root/out"
  t1=$(date +%s%N)
  printf 'list: %d guests, %d stuck: %d ms (%d not-answering, %d stopped)\n' "$guests" "$stuck" \
    $(((t1 - t0) / 1000000)) "$(grep -c not-answering "$root/out")" "$(grep -c ' stopped ' "$root/out")"
done
