"""Swarm benchmark: a flash crowd on one capped seeder, and a late joiner in a big channel.

    .venv/bin/python benchmarks/bench_swarm.py [--nodes 12 50] [--size-mb 16] [--rate-mb 8]

For each N: one seeder capped at R (the serve rate cap that KACHERYFS_TEST_SERVE_RATE sets) holds
an object of S MB; N-1 leechers in the same channel start fetching it at the same moment.
Reported: completion of the last leecher / (S/R) (one upload of the object; goal <= 1.5), the
seeder's bytes served / S, then a late joiner's find+fetch time once the crowd is done (goal
<= 1 s at N = 50), and its time from start (join + find + fetch). Each scenario runs twice in the
same run: with swarming, and with it off (KACHERYFS_SWARM=0: nobody serves a partial object, the
baseline). A third variant finds peers only through a local mainline DHT swarm (20 libtorrent
nodes on 127.0.0.1; no bootstrap, no shared discovery directory).

All nodes run in this one process (one trio run, real TCP on 127.0.0.1, real stores under a temp
dir): at N = 50 the harness is CPU-bound, so compare rows of one run, not with other machines.
Prints a table and saves benchmarks/results/swarm-<date>.json and swarm-latest.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kacheryfs.crypto import NodeKey, channel_id, channel_key  # noqa: E402
from kacheryfs.net.dht import DhtNode, start_swarm  # noqa: E402
from kacheryfs.net.fetcher import NetworkFetcher  # noqa: E402
from kacheryfs.net.node import Node  # noqa: E402
from kacheryfs.store import LocalStore  # noqa: E402

MB = 1_000_000
CHANNEL = {channel_id(channel_key("bench", b"secret")): channel_key("bench", b"secret")}


class Harness:
    def __init__(self, root: Path, nursery: trio.Nursery):
        self.root, self.nursery = root, nursery
        self.nodes: list[Node] = []
        self.count = 0

    async def node(self, *, swarming: bool, discovery: Path | None, dht_via: int | None = None,
                   rate: float | None = None) -> Node:
        self.count += 1
        store = LocalStore(self.root / f"n{self.count}")
        dht = DhtNode(("127.0.0.1", 0), (f"127.0.0.1:{dht_via}",)) if dht_via else None
        node = Node(NodeKey.generate(), store, CHANNEL, listen=("127.0.0.1", 0), discovery_dir=discovery,
                    serve_rate_limit=rate, swarming=swarming, dht=dht, find_timeout=5.0)
        await self.nursery.start(node.run)
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.cancel()
        self.nodes.clear()


async def wait_for(predicate, timeout: float, what: str) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def scenario(root: Path, n: int, size: int, rate: float, *, swarming: bool, dht: bool,
                   dht_ports: list[int]) -> dict:
    """One flash crowd of n-1 leechers on one capped seeder, then one late joiner."""
    from tests.conftest import random_bytes

    work = Path(tempfile.mkdtemp(dir=root))
    discovery = None if dht else work / "discovery"
    out: dict = {"nodes": n, "swarming": swarming, "dht": dht}
    async with trio.open_nursery() as nursery:
        h = Harness(work, nursery)
        via = iter(dht_ports * (n // max(1, len(dht_ports)) + 2)) if dht else None
        seeder = await h.node(swarming=swarming, discovery=discovery, rate=rate, dht_via=next(via) if dht else None)
        obj = seeder.store.put_bytes(random_bytes(size, seed=n))
        if dht:
            seeder.provide(obj.sha1)
        leechers = [await h.node(swarming=swarming, discovery=discovery, dht_via=next(via) if dht else None)
                    for _ in range(n - 1)]
        everyone = [seeder] + leechers
        t = time.perf_counter()
        await wait_for(lambda: all(len(x.sessions) >= min(4, n - 1) for x in everyone), 120, "the channel to form")
        out["join_s"] = time.perf_counter() - t
        t = time.perf_counter()
        done: list[float] = []

        async def fetch(node: Node) -> None:
            await NetworkFetcher(node).fetch(obj.sha1)
            done.append(time.perf_counter() - t)

        async with trio.open_nursery() as crowd:
            for node in leechers:
                crowd.start_soon(fetch, node)
        one_upload = size / rate
        out["crowd_s"] = max(done)
        out["crowd_over_one_upload"] = max(done) / one_upload
        out["seeder_served_over_size"] = sum(seeder.counters.served_bytes.values()) / size
        out["median_leecher_s"] = sorted(done)[len(done) // 2]
        # the late joiner
        t = time.perf_counter()
        late = await h.node(swarming=swarming, discovery=discovery, dht_via=next(via) if dht else None)
        await wait_for(lambda: len(late.sessions) >= 1, 60, "the late joiner's first peer")
        out["late_join_s"] = time.perf_counter() - t
        t2 = time.perf_counter()
        await NetworkFetcher(late).fetch(obj.sha1)
        out["late_find_fetch_s"] = time.perf_counter() - t2
        out["late_total_s"] = time.perf_counter() - t
        out["late_sessions"] = len(late.sessions)
        out["max_sessions_per_node"] = max(len(x.sessions) for x in everyone)
        assert late.store.read_bytes(obj.sha1) == seeder.store.read_bytes(obj.sha1)
        h.stop()
        nursery.cancel_scope.cancel()
    for node in h.nodes:
        node.store.close()
    shutil.rmtree(work, ignore_errors=True)
    return out


async def main_async(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="kacheryfs-bench-swarm-"))
    size, rate = int(args.size_mb * MB), args.rate_mb * MB
    results = {"size_mb": args.size_mb, "rate_mb_s": args.rate_mb, "one_upload_s": size / rate, "runs": []}
    try:
        async with trio.open_nursery() as nursery:
            dht_ports = []
            if not args.no_dht:
                swarm = await start_swarm(nursery, 20)
                with trio.fail_after(60):
                    for d in swarm:
                        await d.joined.wait()
                dht_ports = [d.port for d in swarm]
            for n in args.nodes:
                variants = [(True, False), (False, False)] + ([(True, True)] if not args.no_dht else [])
                for swarming, dht in variants:
                    print(f"N={n} swarming={'on' if swarming else 'off'} discovery={'dht' if dht else 'dir'} ...",
                          flush=True)
                    r = await scenario(root, n, size, rate, swarming=swarming, dht=dht, dht_ports=dht_ports)
                    print("   ", {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
                    results["runs"].append(r)
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, nargs="+", default=[12, 50])
    parser.add_argument("--size-mb", type=float, default=16)
    parser.add_argument("--rate-mb", type=float, default=8)
    parser.add_argument("--no-dht", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = trio.run(main_async, args)
    print(f"\nobject {args.size_mb:g} MB, seeder capped at {args.rate_mb:g} MB/s: one upload = "
          f"{results['one_upload_s']:.2f} s\n")
    print("| N | swarming | discovery | crowd done / one upload | seeder served / S | late joiner find+fetch | "
          "late joiner from start | sessions (max per node) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        print(f"| {r['nodes']} | {'on' if r['swarming'] else 'off (baseline)'} | {'DHT' if r['dht'] else 'shared dir'} "
              f"| {r['crowd_over_one_upload']:.2f} | {r['seeder_served_over_size']:.2f} | {r['late_find_fetch_s']:.2f} s "
              f"| {r['late_total_s']:.2f} s | {r['max_sessions_per_node']} |")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M%S")
    for name in (f"swarm-{stamp}.json", "swarm-latest.json"):
        (out / name).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
