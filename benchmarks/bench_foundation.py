#!/usr/bin/env python3
"""Foundation benchmark: the kacheryfs mount against the plain disk, side by side, in one run.

    .venv/bin/python benchmarks/bench_foundation.py [--size-mib 1024] [--npy-mib 400]

Rows (MB = 10**6 bytes; ratio = kacheryfs median / baseline median):

1. Sequential read of a --size-mib object with ``dd bs=1M``: ``<mount>/sha1/<hash>`` against the
   object file in the storage dir.
   - cold: ``sync; echo 3 > /proc/sys/vm/drop_caches`` right before *each* side's read;
   - warm (2nd read): the read right after the cold one; warm (3rd and later): the reads after that;
   - cold, memory settled: as cold, then a --settle pause first (see ``settle``);
   - FUSE cache cold, backing file cached: on a fresh mount, POSIX_FADV_DONTNEED on the FUSE file
     before each read (drops the FUSE page cache only), against a dd of the cached object file.
   - first read in a daemon run: as above, but each sample on a freshly restarted mount, so every
     chunk is checked against bit rot as it is read (--first-read).
2. ``cp`` of a --size-mib file into ``<mount>/store/`` (hashed, fsynced and renamed before close()
   returns) against ``cp`` into a plain directory on the same disk followed by ``sync``, and against
   ``dd bs=1M`` + ``sync`` (cp uses copy_file_range on a plain ext4 file, which a FUSE file cannot).
3. ``np.load`` of a --npy-mib float64 array from ``<mount>/sha1/<hash>`` against the storage-dir path,
   warm and cold.

The mount runs as a subprocess (``kacheryfs mount``); --git-ref pins the code to a commit. Runs as
root (drop_caches). Everything it creates lives in one temp dir under --tmp-dir (same disk as the
storage dir), unmounted and deleted at the end, also on failure, Ctrl-C or SIGTERM.
Prints a Markdown table and writes benchmarks/results/foundation-<date>-<time>.json and
foundation-latest.json (every sample, machine facts, code version). Stdlib + numpy only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
URI_XATTR = "user.kachery.uri"
MiB = 1 << 20
MB = 1e6

GOALS = {  # row key -> minimum kacheryfs/baseline ratio
    "read_cold": 0.5,
    "read_warm": 0.8,
    "write_cp": 0.8,
}


# ---- small helpers ------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def drop_caches() -> None:
    """Flush dirty pages and drop the page cache, dentries and inodes (FUSE pages included)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


SETTLE_S = 3.0  # set from --settle


def settle() -> None:
    """Start a timed run from a known memory state (see docs/benchmarks.md, "fresh-memory tax").

    In these VMs the guest reports freed memory back to the host within ~2 s; the first touch of a
    reported page then costs a host fault (page-cache writes drop from ~5 to ~0.5 GB/s). Whether a run
    gets recently freed ("hot") or reported ("cold") pages depends on what ran just before it, which
    made back-to-back comparisons unfair. Flushing and waiting a few seconds gives every run that
    allocates page cache the same (cold, worst) state.
    """
    os.sync()
    time.sleep(SETTLE_S)


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    run(args)
    return time.perf_counter() - t0


def dd_read(path: Path) -> float:
    """Seconds dd reports for copying the file to /dev/null with 1 MiB reads.

    dd's own clock starts after both files are open, so process start-up (~3 ms, a few percent of a
    warm 1 GiB read) is left out; the FUSE open is a single request either way.
    """
    out = run(["dd", f"if={path}", "of=/dev/null", "bs=1M"]).stderr
    m = re.search(r"copied, ([0-9.]+(?:e[-+]?[0-9]+)?) s", out)
    if not m:
        raise RuntimeError(f"cannot parse dd output: {out!r}")
    return float(m.group(1))


def fuse_mounts() -> dict[str, str]:
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if rfields and rfields[0].startswith("fuse"):
                out[fields[4].replace("\\040", " ")] = fields[2]  # mountpoint -> major:minor
    return out


