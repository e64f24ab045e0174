#!/usr/bin/python3
"""The serial console under a flood: vmsup against bare QEMU writing its console file.

The demo guest writes to its serial port as fast as it goes for --seconds (kernel
argument vmsup.flood=N). Two rows, interleaved --runs times:
  vmsup  `vmsup run` (no vTPM): QEMU's serial port is a socket the supervisor reads into a
         console.log rotated at [logs] console_max_size
  bare   the same QEMU command line with `-serial file:console.log` (what vmsup did before,
         and what libvirt does without virtlogd): nothing bounds the file
For each: the bytes the guest got out in the flood (throughput: the supervisor must not
slow the guest down), QEMU's CPU time, and for vmsup the supervisor's CPU time and its
share of QEMU's, its wake-ups (context switches), and the latency of `status` requests
on the control socket every 100 ms during the flood (p50, p99, max).

Usage: bench/console.py --guest-dir tests/guest/out [--seconds 30] [--runs 2] [--out DIR]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VMSUP = os.path.join(TOP, "vmsup")
QEMU = "/usr/bin/qemu-system-x86_64"
TICK = os.sysconf("SC_CLK_TCK")
now = time.monotonic


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def cpu_ctx(pid):
    """(CPU seconds, context switches) of a live process."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    ctx = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                ctx += int(line.split()[1])
    return cpu, ctx


def logs_size(d, name="console.log"):
    total = 0
    for f in os.listdir(d):
        if f == name or f.startswith(name + "."):
            total += os.path.getsize(os.path.join(d, f))
    return total


def wait_text(path, text, timeout):
    deadline = now() + timeout
    while now() < deadline:
        try:
            with open(path, "rb") as f:
                if text.encode() in f.read():
                    return True
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    return False


def status_once(sock_path):
    """One status request on the control socket; its round trip in ms."""
    t0 = now()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock_path)
    s.sendall(b'{"cmd": "status"}\n')
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    if b'"ok": true' not in buf and b'"ok":true' not in buf:
        raise RuntimeError("status: %r" % buf[:200])
    return (now() - t0) * 1000.0


def qemu_child(pid):
    with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
        for c in f.read().split():
            with open("/proc/%s/comm" % c) as g:
                if g.read().strip().startswith("qemu"):
                    return int(c)
    return None


def run_vmsup(tmp, guest_dir, seconds, max_size):
    d = os.path.join(tmp, "vmsup")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    conf = os.path.join(d, "vmsup.conf")
    with open(conf, "w") as f:
        f.write("[tpm]\nswtpm_enabled = false\n[qemu]\naccelerator = tcg\n"
                "[paths]\nstate_dir = {d}/state\nrun_dir = {d}/run\nsecrets_dir = {d}/state/secrets\n"
                "log_dir = {d}/log\n[supervisor]\nstop_timeout = 30\n"
                "[logs]\nconsole_max_size = {m}\nconsole_max_backups = 3\n".format(d=d, m=max_size))
    u = str(uuidlib.uuid4())
    spec = os.path.join(d, "guest.json")
    with open(spec, "w") as f:
        json.dump({"uuid": u, "name": "flood", "vcpus": 1, "memory_mb": 256, "flavor": {"name": "m1"},
                   "image": {"name": "demo", "properties": {"hw_firmware_type": "bios"}},
                   "firmware": {"kernel": os.path.join(guest_dir, "vmlinuz"),
                                "initrd": os.path.join(guest_dir, "initrd.img"),
                                "cmdline": "console=ttyS0 quiet tpmprobe.hold vmsup.flood=%d" % seconds}}, f)
    errlog = open(os.path.join(d, "vmsup.log"), "wb")
    p = subprocess.Popen([VMSUP, "--config", conf, "run", spec], stdin=subprocess.DEVNULL, stdout=errlog,
                         stderr=errlog)
    console = os.path.join(d, "log", u, "console.log")
    sock = os.path.join(d, "run", u, "control.sock")
    try:
        if not wait_text(console, "init: flooding the console", 180):
            errlog.flush()
            with open(os.path.join(d, "vmsup.log"), "rb") as f:
                raise RuntimeError("the guest did not start flooding: %s" % f.read()[-800:].decode(errors="replace"))
        qpid = qemu_child(p.pid)
        v0, q0 = cpu_ctx(p.pid), cpu_ctx(qpid)
        s0 = logs_size(os.path.dirname(console))
        lat = []
        t0 = now()
        while True:
            lat.append(status_once(sock))
            with open(console, "rb") as f:
                if b"init: flood done" in f.read():
                    break
            if now() - t0 > seconds + 60:
                raise RuntimeError("the flood did not end")
            time.sleep(0.1)
        t1 = now()
        v1, q1 = cpu_ctx(p.pid), cpu_ctx(qpid)
        # with the default --max-size nothing is rotated away: what is kept is what came out
        kept = logs_size(os.path.dirname(console))
        subprocess.run([VMSUP, "--config", conf, "stop", u], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120)
        p.wait(timeout=60)
        return {"seconds": t1 - t0, "vmsup_cpu": v1[0] - v0[0], "vmsup_ctx": v1[1] - v0[1],
                "qemu_cpu": q1[0] - q0[0], "kept_bytes": kept,
                "status_ms": lat, "bytes_out": kept - s0}
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
        errlog.close()


