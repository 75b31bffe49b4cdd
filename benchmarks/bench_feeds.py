"""Feeds benchmark: local append rate, and end-to-end latency A append -> B sees it on loopback.

    .venv/bin/python benchmarks/bench_feeds.py [--messages 1000]

Two real daemons (`kacheryfs daemon`) on 127.0.0.1 in one channel. A appends through its local API
(the Python feed API), B follows with `message_stream()` (pushes, not polling). Prints a table and
saves benchmarks/results/feeds-<date>.json and feeds-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KACHERYFS = str(Path(sys.executable).parent / "kacheryfs")
sys.path.insert(0, str(ROOT))


def env_for(base: Path, name: str, discovery: Path) -> dict[str, str]:
    return dict(os.environ, KACHERY_STORAGE_DIR=str(base / name / "storage"),
                KACHERY_P2P_CONFIG_DIR=str(base / name / "config"), KACHERYFS_DISCOVERY_DIR=str(discovery),
                KACHERYFS_LAN_DISCOVERY="0")


def local_append_rate(base: Path, n: int) -> dict:
    from kacheryfs.feeds import FeedStore

    store = FeedStore(base / "local" / "feeds.sqlite3", base / "local" / "keys")
    feed = store.create_feed()
    t = time.perf_counter()
    for i in range(n):
        store.append(feed, "one", [{"i": i}])
    one = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(n // 100):
        store.append(feed, "batch", [{"i": i, "j": j} for j in range(100)])
    batch = (n // 100) * 100 / (time.perf_counter() - t)
    store.close()
    return {"append_one_per_s": one, "append_batch100_per_s": batch}


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def end_to_end(base: Path, n: int) -> dict:
    import kacheryfs.api.feeds as fa

    discovery = base / "discovery"
    envs = {name: env_for(base, name, discovery) for name in ("a", "b")}
    procs = []
    try:
        for name in ("a", "b"):
            log = open(base / f"{name}.log", "wb")
            procs.append(subprocess.Popen([KACHERYFS, "daemon", "--channel", "bench", "--listen", "127.0.0.1:0"],
                                          env=envs[name], stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 30
        while "connected <peer" not in (base / "b.log").read_text():
            if time.monotonic() > deadline:
                raise SystemExit("daemons did not connect")
            time.sleep(0.1)
        feed_a = fa.create_feed(storage_dir=envs["a"]["KACHERY_STORAGE_DIR"], config_dir=envs["a"]["KACHERY_P2P_CONFIG_DIR"])
        sub_a = feed_a.get_subfeed("latency")
        sub_a.append_message({"warmup": True})
        feed_b = fa.load_feed(feed_a.feed_id, storage_dir=envs["b"]["KACHERY_STORAGE_DIR"],
                              config_dir=envs["b"]["KACHERY_P2P_CONFIG_DIR"])
        sub_b = feed_b.get_subfeed("latency")
        arrived: dict[int, float] = {}
        seen = threading.Condition()

        def follow():
            for message in sub_b.message_stream():
                with seen:
                    if isinstance(message, dict) and "i" in message:
                        arrived[message["i"]] = time.perf_counter()
                    seen.notify_all()
                    if len(arrived) >= n:
                        return

        threading.Thread(target=follow, daemon=True).start()
        latencies = []
        for i in range(n):
            start = time.perf_counter()
            sub_a.append_message({"i": i})
            with seen:
                if not seen.wait_for(lambda: i in arrived, timeout=10):
                    raise SystemExit(f"message {i} never arrived")
            latencies.append(arrived[i] - start)
        return {"messages": n, "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
                "max_ms": 1000 * max(latencies), "mean_ms": 1000 * statistics.mean(latencies)}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kacheryfs-feeds-bench-") as tmp:
        base = Path(tmp)
        local = local_append_rate(base, args.messages)
        e2e = end_to_end(base, args.messages)
    rows = [
        ("append, 1 message per call (durable: fsync each)", f"{local['append_one_per_s']:,.0f} msg/s", ""),
        ("append, 100 messages per call", f"{local['append_batch100_per_s']:,.0f} msg/s", ""),
        (f"A append -> B sees it, p50 over {e2e['messages']}", f"{e2e['p50_ms']:.1f} ms", "goal <= 20 ms"),
        (f"A append -> B sees it, p99 over {e2e['messages']}", f"{e2e['p99_ms']:.1f} ms", "goal <= 100 ms"),
        ("A append -> B sees it, max", f"{e2e['max_ms']:.1f} ms", ""),
    ]
    print(f"{'measurement':<52} {'result':>16}  goal")
    for name, value, goal in rows:
        print(f"{name:<52} {value:>16}  {goal}")
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "local": local, "end_to_end": e2e,
               "command": "benchmarks/bench_feeds.py " + " ".join(sys.argv[1:])}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    for name in (f"feeds-{time.strftime('%Y-%m-%d-%H%M%S')}.json", "feeds-latest.json"):
        (out / name).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