def write_random_file(path: Path, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(rng.bytes(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())


def fadvise_dontneed(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def meminfo_kib(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def cache_file(path: Path) -> None:
    """Read a file once so it sits in the page cache."""
    run(["dd", f"if={path}", "of=/dev/null", "bs=1M"])


# ---- the mount ----------------------------------------------------------------------------------
class Mount:
    def __init__(self, cli: list[str], storage: Path, config: Path, mountpoint: Path, log_path: Path,
                 force_read_ahead_kb: int | None = None):
        self.cli, self.storage, self.config, self.mountpoint = cli, storage, config, mountpoint
        self.log_path = log_path
        self.force_read_ahead_kb = force_read_ahead_kb
        self.proc: subprocess.Popen | None = None
        # one node, no channel: it listens on loopback only (KACHERYFS_LISTEN; older versions ignore it)
        self.env = dict(os.environ, KACHERY_STORAGE_DIR=str(storage), KACHERY_P2P_CONFIG_DIR=str(config),
                        KACHERYFS_LISTEN="127.0.0.1:0")

    def start(self, timeout: float = 30.0) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.cli + ["mount", str(self.mountpoint)], env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log_path.read_text()[-2000:])
            if str(self.mountpoint) in fuse_mounts():
                try:
                    if "store" in os.listdir(self.mountpoint):
                        if self.force_read_ahead_kb:  # experiment: override what the mount set
                            dev = fuse_mounts()[str(self.mountpoint)]
                            Path(f"/sys/class/bdi/{dev}/read_ahead_kb").write_text(str(self.force_read_ahead_kb))
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"mount not ready after {timeout}s; see {self.log_path}")

    def read_ahead_kb(self) -> int | None:
        dev = fuse_mounts().get(str(self.mountpoint))
        try:
            return int(Path(f"/sys/class/bdi/{dev}/read_ahead_kb").read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """`kacheryfs unmount`, then SIGTERM/SIGKILL of our own daemon if needed, then a lazy unmount."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                subprocess.run(self.cli + ["unmount", str(self.mountpoint)], env=self.env,
                               capture_output=True, timeout=30)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.terminate()
                    try:
                        self.proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait(timeout=10)
        finally:
            if str(self.mountpoint) in fuse_mounts():
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def object_path(storage: Path, sha1: str) -> Path:
    return storage / "sha1" / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1


def uri_hash(path: Path) -> str:
    uri = os.getxattr(path, URI_XATTR).decode()
    assert uri.startswith("sha1://"), uri
    return uri[len("sha1://"):].split("/", 1)[0].split("?", 1)[0]


# ---- statistics and reporting -------------------------------------------------------------------
def summarize(nbytes: int, seconds: list[float]) -> dict:
    rates = [nbytes / s / MB for s in seconds]
    return {
        "seconds": [round(s, 4) for s in seconds],
        "mb_s": [round(r, 1) for r in rates],
        "median_mb_s": round(statistics.median(rates), 1),
        "best_mb_s": round(max(rates), 1),
    }


def make_row(key: str, label: str, nbytes: int, ours: list[float], base: list[float],
             base_label: str) -> dict:
    a, b = summarize(nbytes, ours), summarize(nbytes, base)
    ratio = a["median_mb_s"] / b["median_mb_s"]
    goal = GOALS.get(key)
    return {
        "key": key, "label": label, "bytes": nbytes, "baseline": base_label,
        "kacheryfs": a, "direct": b,
        "ratio_median": round(ratio, 3),
        "ratio_best": round(a["best_mb_s"] / b["best_mb_s"], 3),
        "goal": goal,
        "met": None if goal is None else ratio >= goal,
    }


def format_table(rows: list[dict]) -> str:
    head = ("| measurement | kacheryfs MB/s median (best) | baseline MB/s median (best) | ratio | goal |\n"
            "|---|---:|---:|---:|---|")
    lines = [head]
    for r in rows:
        a, b = r["kacheryfs"], r["direct"]
        if r["goal"] is None:
            goal = "—"
        else:
            goal = f"≥ {r['goal']} {'met' if r['met'] else '**missed**'}"
        lines.append(f"| {r['label']} (n={len(a['seconds'])}) | {a['median_mb_s']:,.0f} ({a['best_mb_s']:,.0f}) | "
                     f"{b['median_mb_s']:,.0f} ({b['best_mb_s']:,.0f}) | {r['ratio_median']:.2f} | {goal} |")
    return "\n".join(lines)


# ---- the benchmarks -----------------------------------------------------------------------------
def bench_write(mount: Mount, src: Path, plain_dir: Path, size: int, repeats: int) -> tuple[list[dict], str]:
    """cp into store/ (hashed, fsynced on close) vs cp into a plain dir + sync, and vs dd bs=1M + sync.

    Every repeat gives the source new first bytes, so each store cp creates (hashes, fsyncs) a new
    object. The order of the three rotates from repeat to repeat.
    """
    times: dict[str, list[float]] = {"store": [], "cp": [], "dd": []}
    sha1 = ""
    cache_file(src)
    kinds = ["store", "cp", "dd"]
    fd = os.open(src, os.O_WRONLY)
    try:
        for i in range(repeats):
            os.pwrite(fd, i.to_bytes(8, "little"), 0)
            for which in kinds[i % 3:] + kinds[:i % 3]:
                settle()  # no dirty pages, same memory state for every variant
                if which == "store":
                    dest = mount.mountpoint / "store" / f"big-{i}.bin"
                    times["store"].append(timed(["cp", str(src), str(dest)]))
                    sha1 = uri_hash(dest)  # committed, and the hash of what we wrote
                    continue
                dest = plain_dir / "big.bin"
                cmd = (["cp", str(src), str(dest)] if which == "cp"
                       else ["dd", f"if={src}", f"of={dest}", "bs=1M"])
                t0 = time.perf_counter()
                run(cmd)
                run(["sync"])
                times[which].append(time.perf_counter() - t0)
                dest.unlink()
            log(f"  write {i + 1}/{repeats}: store {size / times['store'][-1] / MB:,.0f} MB/s, "
                f"cp+sync {size / times['cp'][-1] / MB:,.0f} MB/s, dd+sync {size / times['dd'][-1] / MB:,.0f} MB/s")
    finally:
        os.close(fd)
    os.sync()
    mib = size // MiB
    rows = [
        make_row("write_cp", f"cp {mib} MiB into store/ vs cp + sync", size, times["store"], times["cp"],
                 "cp to a plain dir on the same disk, then sync"),
        make_row("write_cp_vs_dd", f"cp {mib} MiB into store/ vs dd bs=1M + sync", size, times["store"],
                 times["dd"], "dd bs=1M (read/write, no copy_file_range) to a plain dir, then sync"),
    ]
    return rows, sha1


def bench_read(mount: Mount, sha1: str, size: int, cold_n: int, warm_n: int, settled_n: int,
               fuse_cold_n: int, first_n: int = 0) -> list[dict]:
    direct = object_path(mount.storage, sha1)
    via = mount.mountpoint / "sha1" / sha1
    assert direct.stat().st_size == size and via.stat().st_size == size
    mib = size // MiB
    base = "dd of the object file in the storage dir"
    rows = []

    def cold_round(times: dict, settled: bool, warm: dict | None, i: int) -> None:
        for which in (("mount", "direct") if i % 2 == 0 else ("direct", "mount")):
            path = via if which == "mount" else direct
            drop_caches()
            if settled:
                settle()
            times[which].append(dd_read(path))
            if warm is not None:
                for k in range(warm_n):
                    (warm if k == 0 else steady)[which].append(dd_read(path))

    cold = {"mount": [], "direct": []}
    warm = {"mount": [], "direct": []}  # the read right after the cold one
    steady = {"mount": [], "direct": []}  # the reads after that
    for i in range(cold_n):
        cold_round(cold, False, warm, i)
        log(f"  read {i + 1}/{cold_n}: cold mount {size / cold['mount'][-1] / MB:,.0f} / direct "
            f"{size / cold['direct'][-1] / MB:,.0f} MB/s; warm mount {size / warm['mount'][-1] / MB:,.0f} "
            f"/ direct {size / warm['direct'][-1] / MB:,.0f} MB/s")
    if cold_n:
        rows.append(make_row("read_cold", f"dd read {mib} MiB, cold (drop_caches before both)", size,
                             cold["mount"], cold["direct"], base))
    if warm["mount"]:
        rows.append(make_row("read_warm", f"dd read {mib} MiB, warm (2nd read)", size,
                             warm["mount"], warm["direct"], base))
    if steady["mount"]:
        rows.append(make_row("read_warm_steady", f"dd read {mib} MiB, warm (3rd and later reads)", size,
                             steady["mount"], steady["direct"], base))
    if settled_n:
        settled = {"mount": [], "direct": []}
        for i in range(settled_n):
            cold_round(settled, True, None, i)
            log(f"  settled cold {i + 1}/{settled_n}: mount {size / settled['mount'][-1] / MB:,.0f} / direct "
                f"{size / settled['direct'][-1] / MB:,.0f} MB/s")
        rows.append(make_row("read_cold_settled", f"dd read {mib} MiB, cold, memory settled {SETTLE_S:g} s",
                             size, settled["mount"], settled["direct"], base))
    if fuse_cold_n:
        # A fresh mount, then before each read POSIX_FADV_DONTNEED on the FUSE file: that drops the FUSE
        # page cache (and frees its memory just before the read, as drop_caches does for the cold rows)
        # while the backing object file stays in the page cache.
        mount.restart()
        cache_file(direct)
        fuse_cold, direct_warm = [], []
        for i in range(fuse_cold_n):
            direct_warm.append(dd_read(direct))
            cached_before = meminfo_kib("Cached")
            fadvise_dontneed(via)
            dropped_mib = (cached_before - meminfo_kib("Cached")) / 1024
            fuse_cold.append(dd_read(via))
            log(f"  fuse-cold {i + 1}/{fuse_cold_n}: {size / fuse_cold[-1] / MB:,.0f} MB/s "
                f"(dropped {dropped_mib:,.0f} MiB of FUSE page cache first)")
        rows.append(make_row("read_fuse_cold", f"dd read {mib} MiB, FUSE cache cold, backing file cached",
                             size, fuse_cold, direct_warm, "dd of the page-cached object file"))
    if first_n:
        # The first read of each chunk in a daemon run is checked against bit rot (store/integrity.py):
        # every sample here is the first read on a freshly started mount, backing file cached.
        cache_file(direct)
        first, direct_warm = [], []
        for i in range(first_n):
            mount.restart()
            fadvise_dontneed(via)
            direct_warm.append(dd_read(direct))
            first.append(dd_read(via))
            log(f"  first read {i + 1}/{first_n}: {size / first[-1] / MB:,.0f} MB/s "
                f"(direct {size / direct_warm[-1] / MB:,.0f} MB/s)")
        rows.append(make_row("read_first_checked", f"dd read {mib} MiB, first read in a daemon run (checked), "
                             "backing file cached", size, first, direct_warm, "dd of the page-cached object file"))
    return rows


def np_load_time(path: Path, expect_shape: tuple) -> float:
    t0 = time.perf_counter()
    arr = np.load(path)
    elapsed = time.perf_counter() - t0
    assert arr.shape == expect_shape
    del arr
    return elapsed


def bench_npy(mount: Mount, tmp: Path, npy_mib: int, warm_n: int, cold_n: int) -> list[dict]:
    n = npy_mib * MiB // 8
    arr = np.random.default_rng(7).standard_normal(n)
    src = tmp / "array.npy"
    np.save(src, arr)
    del arr
    nbytes = src.stat().st_size
    dest = mount.mountpoint / "store" / "array.npy"
    run(["cp", str(src), str(dest)])
    src.unlink()
    sha1 = uri_hash(dest)
    direct = object_path(mount.storage, sha1)
    via = mount.mountpoint / "sha1" / sha1
    shape = (n,)
    cold = {"mount": [], "direct": []}
    warm = {"mount": [], "direct": []}
    for i in range(max(cold_n, 1)):
        order = ("mount", "direct") if i % 2 == 0 else ("direct", "mount")
        for which in order:
            path = via if which == "mount" else direct
            if cold_n:
                drop_caches()
                cold[which].append(np_load_time(path, shape))
            else:
                np_load_time(path, shape)  # warm-up
            for _ in range(warm_n):
                warm[which].append(np_load_time(path, shape))
    log(f"  np.load warm: mount {nbytes / statistics.median(warm['mount']) / MB:,.0f} / direct "
        f"{nbytes / statistics.median(warm['direct']) / MB:,.0f} MB/s")
    rows = [make_row("npy_warm", f"np.load {nbytes / MiB:.0f} MiB .npy, warm", nbytes,
                     warm["mount"], warm["direct"], "np.load of the object file in the storage dir")]
    if cold_n:
        rows.append(make_row("npy_cold", f"np.load {nbytes / MiB:.0f} MiB .npy, cold (drop_caches)", nbytes,
                             cold["mount"], cold["direct"], "np.load of the object file in the storage dir"))
    return rows


# ---- main ---------------------------------------------------------------------------------------
def machine_facts(tmp: Path) -> dict:
    def read(p):
        try:
            return Path(p).read_text().strip()
        except OSError:
            return None

    cpu = None
    for line in (read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = None
    for line in (read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    st = os.stat(tmp)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    fstype = None
    for line in (read("/proc/self/mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        if left.split()[2] == dev:
            fstype = right.split()[0]
    try:
        commit = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = bool(run(["git", "-C", str(REPO), "status", "--porcelain", "--", "kacheryfs"]).stdout.strip())
    except (subprocess.CalledProcessError, FileNotFoundError):
        commit, dirty = None, None
    try:
        from importlib.metadata import version
        pyfuse3_version = version("pyfuse3")  # the venv's; the benchmark never imports it
    except Exception:
        pyfuse3_version = None
    return {
        "cpus": os.cpu_count(), "cpu_model": cpu, "mem_gib": round(mem_kb / (1 << 20), 1) if mem_kb else None,
        "kernel": platform.release(), "python": platform.python_version(), "numpy": np.__version__,
        "pyfuse3": pyfuse3_version, "tmp_dir": str(tmp), "tmp_fs": fstype, "tmp_dev": dev,
        "block_read_ahead_kb": {d: read(f"/sys/block/{d}/queue/read_ahead_kb")
                                for d in sorted(os.listdir("/sys/block")) if not d.startswith(("loop", "ram"))},
        "dirty_background_ratio": read("/proc/sys/vm/dirty_background_ratio"),
        "dirty_ratio": read("/proc/sys/vm/dirty_ratio"),
        # Free page reporting returns freed guest memory to the host (see settle()).
        "virtio_balloon": os.path.isdir("/sys/bus/virtio/drivers/virtio_balloon"),
        "page_reporting_order": read("/sys/module/page_reporting/parameters/page_reporting_order"),
        "git_commit": commit, "kacheryfs_tree_dirty": dirty,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="size of the read/write test file (default 1024)")
    p.add_argument("--npy-mib", type=int, default=400, help="size of the .npy array (default 400; 0 skips)")
    p.add_argument("--cold", type=int, default=9, help="cold read repeats per side (default 9)")
    p.add_argument("--warm", type=int, default=3,
                   help="warm reads after each cold read (default 3): the first is the 2nd-read row, the rest 'steady'")
    p.add_argument("--settled-cold", type=int, default=3,
                   help="cold read repeats per side with memory settled first (default 3; 0 skips)")
    p.add_argument("--fuse-cold", type=int, default=9, help="FUSE-cold/backing-cached repeats (default 9; 0 skips)")
    p.add_argument("--first-read", type=int, default=5,
                   help="first reads on a fresh mount (bit-rot check), backing file cached (default 5; 0 skips)")
    p.add_argument("--writes", type=int, default=5, help="cp repeats per side (default 5)")
    p.add_argument("--npy-warm", type=int, default=3, help="warm np.load repeats per cold round (default 3)")
    p.add_argument("--npy-cold", type=int, default=5, help="cold np.load rounds (default 5; 0 skips cold)")
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds to wait (after sync) before each write run and each settled cold read (default 3)")
    p.add_argument("--tmp-dir", default="/tmp", help="parent of the temp dir (default /tmp; same disk as storage)")
    p.add_argument("--kacheryfs", default=str(REPO / ".venv" / "bin" / "kacheryfs"),
                   help="the CLI to mount with (default: the venv's, i.e. the working tree)")
    p.add_argument("--git-ref", default=None,
                   help="benchmark the kacheryfs package as of this commit (exported with git archive, run "
                        "with the venv's python) instead of the working tree")
    p.add_argument("--force-read-ahead-kb", type=int, default=None,
                   help="experiment: set the FUSE bdi read_ahead_kb after each mount is serving")
    p.add_argument("--no-save", action="store_true", help="do not write JSON results")
    args = p.parse_args(argv)

    if os.geteuid() != 0:
        p.error("run as root: cold runs need /proc/sys/vm/drop_caches")
    global SETTLE_S
    SETTLE_S = args.settle
    exe = Path(args.kacheryfs)
    if not exe.exists():
        p.error(f"{exe} not found (run bash scripts/setup.sh)")

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    started = dt.datetime.now()
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="kacheryfs-bench-", dir=args.tmp_dir))
    storage, config, mnt, plain = tmp / "storage", tmp / "config", tmp / "mnt", tmp / "plain"
    for d in (storage, config, plain):
        d.mkdir()
    size = args.size_mib * MiB
    rows: list[dict] = []
    facts = machine_facts(tmp)
    load_before = os.getloadavg()
    mount = None
    try:
        if args.git_ref:
            code = tmp / "code"
            code.mkdir()
            sha = run(["git", "-C", str(REPO), "rev-parse", "--verify", args.git_ref + "^{commit}"]).stdout.strip()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "kacheryfs"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
            python = exe.parent / "python"
            cli = [str(python), "-c", f"import sys; sys.path.insert(0, {str(code)!r}); "
                                      "from kacheryfs.cli import main; sys.exit(main())"]
            facts["code"] = f"git archive {args.git_ref} ({sha[:10]})"
        else:
            cli = [str(exe)]
            facts["code"] = (f"{exe} (working tree at {facts['git_commit']}"
                             f"{', kacheryfs/ modified' if facts['kacheryfs_tree_dirty'] else ''})")
        facts["cli"] = cli
        mount = Mount(cli, storage, config, mnt, tmp / "mount.log", args.force_read_ahead_kb)
        log(f"temp dir {tmp} ({facts['tmp_fs']}); writing a {args.size_mib} MiB random source file")
        src = tmp / "source.bin"
        write_random_file(src, size, seed=1)
        mount.start()
        facts["fuse_read_ahead_kb"] = mount.read_ahead_kb()
        log(f"mounted {mnt} (FUSE read_ahead_kb={facts['fuse_read_ahead_kb']})")

        if args.writes:
            log(f"write: cp into store/ vs cp + sync and dd + sync, {args.writes} repeats")
            write_rows, sha1 = bench_write(mount, src, plain, size, args.writes)
        else:
            write_rows = []
            run(["cp", str(src), str(mnt / "store" / "big.bin")])
            sha1 = uri_hash(mnt / "store" / "big.bin")
        src.unlink()
        log(f"read: object {sha1}, {args.cold} cold rounds x {args.warm} warm, {args.fuse_cold} FUSE-cold")
        rows += bench_read(mount, sha1, size, args.cold, args.warm, args.settled_cold, args.fuse_cold,
                           args.first_read)
        rows += write_rows
        if args.npy_mib:
            log(f"np.load: {args.npy_mib} MiB array, {args.npy_cold} cold rounds x {args.npy_warm} warm")
            rows += bench_npy(mount, tmp, args.npy_mib, args.npy_warm, args.npy_cold)
    finally:
        if mount is not None:
            mount.stop()
        if str(mnt) in fuse_mounts():
            log(f"WARNING: {mnt} is still mounted; leaving {tmp} in place")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.perf_counter() - t_start
    table = format_table(rows)
    print(f"\nkacheryfs foundation benchmark, {started:%Y-%m-%d %H:%M}, {facts['cpus']} cores, "
          f"{facts['kernel']}, {elapsed:.0f} s; code: {facts['code']}; FUSE read_ahead_kb "
          f"{facts.get('fuse_read_ahead_kb')}; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after\n(MB = 10^6 bytes; ratio = kacheryfs / baseline, of medians)\n")
    print(table)
    result = {
        "benchmark": "foundation", "date": started.isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1), "args": vars(args), "machine": facts,
        "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "rows": rows, "table_markdown": table,
    }
    if not args.no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        text = json.dumps(result, indent=2) + "\n"
        dated = RESULTS_DIR / f"foundation-{started:%Y-%m-%d-%H%M%S}.json"
        dated.write_text(text)
        (RESULTS_DIR / "foundation-latest.json").write_text(text)
        print(f"\nsaved {dated.relative_to(REPO)} and foundation-latest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
