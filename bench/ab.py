#!/usr/bin/python3
"""Two (or more) vmsup builds against bare exec, interleaved round by round: a quick A/B
of a change on a shared machine, where only ratios within one session mean much.

    bench/ab.py [--runs N] [--host-mode] VMSUP_A VMSUP_B ...    (as root)

Each round, for each vmsup build and for bare exec: a new guest (the demo guest, UEFI,
256 MiB, as the latency phase), first start, 1 s, forced stop, later start, 1 s, forced
stop. No boot to the prompt and no libvirt: minutes, not the latency phase's quarter of
an hour. Each build gets its own test Barbican; --host-mode gives the guests Nova's host
secret-security mode (later starts read the local store, not Barbican). Needs what
bench/run.sh installs and the demo guest in .build/guest (bench/run.sh builds it).
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--host-mode", action="store_true")
    ap.add_argument("--guest-dir", default=os.path.join(bench.TOP, ".build", "guest"))
    ap.add_argument("builds", nargs="+", help="vmsup binaries")
    a = ap.parse_args()
    guest = bench.Guest(a.guest_dir)
    tmp = tempfile.mkdtemp(prefix="vmsup-ab.")
    systems = []
    res = {}
    try:
        for i, path in enumerate(a.builds):
            d = os.path.join(tmp, "vmsup%d" % i)
            os.makedirs(d)
            v = bench.Vmsup(d)
            v.binary = os.path.abspath(path)
            v.label = "%s (%s)" % (os.path.basename(path), "ABCDEFGH"[i])
            systems.append(v)
        bare = bench.Bare(tmp)
        bare.label = "bare"
        systems.append(bare)

        def use(s):
            if isinstance(s, bench.Vmsup):
                bench.VMSUP = s.binary

        for rnd in range(-1, a.runs):
            for s in systems:
                use(s)
                g = s.new_guest(guest, "ab%d" % (rnd + 1))
                if a.host_mode and isinstance(s, bench.Vmsup):
                    path = os.path.join(s.dir, g + ".json")
                    with open(path) as f:
                        spec = json.load(f)
                    spec["flavor"]["extra_specs"]["hw:tpm_secret_security"] = "host"
                    with open(path, "w") as f:
                        json.dump(spec, f)
                t1, _ = s.start(g)
                time.sleep(1.0)
                s.stop(g, force=True)
                t2, _ = s.start(g)
                time.sleep(1.0)
                tf = s.stop(g, force=True)
                if rnd < 0:
                    continue
                d = res.setdefault(s.label, {"first": [], "later": [], "forced": []})
                d["first"].append(t1 * 1000)
                d["later"].append(t2 * 1000)
                if tf is not None:
                    d["forced"].append(tf * 1000)
            bench.log("round %d of %d done" % (rnd + 1, a.runs))
        ref = {k: statistics.median(v) for k, v in res["bare"].items()}
        print("medians of %d rounds, ms (x bare exec); load average at the end: %s"
              % (a.runs, open("/proc/loadavg").read().split()[0]))
        for label, d in res.items():
            print("%-28s" % label + "  ".join("%s %7.1f (%.2fx)" % (k, statistics.median(v), statistics.median(v) / ref[k])
                                             for k, v in d.items()))
    finally:
        for s in systems:
            use(s)
            try:
                s.cleanup()
            except Exception as e:  # keep cleaning up the rest
                bench.log("cleanup: %s" % e)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
