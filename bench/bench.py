#!/usr/bin/python3
"""vmsup against libvirt 9.0 and against bare exec of swtpm + QEMU, side by side.

Run through ./dev bench (bench/run.sh installs what is missing first). Phases:
  latency  start (first start = fresh TPM, later starts) and stop (graceful, forced),
           interleaved vmsup, vmsup-host, libvirt, bare, vmsup, ...; medians with min and max
  memory   vmsup's RSS/PSS per supervisor against libvirtd + virtlogd, 1 and 10 guests
  storm    10 guests started at the same moment through vmsup against 10 libvirt domains
           started at once: until all run (first and later starts), until all are stopped
  density  50 guests under 50 supervisors idling: CPU time, wakeups, memory

Everything it starts is stopped on exit (also on errors and Ctrl-C): supervisors,
guests, libvirt domains and secrets, and libvirtd/virtlogd (which it starts itself and
refuses to share with anybody else).
"""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VMSUP = os.path.join(TOP, "vmsup")
QEMU = "/usr/bin/qemu-system-x86_64"
SWTPM = "/usr/bin/swtpm"
SWTPM_SETUP = "/usr/bin/swtpm_setup"
SWTPM_LOCALCA = "/usr/bin/swtpm_localca"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
HOLD_LINE = "init: holding until the power button"
LV_URI = "qemu:///system"
LV_PREFIX = "vmsupbench-"

now = time.monotonic


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def ms(t):
    return round(t * 1000.0, 1)


def wait_file_text(path, text, timeout, give_up=None):
    """Wait until the file contains text (console logs); True if it did in time, False
    on timeout or as soon as it contains give_up."""
    deadline = now() + timeout
    while now() < deadline:
        try:
            with open(path, "rb") as f:
                data = f.read()
            if text.encode() in data:
                return True
            if give_up and give_up.encode() in data:
                return False
        except FileNotFoundError:
            pass
        time.sleep(0.2)
    return False


def proc_mem(pid):
    """RSS and PSS in KiB from /proc/PID/smaps_rollup."""
    out = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Rss", "Pss"):
                out[k.lower()] = int(v.split()[0])
    return out


def proc_cpu_wakeups(pid):
    """(utime+stime in clock ticks, voluntary+involuntary context switches)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    ctx = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                ctx += int(line.split()[1])
    return ticks, ctx


def pid_alive(pid):
    """True while pid runs (a zombie counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class QMP:
    """A minimal QMP client on a unix socket."""

    def __init__(self, path, timeout=30.0):
        deadline = now() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if now() > deadline:
                    raise RuntimeError("QMP socket %s: nobody listens" % path)
                time.sleep(0.001)
        self.sock = s
        self.buf = b""
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("QMP: QEMU hung up")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, cmd, args=None):
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._read()
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise RuntimeError("QMP %s: %s" % (cmd, r["error"]))

    def close(self):
        self.sock.close()


class Guest:
    """What every system boots: the demo guest, same machine for all three."""

    def __init__(self, guest_dir, firmware="uefi", memory=256, hold=True):
        self.kernel = os.path.join(guest_dir, "vmlinuz")
        self.initrd = os.path.join(guest_dir, "initrd.img")
        self.firmware = firmware
        self.memory = memory
        self.cmdline = "console=ttyS0 quiet" + (" tpmprobe.hold" if hold else "")


# ---- vmsup ---------------------------------------------------------------------------


