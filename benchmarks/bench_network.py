#!/usr/bin/env python3
"""Network benchmark: kacheryfs nodes on one machine against scp and plain HTTP, in one run.

    .venv/bin/python benchmarks/bench_network.py [--size-mib 1024] [--swarm-mib 600] [--rate-mb 50]

MB = 10**6 bytes. Every node is a `kacheryfs` subprocess with its own KACHERY_STORAGE_DIR and
KACHERY_P2P_CONFIG_DIR, bound to 127.0.0.1, meeting the others through a private
KACHERYFS_DISCOVERY_DIR. Each downloader starts with an empty store (a second fetch would be local).

1. A 1 GiB (--size-mib) object from node A to node B, against two baselines serving the *same file*
   (A's object file, warm in the page cache):
   a. ``cp B_MOUNT/sha1/<hash> dest``   (B's node fetches lazily; sequential read-ahead grows to bulk)
   b. ``kacheryfs load URI --dest dest`` with B's environment (B's running daemon fetches it)
   c. ``scp -P <port> root@127.0.0.1:<object> dest``  (a private sshd on 127.0.0.1, throwaway keys)
   d. ``curl -o dest http://127.0.0.1:<port>/<object>``  (nginx if installed, else ``python -m http.server``)
   Every destination is on the same disk. Each timing is reported twice: "page cache" (until the
   command returns) and "durable" (until a ``sync`` that follows it returns); the goals are judged
   on the durable figure, for every method alike. kacheryfs writes every byte twice in (a) and (b):
   once into B's store (fsynced before it is installed), once into dest. "transfer" is the time
   until the last chunk is verified on B (from polling B's partial-download bitmap).
   A reference row gives this disk's own write rate (dd 1 GiB, conv=fsync).
2. Three seeders, each capped to R = --rate-mb MB/s (KACHERYFS_TEST_SERVE_RATE in its environment),
   and a fourth node running ``kacheryfs load URI`` of a --swarm-mib object; 1 seeder as a sanity row.
4. Duplicate fetching: a fresh node runs ``kacheryfs load`` of a --dup-mib object held by two
   providers, --dup-runs times: with two equal providers, and with one of them capped at R; the
   node's ``fetched_bytes`` (chunk payloads received, duplicates included, from ``status --json``)
   over the object's size is the figure: 1.00 means no chunk came twice. Part 2 reports it too.
3. Time to first byte through B's mount: ``stat`` + ``open`` + ``pread(4096)`` at a random offset of
   a remote --size-mib object (the stat is the lookup an open does first, timed apart to show the
   parts), on --ttfb-nodes freshly started mounts. On each: a first read of a second object (a
   just-started node: one-time costs such as importing the transfer code count), then the "first
   read of a file" (a running node: the peer lookup, the manifest fetch, one 1 MiB chunk), then
   --ttfb-further "further reads" at random offsets in chunks not yet fetched.

Every source object is dropped from the page cache once after it is stored and read back in (see
``recache``), and read again before each transfer: all methods read the same, cached file. Before
each timed transfer: a wait while other jobs load the machine (pytest, bench_foundation, or more than
FOREIGN_MAX cores used by processes this benchmark did not start; up to 15 min), ``sync`` and a
--settle pause (these VMs hand freed memory back to the host after ~2 s, and first-touch page-cache
writes then run ~10x slower; see docs/benchmarks.md), so every method starts from the same memory
state. A measurement disturbed by foreign load anyway is repeated (up to 3 times) and flagged.
The CPU use of every measurement (whole machine, our processes, kernel threads, foreign) is saved.
Several versions in one run: ``--git-ref main --git-ref HEAD`` exports each commit (git archive) and
measures every kacheryfs row for each, interleaved in the same rounds against the same baselines (each
version has its own node A holding the same object); parts 2 and 3 run once per version.

Runs as root. Everything lives in one temp dir under --tmp-dir, removed at the end, also on error,
Ctrl-C or SIGTERM. Prints Markdown tables; writes benchmarks/results/network-<date>-<time>.json and
network-latest.json. Stdlib + numpy only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
MiB = 1 << 20
MB = 1e6
CHUNK = 1 << 20  # kacheryfs chunk size
CHANNEL = "bench"

GOALS = {  # issue 7 (bulk throughput); durable figures, same file, same disk, one run
    "load_vs_scp": 1.0,         # kacheryfs load / scp, 1 GiB A -> B (stretch 1.5: both cores, several streams)
    "load_vs_scp_stretch": 1.5,
    "load_vs_http": 0.5,        # kacheryfs load / plain HTTP
    "cp_vs_scp": 0.8,           # cp from the mount / scp
    "swarm_x_rate": 2.5,        # 3 seeders at R each: download rate / R (no regression from 2.73)
    "ttfb_ms": 50.0,            # 4 KiB random read of a remote file through the mount (no regression)
}

SETTLE_S = 3.0


# ---- small helpers ------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


BUSY_PATTERN = "pytest|bench_foundation"  # other people's heavy jobs on this machine
WAIT_QUIET = True
KEEP_LOGS = False
GIT_REFS: list[str] = []


WRAPPERS = ("flock", "timeout", "/usr/bin/flock", "/usr/bin/timeout")  # their job shows up on its own once it runs


def others_busy() -> list[str]:
    """Other people's heavy jobs running now. Wrappers (``flock -s bench.lock ... pytest`` waiting
    for this benchmark's exclusive lock, ``timeout``) are not jobs: counting them would make the
    benchmark wait for a suite that waits for the benchmark."""
    r = subprocess.run(["pgrep", "-af", BUSY_PATTERN], check=False, capture_output=True, text=True)
    mine = {str(os.getpid())}
    busy = []
    for line in r.stdout.splitlines():
        pid, _, cmd = line.partition(" ")
        if pid not in mine and cmd.split(" ", 1)[0] not in WRAPPERS:
            busy.append(line)
    return busy


FOREIGN_MAX = 0.15  # cores used by processes not started by this benchmark (kernel threads excluded)


def wait_quiet(max_wait: float = 900.0) -> float:
    """Wait (polling, up to 15 min) while a test suite or the foundation benchmark runs, or while
    other processes on this shared machine use more than FOREIGN_MAX cores (sampled over 1 s)."""
    t0 = time.monotonic()
    announced = False
    while WAIT_QUIET:
        busy = others_busy()
        if not busy:
            s0 = cpu_snapshot()
            time.sleep(1.0)
            foreign = cpu_report(s0, cpu_snapshot(), 1.0)
            if foreign["foreign"] <= FOREIGN_MAX:
                break
            busy = [f"{foreign['foreign']:.2f} cores of foreign load: {foreign['top'][:3]}"]
        if time.monotonic() - t0 > max_wait:
            log(f"still busy after {max_wait:.0f}s, measuring anyway: {busy[0][:120]}")
            break
        if not announced:
            log(f"waiting for other jobs to finish: {busy[0][:120]}")
            announced = True
        time.sleep(20 if others_busy() else 5)
    return time.monotonic() - t0


def settle() -> None:
    wait_quiet()
    os.sync()
    time.sleep(SETTLE_S)


CLK_TCK = os.sysconf("SC_CLK_TCK")
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_snapshot() -> tuple[list[int], dict[int, tuple[str, int, int]], float]:
    """(/proc/stat cpu line, {pid: (name, ppid, utime+stime ticks)}, children's rusage seconds)."""
    import resource

    with open("/proc/stat") as f:
        total = [int(x) for x in f.readline().split()[1:9]]
    procs = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2:].split()
        procs[int(d)] = (name, int(rest[1]), int(rest[11]) + int(rest[12]))
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total, procs, ru.ru_utime + ru.ru_stime