def run_bare(tmp, guest_dir, seconds):
    d = os.path.join(tmp, "bare")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    console = os.path.join(d, "console.log")
    argv = [QEMU, "-name", "guest=flood", "-no-user-config", "-nodefaults", "-display", "none", "-accel", "tcg",
            "-machine", "q35", "-m", "256", "-smp", "1", "-kernel", os.path.join(guest_dir, "vmlinuz"),
            "-initrd", os.path.join(guest_dir, "initrd.img"),
            "-append", "console=ttyS0 quiet tpmprobe.hold vmsup.flood=%d" % seconds,
            "-chardev", "file,id=serial0,path=%s,append=on" % console, "-serial", "chardev:serial0",
            "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
    q = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_text(console, "init: flooding the console", 180):
            raise RuntimeError("the bare guest did not start flooding")
        q0 = cpu_ctx(q.pid)
        s0 = os.path.getsize(console)
        t0 = now()
        while not wait_text(console, "init: flood done", 0.2):
            if now() - t0 > seconds + 60:
                raise RuntimeError("the flood did not end")
        t1 = now()
        q1 = cpu_ctx(q.pid)
        return {"seconds": t1 - t0, "qemu_cpu": q1[0] - q0[0], "bytes_out": os.path.getsize(console) - s0}
    finally:
        q.kill()
        q.wait()


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guest-dir", required=True, type=os.path.abspath)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--max-size", default="1G",
                    help="[logs] console_max_size for the vmsup row; the default keeps the whole flood, so that "
                         "its bytes can be counted (a smaller one adds a rotation every max-size bytes)")
    ap.add_argument("--out", help="write results.json there")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="vmsup-bench-console-")
    rows = {"vmsup": [], "bare": []}
    try:
        for i in range(a.runs):
            log("run %d/%d: vmsup" % (i + 1, a.runs))
            rows["vmsup"].append(run_vmsup(tmp, a.guest_dir, a.seconds, a.max_size))
            log("run %d/%d: bare QEMU" % (i + 1, a.runs))
            rows["bare"].append(run_bare(tmp, a.guest_dir, a.seconds))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lat = [x for r in rows["vmsup"] for x in r["status_ms"]]
    vm_cpu = sum(r["vmsup_cpu"] for r in rows["vmsup"])
    vq_cpu = sum(r["qemu_cpu"] for r in rows["vmsup"])
    vs = sum(r["seconds"] for r in rows["vmsup"])
    bq_cpu = sum(r["qemu_cpu"] for r in rows["bare"])
    bs = sum(r["seconds"] for r in rows["bare"])
    bb = sum(r["bytes_out"] for r in rows["bare"])
    vb = sum(r["bytes_out"] for r in rows["vmsup"])
    summary = {
        "flood_seconds": a.seconds, "runs": a.runs,
        "vmsup_cpu_share_of_qemu": vm_cpu / vq_cpu if vq_cpu else None,
        "vmsup_cpu_per_s": vm_cpu / vs, "vmsup_wakeups_per_s": sum(r["vmsup_ctx"] for r in rows["vmsup"]) / vs,
        "qemu_cpu_per_s_vmsup": vq_cpu / vs, "qemu_cpu_per_s_bare": bq_cpu / bs,
        "bare_bytes_per_s": bb / bs, "vmsup_bytes_per_s": vb / vs, "throughput_vmsup_over_bare": (vb / vs) / (bb / bs),
        "vmsup_kept_bytes_max": max(r["kept_bytes"] for r in rows["vmsup"]),
        "status_ms": {"n": len(lat), "p50": statistics.median(lat), "p99": pct(lat, 99), "max": max(lat),
                      "over_100ms": sum(1 for x in lat if x > 100)},
    }
    print(json.dumps(summary, indent=2))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "console.json"), "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