class Vmsup:
    name = "vmsup"

    # The owner's credential: with the test Barbican's unauthenticated pipeline, a project.
    PROJECT = b"bench-project"

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "vmsup")
        os.makedirs(self.dir)
        # vmsup seals the TPM state under a secret Barbican holds: a real Barbican on
        # loopback, as the tests and the demo use (tests/barbican/barbican.sh).
        self.barbican_dir = os.path.join(self.dir, "barbican")
        os.makedirs(self.barbican_dir)
        url = subprocess.run([os.path.join(TOP, "tests", "barbican", "barbican.sh"), "start", self.barbican_dir,
                              str(os.getpid())], check=True, stdout=subprocess.PIPE).stdout.decode().strip()
        self.conf = os.path.join(self.dir, "vmsup.conf")
        with open(self.conf, "w") as f:
            f.write(
                "[tpm]\nswtpm_enabled = true\nswtpm_user = root\nswtpm_group = root\n"
                "[qemu]\naccelerator = tcg\n"
                "[paths]\nstate_dir = {d}/state\nrun_dir = {d}/run\nsecrets_dir = {d}/state/secrets\n"
                "log_dir = {d}/log\n[supervisor]\nstop_timeout = 60\n"
                "[barbican]\nendpoint = {u}\nauth = noauth\n".format(d=self.dir, u=url)
            )
        self.procs = {}  # uuid -> Popen

    # Nova's secret-security mode: none set is user mode.
    extra_specs = {"hw:tpm_version": "2.0", "hw:tpm_model": "tpm-crb"}

    def new_guest(self, guest, tag):
        u = str(uuidlib.uuid4())
        spec = {
            "uuid": u,
            "name": tag,
            "vcpus": 1,
            "memory_mb": guest.memory,
            "flavor": {"name": "m1.tpm", "extra_specs": dict(self.extra_specs)},
            "image": {"name": "demo", "properties": {"hw_firmware_type": guest.firmware}},
            "firmware": {"kernel": guest.kernel, "initrd": guest.initrd, "cmdline": guest.cmdline},
        }
        with open(os.path.join(self.dir, u + ".json"), "w") as f:
            json.dump(spec, f)
        return u

    def console(self, u):
        return os.path.join(self.dir, "log", u, "console.log")

    def spawn(self, u, token=True):
        """Start `vmsup run` in the background, with the owner's credential unless token is
        False; returns (Popen, t0)."""
        errlog = open(os.path.join(self.dir, u + ".stderr"), "ab")
        args, fds = [], ()
        if token:
            rfd, wfd = os.pipe()  # the owner's credential on a file descriptor, never argv or env
            os.write(wfd, self.PROJECT)
            os.close(wfd)
            args, fds = ["--token-fd", str(rfd)], (rfd,)
        t0 = now()
        p = subprocess.Popen([VMSUP, "--config", self.conf, "run"] + args + [os.path.join(self.dir, u + ".json")],
                             stdin=subprocess.DEVNULL, stdout=errlog, stderr=subprocess.PIPE, pass_fds=fds)
        for fd in fds:
            os.close(fd)
        errlog.close()
        self.procs[u] = p
        return p, t0

    def wait_running(self, u, p, timeout=120.0):
        """Read vmsup's stderr until 'guest running'; returns (t1, vmsup's own 'started in' ms).
        The rest of stderr is drained to a file by a thread."""
        own = None
        out = open(os.path.join(self.dir, u + ".stderr"), "ab")
        deadline = now() + timeout
        for line in p.stderr:
            out.write(line)
            out.flush()
            if b"guest running" in line:
                t1 = now()
                m = re.search(rb"started in (\d+) ms", line)
                own = int(m.group(1)) if m else None
                threading.Thread(target=self._drain, args=(p.stderr, out), daemon=True).start()
                return t1, own
            if now() > deadline:
                break
        out.close()
        with open(os.path.join(self.dir, u + ".stderr"), "rb") as f:
            tail = f.read()[-600:].decode(errors="replace")
        raise RuntimeError("vmsup %s did not report the guest running (exit %s): %s" % (u, p.wait(), tail))

    @staticmethod
    def _drain(stream, out):
        for line in stream:
            out.write(line)
        out.close()

    def start(self, u):
        p, t0 = self.spawn(u)
        t1, own = self.wait_running(u, p)
        return t1 - t0, own

    def stop(self, u, force=False):
        args = [VMSUP, "--config", self.conf, "stop", u] + (["--force"] if force else [])
        t0 = now()
        r = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t1 = now()
        if r.returncode != 0:
            raise RuntimeError("vmsup stop %s: %s" % (u, r.stderr.decode().strip()))
        p = self.procs.pop(u)
        p.wait(timeout=30)
        # `vmsup stop` returns once the guest is down and its state sealed; the supervisor
        # then tears itself down: kept apart, not in the stop row
        self.last_exit = now() - t0
        return t1 - t0

    def start_all(self, ids):
        """Start every guest at the same moment (one `vmsup run` each); returns (from the
        first launch until every supervisor reported its guest running, [each guest's start
        from its own launch], [vmsup's own 'started in' ms])."""
        launched = [self.spawn(u) for u in ids]
        ends = in_parallel([lambda u=u, p=p: self.wait_running(u, p, timeout=600.0) for u, (p, _) in zip(ids, launched)])
        return (max(t1 for t1, _ in ends) - launched[0][1], [t1 - t0 for (t1, _), (_, t0) in zip(ends, launched)],
                [own for _, own in ends])

    def stop_all(self, ids):
        """`vmsup stop --force` of every guest at the same moment; returns the time from the
        first launch until the last returned."""
        t0 = now()
        stops = [(u, subprocess.Popen([VMSUP, "--config", self.conf, "stop", u, "--force"], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)) for u in ids]

        def wait(u, p):
            err = p.communicate()[1]
            t1 = now()
            if p.returncode != 0:
                raise RuntimeError("vmsup stop --force %s: %s" % (u, err.decode().strip()))
            return t1
        t1 = max(in_parallel([lambda u=u, p=p: wait(u, p) for u, p in stops]))
        for u in ids:
            self.procs.pop(u).wait(timeout=60)
        return t1 - t0

    def pid(self, u):
        return self.procs[u].pid

    def stop_supervisors(self):
        for u, p in list(self.procs.items()):
            if p.poll() is None:
                subprocess.run([VMSUP, "--config", self.conf, "stop", u, "--force"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.terminate()
                    p.wait()
        self.procs.clear()

    def cleanup(self):
        self.stop_supervisors()
        subprocess.run([os.path.join(TOP, "tests", "barbican", "barbican.sh"), "stop", self.barbican_dir],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class VmsupHost(Vmsup):
    """vmsup with the guest in Nova's host secret-security mode (hw:tpm_secret_security =
    host): the first start gets the passphrase from Barbican with the owner's credential and
    keeps it in the host's local store ([paths] secrets_dir); later starts are given no
    credential and read it there, with no Barbican on the path."""

    name = "vmsup-host"
    extra_specs = dict(Vmsup.extra_specs, **{"hw:tpm_secret_security": "host"})

    def __init__(self, vm):
        # the same host as the vmsup row: configuration, directories, local CA, Barbican
        self.dir, self.conf, self.barbican_dir = vm.dir, vm.conf, vm.barbican_dir
        self.secrets_dir = os.path.join(vm.dir, "state", "secrets")
        self.procs = {}

    def spawn(self, u, token=None):
        if token is None:
            token = not os.path.exists(os.path.join(self.secrets_dir, u))
        return super().spawn(u, token)

    def cleanup(self):
        self.stop_supervisors()  # the Barbican is the vmsup row's


def in_parallel(fns):
    """Call each function in a thread of its own; their results in order, or the first
    error once all have returned."""
    out, errs = [None] * len(fns), []

    def one(i, fn):
        try:
            out[i] = fn()
        except Exception as e:
            errs.append(e)
    threads = [threading.Thread(target=one, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errs:
        raise errs[0]
    return out


# ---- bare exec -----------------------------------------------------------------------


def set_subreaper(on):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1 if on else 0, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


class Bare:
    """The limit: swtpm and QEMU exec'd directly, with the same QEMU options vmsup uses,
    the TPM control channel on a unix socket path and QMP on another."""

    name = "bare"

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "bare")
        ca = os.path.join(self.dir, "localca")
        os.makedirs(ca)
        # The same swtpm_setup options and a private local CA, as vmsup has.
        self.setup_conf = os.path.join(ca, "swtpm_setup.conf")
        with open(os.path.join(ca, "swtpm-localca.conf"), "w") as f:
            f.write("statedir = {c}\nsigningkey = {c}/signkey.pem\nissuercert = {c}/issuercert.pem\n"
                    "certserial = {c}/certserial\n".format(c=ca))
        with open(os.path.join(ca, "swtpm-localca.options"), "w") as f:
            f.write("--platform-manufacturer bench\n--platform-version 2.1\n--platform-model QEMU\n")
        with open(self.setup_conf, "w") as f:
            f.write("create_certs_tool = {t}\ncreate_certs_tool_config = {c}/swtpm-localca.conf\n"
                    "create_certs_tool_options = {c}/swtpm-localca.options\nactive_pcr_banks = sha256\n"
                    .format(t=SWTPM_LOCALCA, c=ca))
        self.guests = {}
        self.live = {}  # id -> (swtpm Popen, qemu Popen, QMP)

    def new_guest(self, guest, tag):
        u = str(uuidlib.uuid4())
        d = os.path.join(self.dir, u)
        os.makedirs(os.path.join(d, "tpm"))
        self.guests[u] = (guest, tag, d)
        return u

    def console(self, u):
        return os.path.join(self.guests[u][2], "console.log")

    def _setup(self, u, d, tag):
        """swtpm_setup as vmsup runs it; we reap its orphaned swtpm at once as vmsup does
        (child subreaper only for this call: libvirtd must not become our child)."""
        set_subreaper(True)
        try:
            p = subprocess.Popen([SWTPM_SETUP, "--tpm2", "--tpm", SWTPM + " socket", "--tpmstate",
                                  os.path.join(d, "tpm"), "--vmid", "%s:%s" % (tag, u), "--createek",
                                  "--create-ek-cert", "--create-platform-cert", "--lock-nvram", "--not-overwrite",
                                  "--config", self.setup_conf, "--logfile", os.path.join(d, "swtpm_setup.log")],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={"TMPDIR": d})
            while True:
                pid, status = os.waitpid(-1, 0)
                if pid == p.pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    break
        finally:
            set_subreaper(False)
        if p.returncode != 0:
            raise RuntimeError("swtpm_setup failed: see %s/swtpm_setup.log" % d)

    def start(self, u):
        guest, tag, d = self.guests[u]
        ctrl = os.path.join(d, "swtpm.ctrl")
        qmp_path = os.path.join(d, "qmp.sock")
        vars_fd = os.path.join(d, "OVMF_VARS.fd")
        for p in (ctrl, qmp_path):
            if os.path.exists(p):
                os.unlink(p)
        t0 = now()
        if not os.path.exists(os.path.join(d, "tpm", "tpm2-00.permall")):
            self._setup(u, d, tag)
            if guest.firmware == "uefi":
                shutil.copyfile(OVMF_VARS, vars_fd)
        swtpm = subprocess.Popen([SWTPM, "socket", "--tpm2", "--tpmstate", "dir=%s,mode=0600" % os.path.join(d, "tpm"),
                                  "--ctrl", "type=unixio,path=%s" % ctrl, "--log", "file=%s" % os.path.join(d, "swtpm.log"),
                                  "--seccomp", "action=kill"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not os.path.exists(ctrl):
            if swtpm.poll() is not None:
                raise RuntimeError("swtpm exited: see %s/swtpm.log" % d)
            time.sleep(0.0005)
        argv = [QEMU, "-name", "guest=%s,debug-threads=on" % tag, "-uuid", u, "-no-user-config", "-nodefaults",
                "-display", "none", "-accel", "tcg", "-machine", "q35", "-m", str(guest.memory), "-smp", "1",
                "-msg", "timestamp=on", "-qmp", "unix:%s,server=on,wait=off" % qmp_path]
        if guest.firmware == "uefi":
            argv += ["-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + OVMF_CODE,
                     "-drive", "if=pflash,format=raw,unit=1,file=" + vars_fd]
        argv += ["-kernel", guest.kernel, "-initrd", guest.initrd, "-append", guest.cmdline,
                 "-chardev", "socket,id=chrtpm,path=" + ctrl, "-tpmdev", "emulator,id=tpm-tpm0,chardev=chrtpm",
                 "-device", "tpm-crb,tpmdev=tpm-tpm0,id=tpm0"]
        # what vmsup adds to every q35 guest: the panic device, and the eight root ports
        # a NIC can be hot-plugged into (supervisor/qemuargs.c)
        argv += ["-device", "pvpanic", "-action", "panic=pause"]
        for i in range(8):
            argv += ["-device", "pcie-root-port,id=nicport%d,port=0x%x,chassis=%d,bus=pcie.0,addr=0x1c.0x%x%s"
                     % (i, 0x10 + i, i + 1, i, ",multifunction=on" if i == 0 else "")]
        argv += ["-chardev", "file,id=serial0,path=%s,append=on" % self.console(u), "-serial", "chardev:serial0",
                 "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=open(os.path.join(d, "qemu.log"), "ab"),
                                stderr=subprocess.STDOUT)
        qmp = QMP(qmp_path)
        while qmp.execute("query-status")["status"] != "running":
            time.sleep(0.001)
        t1 = now()
        self.live[u] = (swtpm, qemu, qmp)
        return t1 - t0, None

    def stop(self, u, force=False):
        swtpm, qemu, qmp = self.live.pop(u)
        t0 = now()
        try:
            qmp.execute("quit" if force else "system_powerdown")
        except EOFError:
            pass
        qemu.wait()
        try:
            swtpm.wait(timeout=5)  # swtpm ends by itself when QEMU hangs up ...
        except subprocess.TimeoutExpired:
            # ... except when QEMU went without sending CMD_SHUTDOWN (seen once in 40
            # forced stops): shut it down as vmsup does, and drop the sample
            subprocess.run(["swtpm_ioctl", "-s", "--unix", os.path.join(self.guests[u][2], "swtpm.ctrl")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            swtpm.wait(timeout=10)
            log("bare: swtpm outlived QEMU (%s stop); sample dropped" % ("forced" if force else "graceful"))
            qmp.close()
            return None
        t1 = now()
        qmp.close()
        return t1 - t0

    def pid(self, u):
        return self.live[u][1].pid

    def cleanup(self):
        for u in list(self.live):
            swtpm, qemu, qmp = self.live.pop(u)
            if qemu.poll() is None:
                qemu.terminate()
                try:
                    qemu.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    qemu.kill()
                    qemu.wait()
            try:
                swtpm.wait(timeout=10)
            except subprocess.TimeoutExpired:
                subprocess.run(["swtpm_ioctl", "-s", "--unix", os.path.join(self.guests[u][2], "swtpm.ctrl")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                swtpm.wait(timeout=10)


# ---- libvirt -------------------------------------------------------------------------


def virsh(*args, check=True, quiet=True):
    r = subprocess.run(["virsh", "-q", "-c", LV_URI] + list(args), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and r.returncode != 0:
        raise RuntimeError("virsh %s: %s" % (" ".join(args), r.stderr.decode().strip()))
    return r.stdout.decode()


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def pgrep(name):
    r = subprocess.run(["pgrep", "-x", name], stdout=subprocess.PIPE)
    return [int(x) for x in r.stdout.split()]


class Libvirt:
    """libvirtd + virtlogd, started by hand (no systemd here) and stopped at the end."""

    def __init__(self, tmp, encryption=True, name="libvirt"):
        self.name = name
        self.encryption = encryption
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir)
        self.domains = {}  # name -> uuid
        self.secrets = {}  # name -> secret uuid

    # The daemons are shared by the Libvirt objects: class-level.
    daemons = {}
    conn = None
    reaper = None

    @classmethod
    def start_daemons(cls):
        for d in ("libvirtd", "virtlogd"):
            if pgrep(d):
                raise RuntimeError("%s already runs (pid %s) and is not ours: stop it first" % (d, pgrep(d)))
        # `-d` daemonises: the daemons and the QEMUs libvirt daemonises become children of
        # the nearest subreaper. PID 1 on these machines reaps only every 1.5-2 s, and
        # libvirt waits for QEMU's pid to vanish (kill(pid, 0), which a zombie passes), so
        # a reaper of ours stands in for a real init (systemd reaps at once).
        cls.reaper = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--reaper"],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        if cls.reaper.stdout.readline().strip() != b"ready":
            raise RuntimeError("the reaper for libvirtd did not start its daemons")
        for d, pidfile in (("virtlogd", "/run/virtlogd.pid"), ("libvirtd", "/run/libvirtd.pid")):
            deadline = now() + 20
            while not (read_pid(pidfile) and pid_alive(read_pid(pidfile))):
                if now() > deadline:
                    raise RuntimeError("%s -d did not write %s" % (d, pidfile))
                time.sleep(0.05)
            cls.daemons[d] = read_pid(pidfile)
        deadline = now() + 60
        while subprocess.run(["virsh", "-c", LV_URI, "version"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL).returncode != 0:
            if now() > deadline:
                raise RuntimeError("libvirtd does not answer")
            time.sleep(0.1)
        import libvirt
        libvirt.registerErrorHandler(lambda *a: None, None)
        cls.conn = libvirt.open(LV_URI)
        log("libvirtd pid %d, virtlogd pid %d" % (cls.daemons["libvirtd"], cls.daemons["virtlogd"]))

    @classmethod
    def stop_daemons(cls):
        if cls.conn:
            try:
                cls.conn.close()
            except Exception:
                pass
            cls.conn = None
        for d in ("libvirtd", "virtlogd"):
            pid = cls.daemons.pop(d, None)
            if not pid:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = now() + 20
            while pid_alive(pid) and now() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if cls.reaper:
            time.sleep(0.2)  # let it reap what libvirtd left
            cls.reaper.terminate()
            cls.reaper.wait()
            cls.reaper = None

    def new_guest(self, guest, tag):
        name = LV_PREFIX + tag
        u = str(uuidlib.uuid4())
        enc = ""
        if self.encryption:
            su = str(uuidlib.uuid4())
            sx = os.path.join(self.dir, su + ".xml")
            with open(sx, "w") as f:
                f.write("<secret ephemeral='no' private='yes'><uuid>%s</uuid><description>vTPM %s</description>"
                        "<usage type='vtpm'><name>%s</name></usage></secret>" % (su, name, u))
            virsh("secret-define", sx)
            self.secrets[name] = su
            # Nova's passphrase: base64 of 384 random bytes, 512 characters.
            pw = base64.b64encode(os.urandom(384)).decode()
            virsh("secret-set-value", su, "--base64", base64.b64encode(pw.encode()).decode())
            enc = "<encryption secret='%s'/>" % su
        fw = ""
        if guest.firmware == "uefi":
            fw = ("<loader readonly='yes' type='pflash'>%s</loader><nvram template='%s'>%s</nvram>"
                  % (OVMF_CODE, OVMF_VARS, os.path.join(self.dir, name + "_VARS.fd")))
        xml = """<domain type='qemu'>
  <name>{name}</name><uuid>{u}</uuid>
  <memory unit='MiB'>{mem}</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type>{fw}
    <kernel>{k}</kernel><initrd>{i}</initrd><cmdline>{c}</cmdline></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>{qemu}</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'><source path='{con}'/><target port='0'/></serial>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'>{enc}</backend></tpm>
    <memballoon model='none'/>
  </devices>
</domain>
""".format(name=name, u=u, mem=guest.memory, fw=fw, k=guest.kernel, i=guest.initrd, c=guest.cmdline, qemu=QEMU,
           con=os.path.join(self.dir, name + ".console"), enc=enc)
        x = os.path.join(self.dir, name + ".xml")
        with open(x, "w") as f:
            f.write(xml)
        virsh("define", x)
        self.domains[name] = u
        return name

    def console(self, name):
        return os.path.join(self.dir, name + ".console")

    def start(self, name):
        t0 = now()
        virsh("start", name)
        return now() - t0, None

    def _state(self, name):
        return self.conn.lookupByName(name).state()[0]

    def stop(self, name, force=False):
        import libvirt
        t0 = now()
        if force:
            virsh("destroy", name)
        else:
            virsh("shutdown", name)
            # libvirt's view: poll its domain state over one open connection.
            while self._state(name) != libvirt.VIR_DOMAIN_SHUTOFF:
                time.sleep(0.002)
        return now() - t0

    def _all(self, verb, names):
        """`virsh VERB` of every domain at the same moment, each its own process and
        connection; returns (from the first launch until the last returned, [each one's time])."""
        runs = [(nm, now(), subprocess.Popen(["virsh", "-q", "-c", LV_URI, verb, nm], stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)) for nm in names]

        def wait(nm, t, p):
            err = p.communicate()[1]
            t1 = now()
            if p.returncode != 0:
                raise RuntimeError("virsh %s %s: %s" % (verb, nm, err.decode().strip()))
            return t1 - t
        each = in_parallel([lambda nm=nm, t=t, p=p: wait(nm, t, p) for nm, t, p in runs])
        return max(t + e for (_, t, _), e in zip(runs, each)) - runs[0][1], each

    def start_all(self, names):
        """Start every domain at the same moment; returns (until every `virsh start` returned,
        [each one's time], [None: libvirt reports no time of its own])."""
        total, each = self._all("start", names)
        return total, each, [None] * len(names)

    def stop_all(self, names):
        return self._all("destroy", names)[0]

    def qemu_pid(self, name):
        return read_pid("/run/libvirt/qemu/%s.pid" % name)

    def undefine(self, name):
        import libvirt
        try:
            if self._state(name) != libvirt.VIR_DOMAIN_SHUTOFF:
                virsh("destroy", name, check=False)
        except Exception:
            pass
        virsh("undefine", name, "--nvram", "--tpm", check=False)
        self.domains.pop(name, None)
        if name in self.secrets:
            virsh("secret-undefine", self.secrets.pop(name), check=False)

    def cleanup(self):
        if not self.conn:
            return
        for name in list(self.domains):
            self.undefine(name)
        for s in self.secrets.values():
            virsh("secret-undefine", s, check=False)
        self.secrets = {}


# ---- phases --------------------------------------------------------------------------


def summary(values):
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"median": round(statistics.median(v), 1), "min": round(min(v), 1), "max": round(max(v), 1), "n": len(v)}


def phase_latency(systems, guest, runs, res):
    """Each round, per system (interleaved): a fresh guest's first start, boot to the held
    prompt, graceful stop; then a later start of the same guest and a forced stop."""
    data = {s.name: {"first": [], "later": [], "graceful": [], "forced": [], "own_first": [], "own_later": [],
                     "exit_graceful": [], "exit_forced": []}
            for s in systems}
    for rnd in range(-1, runs):
        for s in systems:
            g = s.new_guest(guest, "lat%d" % (rnd + 1))
            t, own = s.start(g)
            if getattr(s, "graceful", True):
                if not wait_file_text(s.console(g), HOLD_LINE, 300):
                    raise RuntimeError("%s: guest did not reach '%s' (%s)" % (s.name, HOLD_LINE, s.console(g)))
                tg = s.stop(g)
                eg = getattr(s, "last_exit", None)
            else:  # an extra row for start only: no boot to wait for
                time.sleep(1.0)
                s.stop(g, force=True)
                tg = eg = None
            t2, own2 = s.start(g)
            time.sleep(1.0)
            tf = s.stop(g, force=True)
            ef = getattr(s, "last_exit", None)
            if isinstance(s, Libvirt):
                s.undefine(g)
            if rnd < 0:
                log("%s: warm-up done (first %.0f ms, later %.0f ms)" % (s.name, ms(t), ms(t2)))
                continue
            d = data[s.name]
            d["first"].append(ms(t))
            d["later"].append(ms(t2))
            d["graceful"].append(ms(tg) if tg else None)
            d["forced"].append(ms(tf) if tf is not None else None)
            d["own_first"].append(own)
            d["own_later"].append(own2)
            d["exit_graceful"].append(ms(eg) if eg else None)
            d["exit_forced"].append(ms(ef) if ef else None)
            log("round %d %-16s first %6.0f  later %6.0f  graceful %6s  forced %6s ms"
                % (rnd + 1, s.name, ms(t), ms(t2), "%.0f" % ms(tg) if tg else "-",
                   "%.0f" % ms(tf) if tf is not None else "-"))
    res["latency"] = {name: {k: summary(v) for k, v in d.items()} for name, d in data.items()}
    res["latency_raw"] = data


def phase_storm(systems, guest, n, runs, res):
    """Boot storm, each round per system (interleaved): n fresh guests started at the same
    moment (first starts, TPM manufactured), all stopped at once (forced); started again at
    once (later starts), one second, all stopped at once (forced)."""
    data = {s.name: {"first": [], "later": [], "each_first": [], "each_later": [], "own_first": [],
                     "own_later": [], "stop": []}
            for s in systems}
    for rnd in range(-1, runs):
        for s in systems:
            ids = [s.new_guest(guest, "st%d-%d" % (rnd + 1, i)) for i in range(n)]
            t, each, own = s.start_all(ids)
            time.sleep(1.0)
            ts = s.stop_all(ids)
            t2, each2, own2 = s.start_all(ids)
            time.sleep(1.0)
            ts2 = s.stop_all(ids)
            if isinstance(s, Libvirt):
                for nm in ids:
                    s.undefine(nm)
            if rnd < 0:
                log("%s: storm warm-up done (first %.0f ms, later %.0f ms)" % (s.name, ms(t), ms(t2)))
                continue
            d = data[s.name]
            d["first"].append(ms(t))
            d["later"].append(ms(t2))
            d["each_first"] += [ms(x) for x in each]
            d["each_later"] += [ms(x) for x in each2]
            d["own_first"] += own
            d["own_later"] += own2
            d["stop"] += [ms(ts), ms(ts2)]
            log("round %d storm of %d %-10s all running: first %6.0f  later %6.0f  all stopped %6.0f %6.0f ms"
                % (rnd + 1, n, s.name, ms(t), ms(t2), ms(ts), ms(ts2)))
    res["storm"] = {name: {k: summary(v) for k, v in d.items()} for name, d in data.items()}
    res["storm_guests"] = n
    res["storm_raw"] = data


def phase_memory(vm, lv, guest, counts, res):
    out = {}
    base = {d: proc_mem(pid) for d, pid in Libvirt.daemons.items()}
    out["libvirt_idle"] = base
    for n in counts:
        # vmsup: n supervisors
        ids = [vm.new_guest(guest, "mem%d" % i) for i in range(n)]
        for u in ids:
            p, _ = vm.spawn(u)
            vm.wait_running(u, p)
        time.sleep(5)
        mems = [proc_mem(vm.pid(u)) for u in ids]
        for u in ids:
            vm.stop(u, force=True)
        # libvirt: n domains
        names = [lv.new_guest(guest, "mem%d" % i) for i in range(n)]
        for nm in names:
            lv.start(nm)
        time.sleep(5)
        lvm = {d: proc_mem(pid) for d, pid in Libvirt.daemons.items()}
        for nm in names:
            lv.undefine(nm)
        out[str(n)] = {
            "vmsup_per_supervisor": {"rss": summary([m["rss"] for m in mems]), "pss": summary([m["pss"] for m in mems])},
            "vmsup_total": {"rss": sum(m["rss"] for m in mems), "pss": sum(m["pss"] for m in mems)},
            "libvirt": lvm,
            "libvirt_total": {"rss": sum(m["rss"] for m in lvm.values()), "pss": sum(m["pss"] for m in lvm.values())},
        }
        log("memory, %d guests: vmsup %s; libvirt %s" % (n, out[str(n)]["vmsup_total"], out[str(n)]["libvirt_total"]))
    res["memory"] = out


def phase_density(vm, guest, n, idle, res, at_once=False):
    ids = [vm.new_guest(guest, "den%d" % i) for i in range(n)]
    t0 = now()
    started = []
    try:
        if at_once:
            # All supervisors at the same moment (many first starts sharing the host's
            # local CA), then each must report running.
            for u in ids:
                p, _ = vm.spawn(u)
                started.append((u, p))
            for u, p in started:
                vm.wait_running(u, p, timeout=900.0)
        else:
            # One after the other, as an orchestrator would start them: each supervisor
            # reports running before the next one starts.
            for u in ids:
                p, _ = vm.spawn(u)
                started.append((u, p))
                vm.wait_running(u, p)
        log("density: %d guests running after %.1f s (%s); waiting for every guest to boot to its held prompt"
            % (n, now() - t0, "started at once" if at_once else "one after the other"))
        # Under heavy load some guests' kernels panic at boot ("IO-APIC + timer doesn't
        # work": TCG too slow for the timer check); they sit halted, which is idle too.
        held = sum(1 for u in ids
                   if wait_file_text(vm.console(u), HOLD_LINE, max(30, 900 - (now() - t0)), "Kernel panic"))
        log("density: %d of %d guests held after %.1f s; settling 10 s, then idle window %d s"
            % (held, n, now() - t0, idle))
        time.sleep(10)
        pids = [vm.pid(u) for u in ids]
        before = [proc_cpu_wakeups(p) for p in pids]
        time.sleep(idle)
        after = [proc_cpu_wakeups(p) for p in pids]
        mems = [proc_mem(p) for p in pids]
        hz = os.sysconf("SC_CLK_TCK")
        cpu = [(a[0] - b[0]) * 1000.0 / hz for a, b in zip(after, before)]
        wake = [a[1] - b[1] for a, b in zip(after, before)]
        # also the supervisors' whole life so far (start-up included)
        life = [proc_cpu_wakeups(p) for p in pids]
        res["density"] = {
            "guests": n, "held": held, "idle_s": idle, "boot_s": round(now() - t0, 1), "at_once": at_once,
            "cpu_ms_total": round(sum(cpu), 1), "wakeups_total": sum(wake),
            "wakeups_max": max(wake), "cpu_ms_max": max(cpu),
            "rss_kib": summary([m["rss"] for m in mems]), "pss_kib": summary([m["pss"] for m in mems]),
            "rss_total_kib": sum(m["rss"] for m in mems), "pss_total_kib": sum(m["pss"] for m in mems),
            "lifetime_cpu_ms": summary([l[0] * 1000.0 / hz for l in life]),
            "lifetime_ctxsw": summary([l[1] for l in life]),
        }
        log("density: %s" % json.dumps(res["density"]))
    finally:
        t1 = now()
        stops = []
        for u in ids:
            if u in vm.procs:
                stops.append((u, subprocess.Popen([VMSUP, "--config", vm.conf, "stop", u, "--timeout", "20"],
                                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL)))
        bad = 0
        for u, p in stops:
            if p.wait() != 0:
                bad += 1
            vm.procs.pop(u).wait(timeout=60)
        if "density" in res:
            res["density"]["stop_all_s"] = round(now() - t1, 1)
            res["density"]["stop_failures"] = bad


# ---- report --------------------------------------------------------------------------


def fmt(s):
    if not s:
        return "-"
    return "%.0f (%.0f-%.0f)" % (s["median"], s["min"], s["max"])


def ratio(a, b):
    if not a or not b or not b["median"]:
        return "-"
    return "%.2fx" % (a["median"] / b["median"])


def report(res):
    lines = []
    lat = res.get("latency")
    if lat:
        names = [n for n in ("vmsup", "vmsup-host", "libvirt", "libvirt-noenc", "bare") if n in lat]
        ours = [n for n in ("vmsup", "vmsup-host") if n in lat]
        lines.append("Latency, ms: median (min-max) of %d runs, interleaved" % lat["vmsup"]["first"]["n"])
        lines.append("")
        lines.append("| | " + " | ".join(names + ["%s/%s" % (o, b) for o in ours for b in ("libvirt", "bare")]) + " |")
        lines.append("|---" * (len(names) + 2 * len(ours) + 1) + "|")
        for k, label in (("first", "start, first (TPM manufactured)"), ("later", "start, later"),
                         ("graceful", "stop, graceful"), ("forced", "stop, forced")):
            row = [label] + [fmt(lat[n][k]) for n in names]
            for o in ours:
                row += [ratio(lat[o][k], lat.get("libvirt", {}).get(k)), ratio(lat[o][k], lat["bare"][k])]
            lines.append("| " + " | ".join(row) + " |")
        # vmsup's rows include its encryption at rest: the Barbican fetch (or, on a first
        # start, the secret's creation), unsealing and libtpms' check, sealing on stop;
        # vmsup-host's later starts read the passphrase from the host's local store instead.
        for o in ours:
            lines.append("")
            lines.append("%s's own 'started in N ms': first %s, later %s"
                         % (o, fmt(lat[o]["own_first"]), fmt(lat[o]["own_later"])))
            lines.append("")
            lines.append("%s stop, until the supervisor process had exited too: graceful %s, forced %s"
                         % (o, fmt(lat[o].get("exit_graceful")), fmt(lat[o].get("exit_forced"))))
        lines.append("")
    storm = res.get("storm")
    if storm:
        lines.append("Boot storm, %d guests started at once, ms: median (min-max) of %d runs, interleaved"
                     % (res["storm_guests"], storm["vmsup"]["first"]["n"]))
        lines.append("")
        names = [n for n in ("vmsup", "vmsup-host", "libvirt") if n in storm]
        ours = [n for n in ("vmsup", "vmsup-host") if n in storm]
        lines.append("| | " + " | ".join(names + ["%s/libvirt" % o for o in ours]) + " |")
        lines.append("|---" * (len(names) + len(ours) + 1) + "|")
        for k, label in (("first", "all running, first starts (TPM manufactured)"),
                         ("later", "all running, later starts"),
                         ("each_first", "each guest, first start"), ("each_later", "each guest, later start"),
                         ("stop", "all stopped, forced")):
            row = [label] + [fmt(storm[n][k]) for n in names] + [ratio(storm[o][k], storm["libvirt"][k]) for o in ours]
            lines.append("| " + " | ".join(row) + " |")
        for o in ours:
            lines.append("")
            lines.append("%s's own 'started in N ms', each guest: first %s, later %s"
                         % (o, fmt(storm[o]["own_first"]), fmt(storm[o]["own_later"])))
        lines.append("")
    mem = res.get("memory")
    if mem:
        lines.append("Memory, KiB (smaps_rollup)")
        lines.append("")
        lines.append("| guests | vmsup RSS per supervisor | vmsup PSS per supervisor | vmsup RSS total | vmsup PSS total"
                     " | libvirtd+virtlogd RSS | libvirtd+virtlogd PSS |")
        lines.append("|---|---|---|---|---|---|---|")
        idle = mem["libvirt_idle"]
        lines.append("| 0 | - | - | - | - | %d | %d |" % (sum(m["rss"] for m in idle.values()),
                                                          sum(m["pss"] for m in idle.values())))
        for n in sorted((k for k in mem if k.isdigit()), key=int):
            m = mem[n]
            lines.append("| %s | %s | %s | %d | %d | %d | %d |" % (
                n, fmt(m["vmsup_per_supervisor"]["rss"]), fmt(m["vmsup_per_supervisor"]["pss"]),
                m["vmsup_total"]["rss"], m["vmsup_total"]["pss"], m["libvirt_total"]["rss"],
                m["libvirt_total"]["pss"]))
        lines.append("")
    den = res.get("density")
    if den:
        lines.append("Density: %d guests under %d supervisors (%d held at the prompt; started %s), idle window %d s"
                     % (den["guests"], den["guests"], den["held"],
                        "at once" if den.get("at_once") else "one after the other", den["idle_s"]))
        lines.append("")
        lines.append("| supervisors' CPU time, total | wakeups (ctx switches), total | max per supervisor"
                     " | RSS per supervisor, KiB | PSS per supervisor, KiB | PSS total, KiB |")
        lines.append("|---|---|---|---|---|---|")
        lines.append("| %.0f ms | %d | %d | %s | %s | %d |" % (
            den["cpu_ms_total"], den["wakeups_total"], den["wakeups_max"], fmt(den["rss_kib"]),
            fmt(den["pss_kib"]), den["pss_total_kib"]))
        lines.append("")
    return "\n".join(lines)


def machine():
    def out(cmd):
        try:
            return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout.decode().strip()
        except FileNotFoundError:
            return "-"
    cpu = "-"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        memtotal = f.readline().split()[1]
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "kernel": os.uname().release, "mem_kib": int(memtotal),
        "qemu": out([QEMU, "--version"]).splitlines()[0],
        "swtpm": out([SWTPM, "--version"]).splitlines()[0],
        "libvirt": out(["libvirtd", "--version"]),
        "vmsup": out([VMSUP, "--version"]),
        "loadavg_start": open("/proc/loadavg").read().strip(),
    }


def reaper_main():
    """Child subreaper for libvirtd and virtlogd: starts them and reaps every orphan at once."""
    set_subreaper(True)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    for d in ("virtlogd", "libvirtd"):
        subprocess.run([d, "-d"], check=True, stdin=subprocess.DEVNULL)
    print("ready", flush=True)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.05)


def main():
    if sys.argv[1:] == ["--reaper"]:
        return reaper_main()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guest-dir", required=True, help="built demo guest (tests/guest/build.sh OUTDIR)")
    ap.add_argument("--out", required=True, help="where results.json and results.md go")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--phases", default="latency,memory,storm,density",
                    help="comma-separated, of latency, memory, storm, density (default: all)")
    ap.add_argument("--density", type=int, default=50)
    ap.add_argument("--idle", type=int, default=60)
    ap.add_argument("--storm", type=int, default=10, help="storm: guests started at once per system (default 10)")
    ap.add_argument("--density-at-once", action="store_true",
                    help="density: start all supervisors at the same moment, not one after the other")
    ap.add_argument("--no-noenc", action="store_true", help="skip the libvirt row without <encryption>")
    ap.add_argument("--no-host", action="store_true", help="skip the vmsup row in host secret-security mode")
    a = ap.parse_args()
    phases = a.phases.split(",")
    unknown = [p for p in phases if p not in ("latency", "memory", "storm", "density")]
    if unknown:
        ap.error("--phases: unknown phase %s (phases: latency, memory, storm, density)" % ", ".join(map(repr, unknown)))
    if a.runs < 1 or a.storm < 1 or a.density < 1:
        ap.error("--runs, --storm and --density take a number of at least 1")
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="vmsup-bench.")
    res = {"machine": machine(), "runs": a.runs}
    vm = vmh = bare = lv = lvn = None

    def on_signal(signo, frame):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, on_signal)
    try:
        vm = Vmsup(tmp)
        vmh = VmsupHost(vm)
        bare = Bare(tmp)
        need_lv = "latency" in phases or "memory" in phases or "storm" in phases
        if need_lv:
            Libvirt.start_daemons()
            lv = Libvirt(tmp)
            lvn = Libvirt(tmp, encryption=False, name="libvirt-noenc")
            lvn.graceful = False
        if "latency" in phases:
            systems = [vm] + ([] if a.no_host else [vmh]) + [lv] + ([] if a.no_noenc else [lvn]) + [bare]
            phase_latency(systems, Guest(a.guest_dir), a.runs, res)
        if "memory" in phases:
            phase_memory(vm, lv, Guest(a.guest_dir, firmware="bios", memory=128), [1, 10], res)
        if "storm" in phases:
            phase_storm([vm] + ([] if a.no_host else [vmh]) + [lv], Guest(a.guest_dir), a.storm, a.runs, res)
        if need_lv:
            lv.cleanup()
            lvn.cleanup()
            Libvirt.stop_daemons()
        if "density" in phases:
            # 64 MiB: Debian's kernel and initrd reset in a loop before printing a line.
            phase_density(vm, Guest(a.guest_dir, firmware="bios", memory=128), a.density, a.idle, res,
                          a.density_at_once)
    finally:
        for s in (vmh, vm, bare, lv, lvn):
            if s:
                try:
                    s.cleanup()
                except Exception as e:  # keep cleaning up the rest
                    log("cleanup of %s: %s" % (s.name, e))
        Libvirt.stop_daemons()
        res["machine"]["loadavg_end"] = open("/proc/loadavg").read().strip()
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump(res, f, indent=1)
        text = report(res)
        with open(os.path.join(a.out, "results.md"), "w") as f:
            f.write(text + "\n")
        if os.environ.get("BENCH_KEEP_TMP"):
            log("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(text)


if __name__ == "__main__":
    main()