def cpu_report(s0, s1, elapsed: float) -> dict:
    """Where the machine's CPU went during a measurement, in cores (2 = both cores busy)."""
    t0, p0, c0 = s0
    t1, p1, c1 = s1
    ticks = sum(t1) - sum(t0)
    ncpu = os.cpu_count() or 1
    out = {f: round(ncpu * (t1[i] - t0[i]) / max(ticks, 1), 2) for i, f in enumerate(STAT_FIELDS)}
    out["busy_cores"] = round(ncpu - out["idle"] - out["iowait"], 2)

    def is_ours(pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            if pid == os.getpid():
                return True
            pid = p1.get(pid, ("", 0, 0))[1]
            seen += 1
        return False

    groups = {"ours_running": 0.0, "kernel_threads": 0.0, "foreign": 0.0}
    per = []
    for pid, (name, ppid, ticks1) in p1.items():
        used = (ticks1 - p0.get(pid, (name, ppid, 0))[2]) / CLK_TCK / elapsed
        if used <= 0:
            continue
        group = "kernel_threads" if ppid == 2 or pid == 2 else "ours_running" if is_ours(pid) else "foreign"
        groups[group] += used
        per.append((used, name, group))
    out.update({k: round(v, 2) for k, v in groups.items()})
    out["finished_children"] = round((c1 - c0) / elapsed, 2)  # the timed command (cp, scp, curl, load CLI)
    out["top"] = [[name, group, round(used, 2)] for used, name, group in sorted(per, reverse=True)[:6]]
    return out


def write_random_file(path: Path, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(rng.bytes(n))
            left -= n


def cache_file(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MiB):
            pass


def recache(path: Path) -> None:
    """Drop a (clean, fsynced) file from the page cache and read it back in.

    Whether a source's cached pages were left by its writer or read back by read-ahead seemed to
    matter in one pair of runs (kacheryfs 1 GiB A -> B: ~250 against ~390 MB/s) and not in later
    ones; either way every source now starts in the same state: cached, as by an earlier read.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    cache_file(path)


def fuse_mounts() -> dict[str, str]:
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if rfields and rfields[0].startswith("fuse"):
                out[fields[4].replace("\\040", " ")] = fields[2]
    return out


def object_path(storage: Path, sha1: str) -> Path:
    return storage / "sha1" / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1


def sha1_of_uri(uri: str) -> str:
    return uri[len("sha1://"):].split("/", 1)[0].split("?", 1)[0]


class BitmapWatch:
    """Polls a partial download's bitmap in a thread: when the first and the last chunk landed."""

    def __init__(self, storage: Path, sha1: str, num_chunks: int, interval: float = 0.005):
        self.path = storage / "partial" / f"{sha1}.bitmap"
        self.num_chunks = num_chunks
        self.interval = interval
        self.t0 = 0.0
        self.first: float | None = None
        self.all: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._thread.start()

    def _run(self) -> None:
        seen = False
        while not self._stop.is_set() and self.all is None:
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                if seen:  # finished and installed: the bitmap is removed after the last chunk
                    self.all = time.perf_counter()
                time.sleep(self.interval)
                continue
            seen = True
            bits = data[data.find(b"\n") + 1:]
            count = int.from_bytes(bits, "little").bit_count()
            now = time.perf_counter()
            if count and self.first is None:
                self.first = now
            if count >= self.num_chunks:
                self.all = now
            time.sleep(self.interval)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"first_chunk_s": None if self.first is None else round(self.first - self.t0, 4),
                "all_chunks_s": None if self.all is None else round(self.all - self.t0, 4)}


# ---- nodes ----------------------------------------------------------------------------------------
class KNode:
    """One kacheryfs node (daemon or mount) as a subprocess with its own storage and config."""

    def __init__(self, name: str, root: Path, cli: list[str], discovery: Path, kind: str = "daemon",
                 extra_env: dict | None = None):
        self.name, self.cli, self.kind = name, cli, kind
        self.dir = root / name
        self.storage = self.dir / "storage"
        self.config = self.dir / "config"
        self.mnt = self.dir / "mnt"
        self.log_path = self.dir / "node.log"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.discovery = discovery
        self.env = {k: v for k, v in os.environ.items() if k != "KACHERYFS_TEST_SERVE_RATE"}
        self.env.update(KACHERY_STORAGE_DIR=str(self.storage), KACHERY_P2P_CONFIG_DIR=str(self.config),
                        KACHERYFS_DISCOVERY_DIR=str(discovery), KACHERYFS_LAN_DISCOVERY="0", **(extra_env or {}))
        self.proc: subprocess.Popen | None = None
        self.node_prefix: str | None = None

    def kfs(self, *args: str, timeout: float = 600) -> str:
        return run(self.cli + list(args), env=self.env, timeout=timeout).stdout

    def store(self, path: Path) -> str:
        return self.kfs("store", str(path)).strip().splitlines()[-1]

    def start(self, timeout: float = 30.0) -> None:
        args = self.cli + [self.kind]
        if self.kind == "mount":
            self.mnt.mkdir(exist_ok=True)
            args.append(str(self.mnt))
        args += ["--channel", CHANNEL, "--listen", "127.0.0.1:0"]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(args, env=self.env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-2000:]}")
            m = re.search(r"node ([0-9a-f]{12}) listening on", self.log_text())
            if m and (self.kind != "mount" or self._mount_ready()):
                self.node_prefix = m.group(1)
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_text()[-2000:]}")

    def _mount_ready(self) -> bool:
        if str(self.mnt) not in fuse_mounts():
            return False
        try:
            return "store" in os.listdir(self.mnt)
        except OSError:
            return False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def connected_to(self) -> set[str]:
        return set(re.findall(r"connected <peer ([0-9a-f]{12}) [^>]*>, shared channels: [1-9]", self.log_text()))

    def wait_connected(self, others: list[KNode], timeout: float = 30.0) -> float:
        t0 = time.monotonic()
        want = {o.node_prefix for o in others}
        while not want <= self.connected_to():
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{self.name} did not connect to {want - self.connected_to()}:\n"
                                   + self.log_text()[-2000:])
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_text()[-2000:]}")
            time.sleep(0.02)
        return time.monotonic() - t0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                if self.kind == "mount":
                    subprocess.run(self.cli + ["unmount", str(self.mnt)], check=False, env=self.env,
                                   capture_output=True, timeout=30)
                else:
                    self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.terminate()
                    try:
                        self.proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait(timeout=10)
        finally:
            if self.kind == "mount" and str(self.mnt) in fuse_mounts():
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False, capture_output=True)
            self.proc = None

    def remove(self) -> None:
        self.stop()
        if KEEP_LOGS:  # --keep: leave the log, drop the data
            shutil.rmtree(self.storage, ignore_errors=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


class Profiler:
    """py-spy record of some pids during one measurement (only with --profile; adds CPU load). Samples
    of threads on a CPU only (no --idle): a sample is 1/200 s of CPU time (benchmarks/flame_summary.py)."""

    def __init__(self, out_dir: Path | None):
        self.out_dir = out_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, label: str, nodes: list[KNode]) -> None:
        if self.out_dir is None:
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        for node in nodes:
            out = self.out_dir / f"{label}-{node.name}.txt"
            self.procs.append(subprocess.Popen(
                [spy, "record", "--pid", str(node.pid), "--format", "raw", "--threads",
                 "--nonblocking", "-r", "200", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []


# ---- baselines ------------------------------------------------------------------------------------
class Sshd:
    """A private sshd on 127.0.0.1 with throwaway host and client keys; root's own files untouched."""

    def __init__(self, root: Path):
        self.dir = root / "sshd"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.created_run_dir = False
        self.installed = False

    def ensure_installed(self) -> str:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not Path(sshd).exists():
            log("installing openssh-server (apt-get)")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            r = subprocess.run(["apt-get", "install", "-y", "openssh-server"], check=False, env=env, capture_output=True)
            if r.returncode != 0:
                subprocess.run(["apt-get", "update"], check=False, env=env, capture_output=True)
                run(["apt-get", "install", "-y", "openssh-server"], env=env)
            self.installed = True
        return sshd

    def start(self) -> None:
        sshd = self.ensure_installed()
        self.dir.mkdir(parents=True)
        os.chmod(self.dir, 0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / "host_key")])
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / "client_key")])
        shutil.copy(self.dir / "client_key.pub", self.dir / "authorized_keys")
        sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
                     if Path(p).exists()), "internal-sftp")
        if not Path("/run/sshd").exists():
            Path("/run/sshd").mkdir(mode=0o755)
            self.created_run_dir = True
        for _ in range(5):
            self.port = free_port()
            (self.dir / "sshd_config").write_text("\n".join([
                "ListenAddress 127.0.0.1", f"Port {self.port}", f"HostKey {self.dir / 'host_key'}",
                f"PidFile {self.dir / 'sshd.pid'}", f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "UsePAM no", "StrictModes no", f"Subsystem sftp {sftp}", ""]))
            with open(self.dir / "sshd.log", "ab") as errf:
                self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(self.dir / "sshd_config")],
                                             stdout=subprocess.DEVNULL, stderr=errf, start_new_session=True)
            for _ in range(100):
                if self.proc.poll() is not None:
                    break
                try:
                    self.ssh_ok()
                    return
                except subprocess.CalledProcessError:
                    time.sleep(0.1)
            self.stop()
        raise RuntimeError("could not start a private sshd:\n" + (self.dir / "sshd.log").read_text()[-2000:])

    def client_opts(self) -> list[str]:
        return ["-i", str(self.dir / "client_key"), "-o", "StrictHostKeyChecking=no", "-o",
                "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]

    def ssh_ok(self) -> None:
        run(["ssh", "-p", str(self.port)] + self.client_opts() + ["root@127.0.0.1", "true"], timeout=10)

    def scp_args(self, src: Path, dest: Path) -> list[str]:
        return ["scp", "-q", "-P", str(self.port)] + self.client_opts() + [f"root@127.0.0.1:{src}", str(dest)]

    def cipher(self) -> str:
        out = run(["ssh", "-G", "-p", str(self.port)] + self.client_opts() + ["root@127.0.0.1"]).stdout
        m = re.search(r"^ciphers (\S+)", out, re.MULTILINE)
        return m.group(1).split(",")[0] if m else "?"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self.created_run_dir:
            try:
                Path("/run/sshd").rmdir()
            except OSError:
                pass


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpServer:
    """nginx when installed (as the guide's baseline), else ``python -m http.server`` on 127.0.0.1."""

    def __init__(self, root: Path, serve_dir: Path):
        self.dir = root / "http"
        self.serve_dir = serve_dir
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.kind = ""

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if nginx:
            self.kind = "nginx"
            conf = self.dir / "nginx.conf"
            conf.write_text(f"""daemon off; worker_processes 1; pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 64; }}
http {{ access_log off; sendfile on; tcp_nopush on; client_body_temp_path {self.dir};
  proxy_temp_path {self.dir}; fastcgi_temp_path {self.dir}; uwsgi_temp_path {self.dir}; scgi_temp_path {self.dir};
  server {{ listen 127.0.0.1:{self.port}; root {self.serve_dir}; }} }}
""")
            args = [nginx, "-c", str(conf), "-p", str(self.dir)]
        else:
            self.kind = f"python {platform.python_version()} -m http.server"
            args = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                    str(self.serve_dir), str(self.port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(200):
            if subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{self.port}/"], check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("HTTP server did not start")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


# ---- measurements -------------------------------------------------------------------------------
def timed_transfer(args: list[str], size: int, dest: Path | None, env: dict | None = None,
                   watch: BitmapWatch | None = None) -> dict:
    """Run one transfer command after sync + settle; time it, then a sync after it."""
    settle()
    snap = cpu_snapshot()
    t0 = time.perf_counter()
    if watch is not None:
        watch.start(t0)
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    t1 = time.perf_counter()
    os.sync()
    t2 = time.perf_counter()
    out = {"cmd_s": round(t1 - t0, 4), "sync_s": round(t2 - t1, 4), "durable_s": round(t2 - t0, 4),
           "page_cache_mb_s": round(size / (t1 - t0) / MB, 1), "durable_mb_s": round(size / (t2 - t0) / MB, 1),
           "cpu": cpu_report(snap, cpu_snapshot(), t2 - t0)}
    if watch is not None:
        out.update(watch.stop())
        if out.get("all_chunks_s"):
            out["transfer_mb_s"] = round(size / out["all_chunks_s"] / MB, 1)
    if dest is not None:
        if dest.stat().st_size != size:
            raise RuntimeError(f"{dest} has {dest.stat().st_size} bytes, expected {size}")
        dest.unlink()
    return out


def measure(label: str, once, attempts: int = 3) -> dict:
    """Run ``once()`` until a result was not disturbed by foreign load (at most ``attempts`` times)."""
    discarded = []
    for attempt in range(attempts):
        result = once()
        foreign = result.get("cpu", {}).get("foreign", 0.0)
        if foreign <= 2 * FOREIGN_MAX or attempt == attempts - 1:
            if discarded:
                result["discarded_disturbed"] = discarded
            if foreign > 2 * FOREIGN_MAX:
                result["disturbed"] = True
            return result
        log(f"   {label}: {foreign:.2f} cores of foreign load during the measurement; repeating")
        discarded.append(result)
    raise AssertionError("unreachable")


def disk_reference(work: Path, size: int) -> dict:
    src = work / "dd-ref"
    settle()
    t0 = time.perf_counter()
    run(["dd", "if=/dev/zero", f"of={src}", "bs=1M", f"count={size // MiB}", "conv=fsync"])
    t1 = time.perf_counter()
    src.unlink()
    return {"durable_s": round(t1 - t0, 4), "durable_mb_s": round(size / (t1 - t0) / MB, 1)}


class Version:
    """One kacheryfs code version under test (the working tree, or a commit exported with git
    archive); with several, each has its own node A and every kacheryfs row is measured for each,
    interleaved in the same rounds."""

    def __init__(self, label: str, cli: list[str], code_dir: str | None):
        self.label, self.cli, self.code_dir = label, cli, code_dir
        self.a: KNode | None = None

    def key(self, method: str, versions: list["Version"]) -> str:
        return method if len(versions) == 1 else f"{method}@{self.label}"


def bench_one_to_one(work: Path, versions: list[Version], uri: str, size: int, prof: Profiler,
                     sshd: Sshd, http: HttpServer, order: list[str], repeats: int) -> dict:
    sha1 = sha1_of_uri(uri)
    src = object_path(versions[0].a.storage, sha1)
    nchunks = -(-size // CHUNK)
    dest = work / "dest.bin"
    results: dict[str, dict] = {}
    attempt = iter(range(1000))

    def once(method: str, version: Version | None) -> dict:
        if method == "scp":
            cache_file(src)
            return timed_transfer(sshd.scp_args(src, dest), size, dest)
        if method == "http":
            cache_file(src)
            return timed_transfer(["curl", "-s", "-f", "-o", str(dest), http.url(sha1)], size, dest)
        a, cli = version.a, version.cli
        cache_file(object_path(a.storage, sha1))
        b = KNode(f"B-{method}-{version.label}-{next(attempt)}", work, cli, a.discovery,
                  kind="mount" if method == "kfs_cp" else "daemon")
        try:
            b.start()
            b.wait_connected([a])
            prof.start(method, [a, b])
            watch = BitmapWatch(b.storage, sha1, nchunks)
            if method == "kfs_cp":
                args = ["cp", str(b.mnt / "sha1" / sha1), str(dest)]
            elif method == "kfs_link":  # dest: a hard link to the store's copy (each byte written once)
                args = cli + ["load", uri, "--dest", str(dest), "--link"]
            else:
                args = cli + ["load", uri, "--dest", str(dest)]
            result = timed_transfer(args, size, dest, env=b.env, watch=watch)
            prof.stop()
            m = re.findall(r"fetched [0-9a-f]+: \d+ bytes in ([0-9.]+)s", b.log_text())
            if m:
                result["node_log_fetch_s"] = float(m[-1])
            return result
        finally:
            prof.stop()
            b.remove()

    plan: list[tuple[str, str, Version | None]] = []  # (result key, method, version)
    for method in order:
        if method.startswith("kfs_"):
            plan += [(v.key(method, versions), method, v) for v in versions]
        else:
            plan.append((method, method, None))
    samples: dict[str, list[dict]] = {key: [] for key, _, _ in plan}
    for rep in range(repeats):
        for key, method, version in plan:
            log(f"1. {key} (round {rep + 1} of {repeats}) ...")
            samples[key].append(measure(key, lambda: once(method, version)))  # noqa: B023 (called at once)
            log(f"   {brief(samples[key][-1])}")
    for key, runs in samples.items():
        results[key] = summarize_runs(runs)
    return results


SUMMARY_FIELDS = ("cmd_s", "sync_s", "durable_s", "page_cache_mb_s", "durable_mb_s", "first_chunk_s", "all_chunks_s",
                  "transfer_mb_s", "node_log_fetch_s")


def summarize_runs(runs: list[dict]) -> dict:
    """Medians of the rounds (the row shown), plus every round as measured."""
    out: dict = {"rounds": len(runs)}
    for f in SUMMARY_FIELDS:
        values = [r[f] for r in runs if r.get(f) is not None]
        if values:
            out[f] = round(statistics.median(values), 4 if f.endswith("_s") else 1)
            if f.endswith("mb_s"):
                out[f"best_{f}"] = max(values)
    out["disturbed"] = any(r.get("disturbed") for r in runs)
    out["samples"] = runs
    return out


def brief(r: dict) -> str:
    keys = ("cmd_s", "sync_s", "page_cache_mb_s", "durable_mb_s", "all_chunks_s", "transfer_mb_s", "x_rate")
    out = ", ".join(f"{k} {r[k]}" for k in keys if r.get(k) is not None)
    cpu = r.get("cpu")
    if cpu:
        out += f"; cores busy {cpu['busy_cores']} (ours {cpu['ours_running']} + {cpu['finished_children']}, " \
               f"kernel threads {cpu['kernel_threads']}, foreign {cpu['foreign']})"
    return out


def bench_swarm(work: Path, cli: list[str], size: int, rate: float, prof: Profiler, seed: int, tag: str = "") -> dict:
    discovery = work / f"disc-swarm{tag}"
    discovery.mkdir()
    src = work / "swarm.bin"
    write_random_file(src, size, seed)
    env = {"KACHERYFS_TEST_SERVE_RATE": str(int(rate))}
    seeders = [KNode(f"S{i}{tag}", work, cli, discovery, extra_env=env) for i in (1, 2, 3)]
    uri = ""
    for s in seeders:
        uri = s.store(src)
    src.unlink()
    sha1 = sha1_of_uri(uri)
    for s in seeders:
        recache(object_path(s.storage, sha1))
    nchunks = -(-size // CHUNK)
    results = {}
    try:
        for n in (1, 3):
            for s in seeders[:n]:
                if s.proc is None:
                    s.start()
            log(f"2. {n} seeder(s) at {rate / MB:.0f} MB/s each ...")
            attempt = iter(range(1000))

            def once(n: int = n) -> dict:
                d = KNode(f"D{n}{tag}-{next(attempt)}", work, cli, discovery)  # noqa: B023 (called at once)
                try:
                    d.start()
                    d.wait_connected(seeders[:n])
                    prof.start(f"swarm{n}", [d])
                    watch = BitmapWatch(d.storage, sha1, nchunks)
                    r = timed_transfer(cli + ["load", uri], size, None, env=d.env, watch=watch)
                    prof.stop()
                    r["x_rate"] = round(r["durable_mb_s"] * MB / rate, 2)
                    if r.get("transfer_mb_s"):
                        r["transfer_x_rate"] = round(r["transfer_mb_s"] * MB / rate, 2)
                    if object_path(d.storage, sha1).stat().st_size != size:
                        raise RuntimeError("swarm download has the wrong size")
                    m = re.findall(r"fetched [0-9a-f]+: \d+ bytes in ([0-9.]+)s", d.log_text())
                    if m:
                        r["node_log_fetch_s"] = float(m[-1])
                    r["fetched_ratio"] = round(fetched_bytes(d) / size, 3)  # 1.0: no chunk came twice
                    return r
                finally:
                    prof.stop()
                    d.remove()

            results[f"seeders_{n}"] = measure(f"{n} seeders", once)
            log(f"   {brief(results[f'seeders_{n}'])}")
    finally:
        for s in seeders:
            s.remove()
    return results


def fetched_bytes(node: KNode) -> int:
    """Chunk payload bytes the node has received from peers (duplicates included)."""
    return json.loads(node.kfs("status", "--json"))["daemon"]["fetched_bytes"]


def bench_duplicates(work: Path, cli: list[str], size: int, rate: float, runs: int, seed: int) -> dict:
    """fetched / size for a fresh node loading an object from two providers (equal, and one capped)."""
    discovery = work / "disc-dup"
    discovery.mkdir()
    src = work / "dup.bin"
    write_random_file(src, size, seed)
    cases = {"equal": [{}, {}], "one_capped": [{"KACHERYFS_TEST_SERVE_RATE": str(int(rate))}, {}]}
    results: dict = {"size": size, "runs": runs, "rate_mb": rate / MB}
    for case, envs in cases.items():
        providers = [KNode(f"P{case}{i}", work, cli, discovery, extra_env=env) for i, env in enumerate(envs)]
        try:
            uri = ""
            for p in providers:
                uri = p.store(src)
                recache(object_path(p.storage, sha1_of_uri(uri)))
                p.start()
            rows = []
            for i in range(runs):
                d = KNode(f"D{case}{i}", work, cli, discovery)
                try:
                    d.start()
                    d.wait_connected(providers)
                    t0 = time.monotonic()
                    d.kfs("load", uri)
                    seconds = time.monotonic() - t0
                    fetched = fetched_bytes(d)
                    rows.append({"fetched": fetched, "ratio": round(fetched / size, 3), "seconds": round(seconds, 2)})
                    log(f"4. {case}: run {i + 1}: fetched {fetched / MiB:.1f} MiB of {size / MiB:.1f} MiB "
                        f"({fetched / size:.3f}) in {seconds:.1f} s")
                finally:
                    d.remove()
            ratios = [r["ratio"] for r in rows]
            results[case] = {"rows": rows, "median_ratio": statistics.median(ratios), "max_ratio": max(ratios)}
        finally:
            for p in providers:
                p.remove()
    src.unlink()
    return results


def bench_ttfb(work: Path, cli: list[str], a: KNode, uri: str, other_uri: str, size: int, nodes: int,
               further: int, rng: random.Random) -> dict:
    """Per fresh mount B: the first read of ``other_uri`` (a just-started node: includes one-time costs
    such as importing the transfer code), then the first read of ``uri`` (a running node: the lookup,
    the manifest, one chunk), then ``further`` reads of ``uri`` at random offsets in chunks not yet
    fetched (and not next to one: no read-ahead helps)."""
    nchunks = -(-size // CHUNK)
    samples: dict[str, list[float]] = {k: [] for k in (
        "cold_first", "first", "first_lookup", "first_open", "first_pread", "further")}

    def first_read(path: Path, off: int) -> tuple[int, float, float, float]:
        t0 = time.perf_counter()
        os.stat(path)  # the lookup: asks the peers who holds it (a plain open() does the same first)
        t1 = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        t2 = time.perf_counter()
        data = os.pread(fd, 4096, off)
        t3 = time.perf_counter()
        assert len(data) == 4096
        return fd, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3

    for i in range(nodes):
        wait_quiet()
        b = KNode(f"T{i}-{a.name}", work, cli, a.discovery, kind="mount")
        try:
            b.start()
            b.wait_connected([a])
            time.sleep(1.0)  # let the second dial (both ends discover each other) settle
            touched: set[int] = set()

            def pick(touched: set[int] = touched) -> int:
                while True:
                    c = rng.randrange(0, nchunks - 1)
                    if all(abs(c - t) > 2 for t in touched):
                        touched.add(c)
                        return c * CHUNK + rng.randrange(0, CHUNK - 4096)

            fd, lk, op, rd = first_read(b.mnt / "sha1" / sha1_of_uri(other_uri), rng.randrange(0, size - 4096))
            os.close(fd)
            samples["cold_first"].append(lk + op + rd)
            cold = (lk, op, rd)
            fd, lk, op, rd = first_read(b.mnt / "sha1" / sha1_of_uri(uri), pick())
            try:
                samples["first"].append(lk + op + rd)
                samples["first_lookup"].append(lk)
                samples["first_open"].append(op)
                samples["first_pread"].append(rd)
                for _ in range(further):
                    off = pick()
                    t0 = time.perf_counter()
                    data = os.pread(fd, 4096, off)
                    samples["further"].append((time.perf_counter() - t0) * 1e3)
                    assert len(data) == 4096
            finally:
                os.close(fd)
        finally:
            b.remove()
        log(f"3. fresh node {i}: just started {sum(cold):.1f} ms ({' + '.join(f'{x:.1f}' for x in cold)}); "
            f"running: first {samples['first'][-1]:.1f} ms (lookup {lk:.1f} + open {op:.1f} + pread {rd:.1f}); "
            f"further {', '.join(f'{x:.1f}' for x in samples['further'][-further:])} ms")

    def stats(xs):
        xs = sorted(xs)
        return {"n": len(xs), "median_ms": round(statistics.median(xs), 1), "min_ms": round(xs[0], 1),
                "p90_ms": round(xs[min(len(xs) - 1, int(0.9 * len(xs)))], 1), "max_ms": round(xs[-1], 1),
                "samples_ms": [round(x, 2) for x in xs]}

    return {"first_read_just_started": stats(samples["cold_first"]), "first_read": stats(samples["first"]),
            "first_lookup_part": stats(samples["first_lookup"]), "first_open_part": stats(samples["first_open"]),
            "first_pread_part": stats(samples["first_pread"]), "further_reads": stats(samples["further"])}


# ---- reporting ------------------------------------------------------------------------------------
def fmt(x, nd=0, suffix=""):
    return "–" if x is None else f"{x:.{nd}f}{suffix}"


def _versioned(res: dict, part: str, label: str | None):
    """A part's results for one version (parts 2 and 3 are keyed by version when there are several)."""
    value = res[part]
    return value[label] if label is not None and label in value else value


def format_tables(res: dict, args) -> str:
    one = res["one_to_one"]
    size_mib = args.size_mib
    labels = res["version_labels"]
    multi = len(labels) > 1
    names = {"kfs_cp": "kacheryfs: `cp B_MOUNT/sha1/<hash> dest`",
             "kfs_load": "kacheryfs: `kacheryfs load URI --dest dest`",
             "kfs_link": "kacheryfs: `kacheryfs load URI --dest dest --link`",
             "scp": f"scp ({res['machine'].get('ssh_cipher', '?')})",
             "http": f"curl from {res['machine'].get('http_server', '?')}"}
    keys = [k for k in one if k.split("@")[0] in names]
    rounds = next(iter(one.values())).get("rounds", 1)
    lines = [(f"**1. {size_mib} MiB A → B on loopback** (MB/s, median of {rounds} interleaved rounds, best in "
             "brackets; durable = until a following `sync` returns)"), "",
             "| method | page cache | durable | transfer (last chunk verified) |",
             "|---|---:|---:|---:|"]
    for key in keys:
        r = one[key]
        method, _, version = key.partition("@")
        label = names[method] + (f" [{version}]" if version else "")
        mark = " (disturbed by foreign load)" if r.get("disturbed") else ""
        def cell(f: str, r: dict = r) -> str:
            best = r.get(f"best_{f}")
            return fmt(r.get(f)) + (f" ({best:.0f})" if best is not None and r.get("rounds", 1) > 1 else "")

        lines.append(f"| {label}{mark} | {cell('page_cache_mb_s')} | {cell('durable_mb_s')} | "
                     f"{cell('transfer_mb_s')} |")
    lines.append(f"| reference: `dd if=/dev/zero bs=1M conv=fsync` (disk write) | – | "
                 f"{fmt(res['disk_ref']['durable_mb_s'])} | – |")
    rate = args.rate_mb
    lines += ["", f"**2. {args.swarm_mib} MiB by `kacheryfs load` from seeders capped at R = {rate:g} MB/s each**", "",
              "| seeders | MB/s (end to end) | × R | transfer MB/s (last chunk verified) | × R | fetched / size |",
              "|---|---:|---:|---:|---:|---:|"]
    for version in labels:
        sw = _versioned(res, "swarm", version if multi else None)
        for n in (1, 3):
            r = sw[f"seeders_{n}"]
            lines.append(f"| {n}{f' [{version}]' if multi else ''}{' (disturbed)' if r.get('disturbed') else ''} | "
                         f"{fmt(r['durable_mb_s'])} | {fmt(r['x_rate'], 2)} | {fmt(r.get('transfer_mb_s'))} | "
                         f"{fmt(r.get('transfer_x_rate'), 2)} | {fmt(r.get('fetched_ratio'), 3)} |")
    lines += format_duplicates(res.get("duplicates"))
    lines += ["", (f"**3. Time to first byte, 4 KiB `pread` at a random offset of the remote {size_mib} MiB "
                   "object through B's mount** (ms)"), "",
              "| what | n | median | p90 | max |", "|---|---:|---:|---:|---:|"]
    for version in labels:
        tt = _versioned(res, "ttfb", version if multi else None)
        for key, label in (("first_read_just_started", "first read on a just-started node (one-time costs included)"),
                           ("first_read", "first read of a file, node running (stat + open + pread)"),
                           ("first_lookup_part", "  of which lookup (`find` on the peers)"),
                           ("first_open_part", "  of which open (manifest fetched and stored, partial file)"),
                           ("first_pread_part", "  of which pread (one 1 MiB chunk fetched and verified)"),
                           ("further_reads", "further random reads (chunks not yet fetched)")):
            s = tt[key]
            lines.append(f"| {label}{f' [{version}]' if multi else ''} | {s['n']} | {s['median_ms']:.1f} | "
                         f"{s['p90_ms']:.1f} | {s['max_ms']:.1f} |")
    lines += ["", "**Goals**", "", "| goal | measured | target | met |", "|---|---:|---:|---|"]
    for g in res["goals"]:
        lines.append(f"| {g['what']} | {g['measured']} | {g['target']} | {'yes' if g['met'] else 'no'} |")
    return "\n".join(lines)


def format_duplicates(dup: dict | None) -> list[str]:
    if not dup:
        return []
    lines = ["", (f"**4. Duplicate fetching: a fresh node loads {dup['size'] / MiB:.0f} MiB from two providers** "
                  f"(bytes received / size, {dup['runs']} runs; 1.000: no chunk fetched twice)"), "",
             "| providers | median | max | seconds (median) |", "|---|---:|---:|---:|"]
    for case, label in (("equal", "two equal"), ("one_capped", f"one capped at {dup['rate_mb']:g} MB/s")):
        r = dup[case]
        secs = statistics.median(x["seconds"] for x in r["rows"])
        lines.append(f"| {label} | {r['median_ratio']:.3f} | {r['max_ratio']:.3f} | {secs:.1f} |")
    return lines


def evaluate_goals(res: dict, args) -> list[dict]:
    one = res["one_to_one"]
    labels = res["version_labels"]
    multi = len(labels) > 1
    out = []
    for version in labels:
        tag = f" [{version}]" if multi else ""
        suffix = f"@{version}" if multi else ""
        for method, base, gkey, label in (("kfs_load", "scp", "load_vs_scp", "kacheryfs load / scp"),
                                          ("kfs_load", "scp", "load_vs_scp_stretch", "kacheryfs load / scp (stretch)"),
                                          ("kfs_load", "http", "load_vs_http", "kacheryfs load / plain HTTP"),
                                          ("kfs_link", "scp", "load_vs_scp", "kacheryfs load --link / scp"),
                                          ("kfs_link", "scp", "load_vs_scp_stretch", "kacheryfs load --link / scp (stretch)"),
                                          ("kfs_link", "http", "load_vs_http", "kacheryfs load --link / plain HTTP"),
                                          ("kfs_cp", "scp", "cp_vs_scp", "cp from mount / scp")):
            if method + suffix not in one or base not in one:
                continue
            ratio = one[method + suffix]["durable_mb_s"] / one[base]["durable_mb_s"]
            out.append({"what": f"{args.size_mib} MiB, {label} (durable){tag}", "measured": f"{ratio:.2f}×",
                        "target": f"≥ {GOALS[gkey]}×", "met": ratio >= GOALS[gkey], "value": round(ratio, 3)})
        x = _versioned(res, "swarm", version if multi else None)["seeders_3"]["x_rate"]
        out.append({"what": f"3 seeders at R: rate / R (end to end){tag}", "measured": f"{x:.2f}×",
                    "target": f"≥ {GOALS['swarm_x_rate']}×", "met": x >= GOALS["swarm_x_rate"], "value": x})
        for key, label in (("first_read", "TTFB, first read of a file, node running (median)"),
                           ("further_reads", "TTFB, further random reads (median)")):
            v = _versioned(res, "ttfb", version if multi else None)[key]["median_ms"]
            out.append({"what": label + tag, "measured": f"{v:.1f} ms", "target": f"≤ {GOALS['ttfb_ms']:.0f} ms",
                        "met": v <= GOALS["ttfb_ms"], "value": v})
    return out


def machine_facts(work: Path, versions: list[Version]) -> dict:
    def read(p):
        try:
            return Path(p).read_text().strip()
        except OSError:
            return None

    cpu = next((l.split(":", 1)[1].strip() for l in (read("/proc/cpuinfo") or "").splitlines()
                if l.startswith("model name")), "?")
    facts = {"cpus": os.cpu_count(), "cpu_model": cpu,
             "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
             "kernel": platform.release(), "python": platform.python_version(), "numpy": np.__version__,
             "tmp_dir": str(work), "dirty_ratio": read("/proc/sys/vm/dirty_ratio"),
             "dirty_background_ratio": read("/proc/sys/vm/dirty_background_ratio"),
             "ssh": subprocess.run(["ssh", "-V"], check=False, capture_output=True, text=True).stderr.strip(),
             "curl": run(["curl", "--version"]).stdout.splitlines()[0],
             "versions": [{"label": v.label, "cli": v.cli, "code_dir": v.code_dir} for v in versions],
             "load_average": os.getloadavg()}
    try:
        facts["git_commit"] = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.strip()
        if GIT_REFS:
            facts["code"] = ", ".join(f"git archive {ref} (" + run(["git", "-C", str(REPO), "rev-parse", "--short",
                                                                   ref]).stdout.strip() + ")" for ref in GIT_REFS)
        facts["kacheryfs_tree_dirty"] = bool(run(["git", "-C", str(REPO), "status", "--porcelain", "kacheryfs"]).stdout.strip())
    except subprocess.CalledProcessError:
        pass
    return facts


# ---- main ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    global SETTLE_S, WAIT_QUIET, KEEP_LOGS, GIT_REFS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="A -> B object size (default 1024)")
    p.add_argument("--swarm-mib", type=int, default=600, help="swarm object size (default 600)")
    p.add_argument("--rate-mb", type=float, default=50.0, help="each seeder's cap R in MB/s (default 50)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of part 1, interleaved; medians shown (default 3)")
    p.add_argument("--methods", default="kfs_cp,scp,kfs_load,kfs_link,http", help="part 1's methods, in this order")
    p.add_argument("--ttfb-nodes", type=int, default=6, help="fresh mounts for first reads (default 6)")
    p.add_argument("--ttfb-further", type=int, default=3, help="further random reads per node (default 3)")
    p.add_argument("--settle", type=float, default=3.0, help="pause after sync before each transfer (s)")
    p.add_argument("--tmp-dir", default="/tmp", help="where the work dir goes (same disk for everything)")
    p.add_argument("--code", default=None, help="run kacheryfs from this source tree (e.g. a scratch copy)")
    p.add_argument("--git-ref", action="append", default=[],
                   help="run kacheryfs as of this commit (git archive), e.g. HEAD; give it twice (--git-ref main "
                        "--git-ref HEAD) to measure both versions' rows interleaved in the same rounds")
    p.add_argument("--dup-mib", type=int, default=191, help="part 4's object size (default 191)")
    p.add_argument("--dup-runs", type=int, default=3, help="part 4's loads per case (default 3)")
    p.add_argument("--only", default="1,2,3,4", help="which parts to run, e.g. 1,3 (default all)")
    p.add_argument("--profile", default=None, metavar="DIR", help="py-spy record the nodes into DIR (perturbs timings)")
    p.add_argument("--no-wait", action="store_true", help="do not wait while pytest or bench_foundation runs")
    p.add_argument("--no-save", action="store_true", help="do not write JSON results")
    p.add_argument("--keep", action="store_true", help="keep the work dir's node logs (data is removed)")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    SETTLE_S = args.settle
    WAIT_QUIET = not args.no_wait
    KEEP_LOGS = args.keep
    GIT_REFS = list(args.git_ref)
    if os.geteuid() != 0:
        print("run as root (private sshd, FUSE read-ahead tuning)", file=sys.stderr)
        return 2
    parts = {int(x) for x in args.only.split(",")}
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="kacheryfs-bench-net-", dir=args.tmp_dir))

    def cli_for(code: str) -> list[str]:
        code = str(Path(code).resolve())
        return [sys.executable, "-c",
                f"import sys; sys.path.insert(0, {code!r}); from kacheryfs.cli import main; sys.exit(main())"]

    versions: list[Version] = []
    for i, ref in enumerate(GIT_REFS):  # others may edit the tree meanwhile: benchmark commits, exported
        code = work / f"code-{i}"
        code.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "kacheryfs"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
        label = re.sub(r"[^A-Za-z0-9._~^-]", "_", ref)
        versions.append(Version(label if label not in {v.label for v in versions} else f"{label}-{i}",
                                cli_for(str(code)), str(code)))
    if not versions:
        if args.code:
            versions.append(Version("code", cli_for(args.code), str(Path(args.code).resolve())))
        else:
            versions.append(Version("tree", [str(REPO / ".venv" / "bin" / "kacheryfs")], None))
    multi = len(versions) > 1
    size = args.size_mib * MiB

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    nodes: list[KNode] = []
    sshd = Sshd(work)
    http = None
    prof = Profiler(Path(args.profile).resolve() if args.profile else None)
    if prof.out_dir:
        prof.out_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now()
    t_start = time.monotonic()
    res: dict = {"benchmark": "network", "date": started.isoformat(timespec="seconds"), "seed": seed,
                 "args": vars(args), "goals_def": GOALS, "version_labels": [v.label for v in versions],
                 "sync_policy": "durable = command + a following sync (all methods); page cache = command alone"}
    try:
        res["machine"] = machine_facts(work, versions)
        if not args.no_wait:
            wait_quiet()
        for v in versions:
            discovery = work / f"disc-a-{v.label}"
            discovery.mkdir()
            v.a = KNode(f"A-{v.label}" if multi else "A", work, v.cli, discovery)
            nodes.append(v.a)
        uri = None
        other_uri = None
        if parts & {1, 3}:
            log(f"preparing a {args.size_mib} MiB object on A" + (" (and a second one for part 3)" if 3 in parts else ""))
            src = work / "big.bin"
            write_random_file(src, size, seed)
            for v in versions:
                uri = v.a.store(src)
            if 3 in parts:
                write_random_file(src, size, seed + 7)
                for v in versions:
                    other_uri = v.a.store(src)
            src.unlink()
            res["uri"] = uri
            for v in versions:
                for u in filter(None, (uri, other_uri)):
                    recache(object_path(v.a.storage, sha1_of_uri(u)))
                v.a.start()
        if 1 in parts:
            sha1 = sha1_of_uri(uri)
            serve_dir = work / "www"
            serve_dir.mkdir()
            os.symlink(object_path(versions[0].a.storage, sha1), serve_dir / sha1)
            sshd.start()
            http = HttpServer(work, serve_dir)
            http.start()
            res["machine"]["ssh_cipher"] = sshd.cipher()
            res["machine"]["http_server"] = http.kind
            res["disk_ref"] = disk_reference(work, size)
            log(f"disk reference: {res['disk_ref']}")
            res["one_to_one"] = bench_one_to_one(work, versions, uri, size, prof, sshd, http,
                                                 args.methods.split(","), args.repeats)
            http.stop()
            sshd.stop()
        if 3 in parts:
            res["ttfb"] = {}
            for v in versions:
                r = bench_ttfb(work, v.cli, v.a, uri, other_uri, size, args.ttfb_nodes, args.ttfb_further, rng)
                if multi:
                    res["ttfb"][v.label] = r
                else:
                    res["ttfb"] = r
        for v in versions:
            v.a.stop()
        if 2 in parts:
            res["swarm"] = {}
            for v in versions:
                r = bench_swarm(work, v.cli, args.swarm_mib * MiB, args.rate_mb * MB, prof, seed + 1,
                                f"-{v.label}" if multi else "")
                if multi:
                    res["swarm"][v.label] = r
                else:
                    res["swarm"] = r
        if 4 in parts:  # the newest version only
            res["duplicates"] = bench_duplicates(work, versions[-1].cli, args.dup_mib * MiB, args.rate_mb * MB,
                                                 args.dup_runs, seed + 2)
        res["elapsed_s"] = round(time.monotonic() - t_start, 1)
        res["machine"]["load_average_end"] = os.getloadavg()
        if {1, 2, 3} <= parts:
            res["goals"] = evaluate_goals(res, args)
            table = format_tables(res, args)
            res["table_markdown"] = table
            print(f"\nkacheryfs network benchmark, {started:%Y-%m-%d %H:%M}, {res['elapsed_s']:.0f} s, "
                  f"load average {res['machine']['load_average'][0]:.1f} at the start\n")
            print(table)
        else:
            print(json.dumps({k: v for k, v in res.items() if k not in ("machine", "args")}, indent=2))
            if "duplicates" in res:
                print("\n".join(format_duplicates(res["duplicates"])))
        if not args.no_save and "goals" in res and not args.profile:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            text = json.dumps(res, indent=2) + "\n"
            dated = RESULTS_DIR / f"network-{started:%Y-%m-%d-%H%M%S}.json"
            dated.write_text(text)
            (RESULTS_DIR / "network-latest.json").write_text(text)
            print(f"\nsaved {dated.relative_to(REPO)} and network-latest.json")
        return 0
    finally:
        prof.stop()
        for n in nodes:
            try:
                n.stop()
            except (OSError, subprocess.SubprocessError) as exc:  # keep cleaning up
                log(f"stopping {n.name}: {exc!r}")
        if http is not None:
            http.stop()
        sshd.cleanup()
        for mnt in fuse_mounts():
            if mnt.startswith(str(work)):
                subprocess.run(["fusermount3", "-u", "-z", mnt], check=False, capture_output=True)
        if args.keep:
            log(f"kept node logs in {work}")
            for big in work.rglob("*"):
                if big.is_file() and big.stat().st_size > (1 << 20):
                    big.unlink()
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
