#!/usr/bin/env python3
"""HTTP gateway benchmark: what a web tool gets from `--http`, against the node's own paths, in one run.

    .venv/bin/python benchmarks/bench_gateway.py [--size-mib 256] [--ttfb-reads 20]

MB = 10**6 bytes. Two `kacheryfs daemon` subprocesses on 127.0.0.1 (own storage and config dirs, a
private discovery dir): A holds three random objects of --size-mib; B, empty, runs the gateway.
1. ``curl -o /dev/null`` of object 1 from B's gateway while B fetches it from A ("remote, cold"),
   against ``kacheryfs load`` of object 2 (same size) with B's environment (the daemon's own fetch);
   both end with the object verified and installed in B's store.
2. ``curl`` of object 1 again, now local to B ("local"), against ``cat`` of B's object file to
   /dev/null (the page cache: the ceiling).
3. Time to first byte of a 4 KiB ``Range`` request at random offsets of object 3 (remote, lazy: one
   chunk fetched per request), --ttfb-reads of them, median and 90th percentile.
The machine may be shared: figures taken while other jobs run are noisy (the load average is saved).
Prints a Markdown table; writes benchmarks/results/gateway-<date>-<time>.json and gateway-latest.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
KACHERYFS = str(REPO / ".venv" / "bin" / "kacheryfs")
RESULTS = REPO / "benchmarks" / "results"
MiB = 1 << 20


def env_for(root: Path, discovery: Path) -> dict[str, str]:
    return {**os.environ, "KACHERY_STORAGE_DIR": str(root / "storage"), "KACHERY_P2P_CONFIG_DIR": str(root / "config"),
            "KACHERYFS_DISCOVERY_DIR": str(discovery)}


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def status(env) -> dict:
    out = subprocess.run([KACHERYFS, "status", "--json"], env=env, capture_output=True, timeout=60)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def timed(args: list[str], env=None) -> float:
    t0 = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, timeout=900)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--ttfb-reads", type=int, default=20)
    parser.add_argument("--tmp-dir", default=None)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("bench_gateway: curl is needed (apt-get install curl)")
    size = args.size_mib * MiB
    tmp = Path(tempfile.mkdtemp(prefix="kfs-bench-gateway-", dir=args.tmp_dir))
    procs: list[subprocess.Popen] = []
    try:
        discovery = tmp / "discovery"
        a_env, b_env = env_for(tmp / "a", discovery), env_for(tmp / "b", discovery)
        rng = np.random.default_rng(0)
        uris = []
        for i in range(3):
            path = tmp / f"obj{i}.bin"
            with open(path, "wb") as f:
                for _ in range(args.size_mib // 16):
                    f.write(rng.integers(0, 256, 16 * MiB, dtype=np.uint8).tobytes())
            uris.append(subprocess.run([KACHERYFS, "store", str(path)], env=a_env, check=True,
                                       capture_output=True).stdout.decode().strip())
            path.unlink()
        sha1s = [u[7:47] for u in uris]
        for name, env, extra in (("a", a_env, []), ("b", b_env, ["--http", "127.0.0.1:0"])):
            log = open(tmp / f"{name}.log", "wb")
            procs.append(subprocess.Popen([KACHERYFS, "daemon", "--channel", "bench", "--listen", "127.0.0.1:0",
                                           *extra], env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        url = wait_for(lambda: (status(b_env).get("daemon") or {}).get("http"), "B's gateway")
        wait_for(lambda: (status(b_env).get("daemon") or {}).get("peers"), "B to meet A")
        rows = {}

        t = timed(["curl", "-sf", "-o", "/dev/null", f"{url}/sha1/{sha1s[0]}"])
        rows["gateway, remote (cold)"] = t
        t = timed([KACHERYFS, "load", uris[1], "--dest", "/dev/null"], env=b_env)
        rows["kacheryfs load, remote (baseline)"] = t
        t = timed(["curl", "-sf", "-o", "/dev/null", f"{url}/sha1/{sha1s[0]}"])
        rows["gateway, local"] = t
        obj = tmp / "b" / "storage" / "sha1" / sha1s[0][:2] / sha1s[0][2:4] / sha1s[0][4:6] / sha1s[0]
        t = timed(["cat", str(obj)])
        rows["cat of the object file (page cache, ceiling)"] = t

        ttfb = []
        offsets = random.Random(1).sample(range(size // MiB), min(args.ttfb_reads, size // MiB))
        for chunk in offsets:
            offset = chunk * MiB + 1000
            out = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{time_starttransfer}",
                                  "-H", f"Range: bytes={offset}-{offset + 4095}", f"{url}/sha1/{sha1s[2]}"],
                                 check=True, capture_output=True, timeout=120)
            ttfb.append(float(out.stdout) * 1000)
        ttfb.sort()
        result = {
            "when": dt.datetime.now().isoformat(timespec="seconds"), "size_mib": args.size_mib,
            "load_average": os.getloadavg(), "nproc": os.cpu_count(),
            "throughput_MBps": {k: size / v / 1e6 for k, v in rows.items()},
            "seconds": rows,
            "ttfb_ms": {"reads": len(ttfb), "median": statistics.median(ttfb),
                        "p90": ttfb[int(0.9 * (len(ttfb) - 1))], "max": ttfb[-1]},
        }
        print(f"\n{args.size_mib} MiB objects, load average {result['load_average'][0]:.1f} "
              f"on {result['nproc']} cores\n")
        print("| path | seconds | MB/s |\n|---|---|---|")
        for k, v in rows.items():
            print(f"| {k} | {v:.2f} | {size / v / 1e6:.0f} |")
        t = result["ttfb_ms"]
        print(f"\nTime to first byte, 4 KiB Range at random offsets of a remote object: median "
              f"{t['median']:.1f} ms, p90 {t['p90']:.1f} ms, max {t['max']:.1f} ms ({t['reads']} reads)")
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = re.sub(r"[:T]", "-", result["when"]).replace("--", "-")
        for name in (f"gateway-{stamp}.json", "gateway-latest.json"):
            (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
