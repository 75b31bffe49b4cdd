"""DHT benchmark: the cost of the DHT engine and how fast two members of a channel meet through a
local swarm of mainline DHT nodes (libtorrent) on 127.0.0.1.

    .venv/bin/python benchmarks/bench_dht.py [--swarm 20] [--trials 5]

Measures: `import libtorrent` time (a fresh interpreter), starting one DHT node, a swarm of N
nodes joining, and per trial: two fresh nodes (each joining through one swarm node) announcing
one channel key until each has found the other (join + announce + lookup). Prints a table and
saves benchmarks/results/dht-<date>.json and dht-latest.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kacheryfs.crypto import channel_key  # noqa: E402
from kacheryfs.net.dht import DhtNode, start_swarm  # noqa: E402
from kacheryfs.net.dht_discovery import DhtDiscovery  # noqa: E402


def import_cost() -> dict:
    """``import libtorrent`` timed inside fresh interpreters (best of five), and its resident memory."""
    code = ("import time, resource; t = time.perf_counter(); import libtorrent; "
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    runs = [subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
            for _ in range(5)]
    return {"libtorrent_import_s": min(float(r[0]) for r in runs), "max_rss_kb": int(runs[0][1])}


async def swarm_meeting(swarm_size: int, trials: int) -> dict:
    result: dict = {}
    async with trio.open_nursery() as nursery:
        t = time.perf_counter()
        one = await nursery.start(DhtNode(("127.0.0.1", 0)).run)
        result["start_one_node_s"] = time.perf_counter() - t
        t = time.perf_counter()
        swarm = await start_swarm(nursery, swarm_size)
        result["start_swarm_s"] = time.perf_counter() - t
        for node in swarm:
            await node.joined.wait()
        result["swarm_joined_s"] = time.perf_counter() - t
        meet = []
        # Trial nodes stay up to the end: a node that left stays in others' routing tables, and
        # libtorrent sends an announce only once its lookup is over, i.e. once requests to such
        # dead nodes have timed out (~15 s measured here). The public DHT has such nodes too.
        for trial in range(trials):
            key = channel_key(f"bench-{trial}-{time.time()}", b"secret")
            seen: dict[str, float] = {}
            t = time.perf_counter()
            ports = {"a": 45001 + 2 * trial, "b": 45002 + 2 * trial}
            for name, via in (("a", swarm[trial % swarm_size]), ("b", swarm[(trial + swarm_size // 2) % swarm_size])):
                dht = await nursery.start(DhtNode(("127.0.0.1", 0), (f"127.0.0.1:{via.port}",)).run)
                other = ports["b" if name == "a" else "a"]

                def dial(host, port, name=name, other=other, seen=seen, t=t):
                    if port == other and name not in seen:
                        seen[name] = time.perf_counter() - t

                await nursery.start(DhtDiscovery(dht, {"x": key}, ports[name], dial).run)
            with trio.fail_after(60):
                while len(seen) < 2:
                    await trio.sleep(0.01)
            meet.append(max(seen.values()))
        result["meet_s"] = meet
        result["meet_median_s"] = statistics.median(meet)
        nursery.cancel_scope.cancel()
        del one
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--swarm", type=int, default=20)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    results = {"import": import_cost(), "swarm": args.swarm}
    results.update(trio.run(swarm_meeting, args.swarm, args.trials))
    print(f"{'measure':48} value")
    print(f"{'import libtorrent (fresh interpreter)':48} {results['import']['libtorrent_import_s'] * 1000:.0f} ms"
          f" (process RSS after: {results['import']['max_rss_kb'] / 1024:.0f} MiB)")
    print(f"{'start one DHT node':48} {results['start_one_node_s'] * 1000:.0f} ms")
    print(f"{f'start {args.swarm} DHT nodes':48} {results['start_swarm_s']:.2f} s")
    print(f"{f'... until every one has a routing-table entry':48} {results['swarm_joined_s']:.2f} s")
    print(f"{'two new nodes meet (join+announce+lookup), median':48} {results['meet_median_s']:.2f} s"
          f"  (all: {', '.join(f'{m:.2f}' for m in results['meet_s'])})")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M%S")
    for name in (f"dht-{stamp}.json", "dht-latest.json"):
        (out / name).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
