#!/usr/bin/env python3
"""Foundation benchmark: the kacheryfs mount against the plain disk, side by side, in one run.

    .venv/bin/python benchmarks/bench_foundation.py [--size-mib 1024] [--npy-mib 400]

Measures (MB = 10**6 bytes):

1. sequential read of a --size-mib object: ``dd bs=1M`` of ``<mount>/sha1/<hash>`` against ``dd`` of
   the object file in the storage dir; cold (``sync; echo 3 > /proc/sys/vm/drop_caches`` before
   *both*), warm (read again), and FUSE-cold with the backing file page-cached (remount).
2. ``cp`` of a --size-mib file into ``<mount>/store/`` (hashed, fsynced on close) against ``cp`` into
   a plain directory on the same disk followed by ``sync``.
3. ``np.load`` of a --npy-mib array from ``<mount>/sha1/<hash>`` against the storage-dir path, warm
   and cold.

Runs as root (drop_caches, read_ahead_kb). Everything it creates lives in one temp dir (same disk
as the storage dir), which is unmounted and deleted at the end, also on failure or Ctrl-C.
Prints a table and writes benchmarks/results/foundation-<date>.json and foundation-latest.json.
Stdlib + numpy only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
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
    "write_cp": 0.5,
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


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    run(args)
    return time.perf_counter() - t0


def dd_read(path: Path) -> float:
    return timed(["dd", f"if={path}", "of=/dev/null", "bs=1M"])


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


def cache_file(path: Path) -> None:
    """Read a file once so it sits in the page cache."""
    run(["dd", f"if={path}", "of=/dev/null", "bs=1M"])


# ---- the mount ----------------------------------------------------------------------------------
class Mount:
    def __init__(self, exe: Path, storage: Path, config: Path, mountpoint: Path, log_path: Path,
                 force_read_ahead_kb: int | None = None):
        self.exe, self.storage, self.config, self.mountpoint = exe, storage, config, mountpoint
        self.log_path = log_path
        self.force_read_ahead_kb = force_read_ahead_kb
        self.proc: subprocess.Popen | None = None
        self.env = dict(os.environ, KACHERY_STORAGE_DIR=str(storage), KACHERY_P2P_CONFIG_DIR=str(config))

    def start(self, timeout: float = 30.0) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([str(self.exe), "mount", str(self.mountpoint)], env=self.env,
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
                subprocess.run([str(self.exe), "unmount", str(self.mountpoint)], env=self.env,
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
def bench_write(mount: Mount, src: Path, plain_dir: Path, size: int, repeats: int) -> tuple[dict, str]:
    """cp into store/ (fsync on commit) vs cp into a plain dir + sync. Each repeat stores new content."""
    store_times, plain_times = [], []
    sha1 = ""
    cache_file(src)
    fd = os.open(src, os.O_WRONLY)
    try:
        for i in range(repeats):
            # A distinct first 8 bytes per repeat: every store cp creates (hashes, fsyncs) a new object.
            os.pwrite(fd, i.to_bytes(8, "little"), 0)
            for which in (("store", "plain") if i % 2 == 0 else ("plain", "store")):
                os.sync()  # start with no dirty pages
                if which == "store":
                    dest = mount.mountpoint / "store" / f"big-{i}.bin"
                    store_times.append(timed(["cp", str(src), str(dest)]))
                    sha1 = uri_hash(dest)
                else:
                    dest = plain_dir / "big.bin"
                    t0 = time.perf_counter()
                    run(["cp", str(src), str(dest)])
                    run(["sync"])
                    plain_times.append(time.perf_counter() - t0)
                    dest.unlink()
            log(f"  write {i + 1}/{repeats}: store {size / store_times[-1] / MB:,.0f} MB/s, "
                f"cp+sync {size / plain_times[-1] / MB:,.0f} MB/s")
    finally:
        os.close(fd)
    os.sync()
    row = make_row("write_cp", f"cp {size // MiB} MiB into store/ vs cp + sync", size,
                   store_times, plain_times, "cp to a plain dir on the same disk, then sync")
    return row, sha1


def bench_read(mount: Mount, sha1: str, size: int, cold_n: int, warm_n: int, fuse_cold_n: int) -> list[dict]:
    direct = object_path(mount.storage, sha1)
    via = mount.mountpoint / "sha1" / sha1
    assert direct.stat().st_size == size and via.stat().st_size == size
    cold = {"mount": [], "direct": []}
    warm = {"mount": [], "direct": []}
    for i in range(cold_n):
        order = ("mount", "direct") if i % 2 == 0 else ("direct", "mount")
        for which in order:
            path = via if which == "mount" else direct
            drop_caches()
            cold[which].append(dd_read(path))
            for _ in range(warm_n):
                warm[which].append(dd_read(path))
        log(f"  read {i + 1}/{cold_n}: cold mount {size / cold['mount'][-1] / MB:,.0f} / direct "
            f"{size / cold['direct'][-1] / MB:,.0f} MB/s; warm mount {size / warm['mount'][-1] / MB:,.0f} "
            f"/ direct {size / warm['direct'][-1] / MB:,.0f} MB/s")
    rows = [
        make_row("read_cold", f"dd read {size // MiB} MiB, cold (drop_caches before both)", size,
                 cold["mount"], cold["direct"], "dd of the object file in the storage dir"),
        make_row("read_warm", f"dd read {size // MiB} MiB, warm (read again)", size,
                 warm["mount"], warm["direct"], "dd of the object file in the storage dir"),
    ]
    if fuse_cold_n:
        # Remount clears the FUSE page cache; the backing object stays in the page cache.
        fuse_cold, direct_warm = [], []
        for i in range(fuse_cold_n):
            mount.restart()
            cache_file(direct)
            direct_warm.append(dd_read(direct))
            fuse_cold.append(dd_read(via))
            log(f"  fuse-cold {i + 1}/{fuse_cold_n}: {size / fuse_cold[-1] / MB:,.0f} MB/s")
        rows.append(make_row("read_fuse_cold", f"dd read {size // MiB} MiB, FUSE cache cold, backing file cached",
                             size, fuse_cold, direct_warm, "dd of the page-cached object file"))
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
        import pyfuse3  # noqa: F401 (version only; the benchmark itself never imports the fs)
        pyfuse3_version = pyfuse3.__version__
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
        "git_commit": commit, "kacheryfs_tree_dirty": dirty,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="size of the read/write test file (default 1024)")
    p.add_argument("--npy-mib", type=int, default=400, help="size of the .npy array (default 400)")
    p.add_argument("--cold", type=int, default=5, help="cold read repeats per side (default 5)")
    p.add_argument("--warm", type=int, default=3, help="warm reads after each cold read (default 3)")
    p.add_argument("--fuse-cold", type=int, default=3, help="FUSE-cold/backing-cached repeats (default 3; 0 skips)")
    p.add_argument("--writes", type=int, default=5, help="cp repeats per side (default 5)")
    p.add_argument("--npy-warm", type=int, default=3, help="warm np.load repeats per cold round (default 3)")
    p.add_argument("--npy-cold", type=int, default=3, help="cold np.load rounds (default 3; 0 skips cold)")
    p.add_argument("--tmp-dir", default="/tmp", help="parent of the temp dir (default /tmp; same disk as storage)")
    p.add_argument("--kacheryfs", default=str(REPO / ".venv" / "bin" / "kacheryfs"), help="the CLI to mount with")
    p.add_argument("--force-read-ahead-kb", type=int, default=None,
                   help="experiment: set the FUSE bdi read_ahead_kb after each mount is serving")
    p.add_argument("--no-save", action="store_true", help="do not write JSON results")
    args = p.parse_args(argv)

    if os.geteuid() != 0:
        p.error("run as root: cold runs need /proc/sys/vm/drop_caches")
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
    mount = Mount(exe, storage, config, mnt, tmp / "mount.log", args.force_read_ahead_kb)
    size = args.size_mib * MiB
    rows: list[dict] = []
    facts = machine_facts(tmp)
    load_before = os.getloadavg()
    try:
        log(f"temp dir {tmp} ({facts['tmp_fs']}); writing a {args.size_mib} MiB random source file")
        src = tmp / "source.bin"
        write_random_file(src, size, seed=1)
        mount.start()
        facts["fuse_read_ahead_kb"] = mount.read_ahead_kb()
        log(f"mounted {mnt} (FUSE read_ahead_kb={facts['fuse_read_ahead_kb']})")

        log(f"write: cp into store/ vs cp + sync, {args.writes} repeats")
        write_row, sha1 = bench_write(mount, src, plain, size, args.writes)
        src.unlink()
        log(f"read: object {sha1}, {args.cold} cold rounds x {args.warm} warm, {args.fuse_cold} FUSE-cold")
        rows += bench_read(mount, sha1, size, args.cold, args.warm, args.fuse_cold)
        rows.append(write_row)
        log(f"np.load: {args.npy_mib} MiB array, {args.npy_cold} cold rounds x {args.npy_warm} warm")
        rows += bench_npy(mount, tmp, args.npy_mib, args.npy_warm, args.npy_cold)
    finally:
        mount.stop()
        if str(mnt) in fuse_mounts():
            log(f"WARNING: {mnt} is still mounted; leaving {tmp} in place")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.perf_counter() - t_start
    table = format_table(rows)
    print(f"\nkacheryfs foundation benchmark, {started:%Y-%m-%d %H:%M}, {facts['cpus']} cores, "
          f"{facts['kernel']}, {elapsed:.0f} s (MB = 10^6 bytes; ratio = kacheryfs / baseline, medians)\n")
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
