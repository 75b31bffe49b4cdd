"""Swarm benchmark: a flash crowd on one capped seeder, and a late joiner in a big channel.

    .venv/bin/python benchmarks/bench_swarm.py [--nodes 12 50] [--size-mb 16] [--rate-mb 4] [--start cli|api]

Every node is a `kacheryfs daemon` subprocess on 127.0.0.1 with its own storage and config, in
one channel. For each N: one seeder capped at R (KACHERYFS_TEST_SERVE_RATE) holds an object of
S MB; N-1 leechers run `kacheryfs load URI` at the same moment. Reported: when the last leecher is
done / (S/R) (S/R = one upload of the object; goal <= 1.5), the seeder's bytes served / S (from its
counters), then a late joiner: its find+fetch time once it has a peer (goal <= 1 s at N = 50) and
its time from start (join + find + fetch). Each N runs three ways in the same run: swarming, the
no-swarming baseline (KACHERYFS_SWARM=0: nobody serves an object before holding it whole; and no peer cap), and
swarming with discovery only through a local mainline DHT (20 libtorrent nodes on 127.0.0.1, no
shared discovery directory, no bootstrap). Nodes meet through a shared discovery directory
otherwise.

The whole machine (2 cores) runs every node: at N = 50 the crowd is CPU-bound, so read the rows
of one run against each other. To tell CPU saturation from protocol waste each run records: the
machine's CPU busy share during the crowd and the CPU seconds of the load commands, the leecher
daemons and the seeder; every byte served over the bytes needed; and an anatomy (over one upload)
of the seeder's time (busy, idle before its last upload, tail after it; copies of each chunk) and
of the leechers' downloads (command start-up, find, manifest, first chunk, chunks, install, idle;
from each daemon's `status` download summaries). `--start api` starts the crowd as local API calls
from this process instead of N-1 `kacheryfs load` processes: what the crowd costs when each
node's command runs on its own machine.

`--profile DIR`: py-spy records three leecher daemons and the seeder during the crowd (raw
collapsed stacks, threads on a CPU only, 100 Hz; adds CPU load: timings of such a run are not
comparable); summarize with `benchmarks/flame_summary.py DIR/*.txt --rate 100`.

Prints a table; saves benchmarks/results/swarm-<date>.json and swarm-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KACHERYFS = str(Path(sys.executable).parent / "kacheryfs")
MB = 1_000_000
CHANNEL = "bench"
KEEP = False  # --keep: leave the nodes' directories (logs) behind
PROFILE: Path | None = None  # --profile DIR: py-spy records of some daemons during the crowd


class Daemon:
    def __init__(self, root: Path, name: str, discovery: Path, env: dict | None = None, args: tuple = ()):
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.config = self.dir / "config"
        self.log = self.dir / "node.log"
        self.args = list(args)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KACHERYFS_")}
        self.env.update(KACHERY_STORAGE_DIR=str(self.dir / "storage"), KACHERY_P2P_CONFIG_DIR=str(self.config),
                        KACHERYFS_DISCOVERY_DIR=str(discovery), KACHERYFS_LAN_DISCOVERY="0", **(env or {}))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([KACHERYFS, "daemon", "--channel", CHANNEL, "--listen", "127.0.0.1:0",
                                          *self.args], env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while "listening on" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon {self.dir.name} did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        from kacheryfs.errors import NoDaemon

        while True:  # the socket file appears before the API server answers on it
            try:
                self.status()
                return
            except NoDaemon:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def status(self) -> dict:
        from kacheryfs.api.client import call

        return call(self.config, "status")["status"]

    def load(self, uri: str) -> subprocess.Popen:
        return subprocess.Popen([KACHERYFS, "load", uri], env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def cpu_seconds(self) -> float:
        """User + system CPU time this daemon has used so far (/proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (the `kacheryfs load` commands)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def busy_fraction(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Share of the machine's CPU time (all cores) spent busy between two cpu_times()."""
    return (after[0] - before[0]) / max(1e-9, after[1] - before[1])


def wait_all(procs: list[subprocess.Popen], t0: float, timeout: float) -> list[float]:
    done: dict[int, float] = {}
    while len(done) < len(procs):
        for i, p in enumerate(procs):
            if i not in done and p.poll() is not None:
                if p.returncode != 0:
                    raise RuntimeError(f"load failed: {p.stderr.read().decode()[-1000:]}")
                done[i] = time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"only {len(done)} of {len(procs)} loads done after {timeout}s")
        time.sleep(0.01)
    return sorted(done.values())


def api_loads(daemons: list[Daemon], uri: str, t0: float, timeout: float) -> list[float]:
    """Each daemon asked to load ``uri`` through its local API at once, from threads of this process
    (no `kacheryfs load` process per node): what the crowd costs when each node's command runs on its
    own machine, as in a real cluster. Returns the sorted completion times after t0."""
    from concurrent.futures import ThreadPoolExecutor

    from kacheryfs.api.client import daemon_load

    def one(d: Daemon) -> float:
        daemon_load(d.config, uri)
        return time.monotonic() - t0

    with ThreadPoolExecutor(len(daemons)) as pool:
        futures = [pool.submit(one, d) for d in daemons]
        return sorted(f.result(timeout=timeout) for f in futures)


def scenario(root: Path, n: int, src: Path, size: int, rate: float, *, swarming: bool,
             dht_ports: list[int] | None, start: str = "cli") -> dict:
    work = Path(tempfile.mkdtemp(dir=root))
    shared = work / "discovery"
    daemons: list[Daemon] = []

    def make(name: str, env: dict | None = None) -> Daemon:
        # the baseline is the node as it was before swarming: no partial serving, no peer cap
        env = dict(env or {}, **({} if swarming else {"KACHERYFS_SWARM": "0", "KACHERYFS_MAX_PEERS": "100"}))
        args: tuple = ()
        discovery = shared
        if dht_ports is not None:  # the DHT only: every node gets a discovery directory of its own
            discovery = work / f"alone-{name}"
            args = ("--dht-listen", "127.0.0.1:0", "--dht-bootstrap", f"127.0.0.1:{dht_ports[len(daemons) % len(dht_ports)]}")
        d = Daemon(work, name, discovery, env, args)
        daemons.append(d)
        return d

    out: dict = {"nodes": n, "swarming": swarming, "dht": dht_ports is not None, "start": start}
    try:
        seeder = make("seeder", {"KACHERYFS_TEST_SERVE_RATE": str(int(rate))})
        uri = subprocess.run([KACHERYFS, "store", str(src)], env=seeder.env, check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
        leechers = [make(f"l{i}") for i in range(n - 1)]
        t = time.monotonic()
        for d in daemons:
            d.start()
        for d in daemons:
            d.wait_ready()
        want = min(4, n - 1)
        while any(len(d.status()["peers"]) < want for d in daemons):
            if time.monotonic() - t > 300:
                raise RuntimeError("the channel did not form")
            time.sleep(0.2)
        out["start_and_join_s"] = time.monotonic() - t
        # the channel was up before the crowd: let start-up work (dialing, handshakes) settle,
        # then record what the idle nodes cost the machine
        for _ in range(30):
            before = cpu_times()
            time.sleep(1.0)
            out["idle_cpu_busy"] = busy_fraction(before, cpu_times())
            if out["idle_cpu_busy"] < 0.25:
                break
        out["load_average_before"] = os.getloadavg()[0]
        spies = start_profiles(daemons[:1] + leechers[:3], f"n{n}-{'swarm' if swarming else 'base'}-{start}")
        cpu0, clis0, daemons0 = cpu_times(), children_cpu(), [d.cpu_seconds() for d in daemons]
        t = time.monotonic()
        if start == "cli":
            times = wait_all([d.load(uri) for d in leechers], t, 900)
        else:
            times = api_loads(leechers, uri, t, 900)
        stop_profiles(spies)
        one_upload = size / rate
        out["crowd_s"] = times[-1]
        cpu1 = cpu_times()
        out["crowd_cpu_busy"] = busy_fraction(cpu0, cpu1)  # 1.0: both cores busy all along
        # where the machine's CPU went during the crowd (s): the load commands, the daemons (the
        # seeder apart), the rest of the machine (the benchmark itself, other users)
        daemon_cpu = [d.cpu_seconds() - c for d, c in zip(daemons, daemons0)]
        out["crowd_cpu_s"] = {"machine": (cpu1[0] - cpu0[0]) / os.sysconf("SC_CLK_TCK"),
                              "load_commands": children_cpu() - clis0, "seeder": daemon_cpu[0],
                              "leecher_daemons": sum(daemon_cpu[1:])}
        out["crowd_over_one_upload"] = times[-1] / one_upload
        out["median_leecher_over_one_upload"] = times[len(times) // 2] / one_upload
        seeder_status = seeder.status()
        out["seeder_served_over_size"] = sum(seeder_status["served_bytes"].values()) / size
        statuses = [d.status() for d in leechers]
        out["max_sessions_per_node"] = max(len(st["peers"]) for st in [seeder_status, *statuses])
        out["load_average_after"] = os.getloadavg()[0]
        # every byte any node sent, over what the leechers needed: above 1 is waste (endgame
        # duplicates, moved requests whose reply was already under way)
        served_all = sum(sum(st["served_bytes"].values()) for st in [seeder_status, *statuses])
        out["all_served_over_needed"] = served_all / ((n - 1) * size)
        out["all_fetched_over_needed"] = sum(st["fetched_bytes"] for st in statuses) / ((n - 1) * size)
        out["anatomy"] = anatomy(t, t + times[-1], size, rate, seeder_status, statuses)
        late = make("late")
        t = time.monotonic()
        late.start()
        late.wait_ready()
        while not late.status()["peers"]:
            if time.monotonic() - t > 120:
                raise RuntimeError("the late joiner met nobody")
            time.sleep(0.01)
        out["late_join_s"] = time.monotonic() - t
        cpu0 = cpu_times()
        t2 = time.monotonic()
        wait_all([late.load(uri)], t2, 300)
        out["late_cpu_busy"] = busy_fraction(cpu0, cpu_times())
        out["late_find_fetch_s"] = time.monotonic() - t2
        out["late_total_s"] = time.monotonic() - t
        late_status = late.status()
        summary = late_status["downloads"][-1] if late_status["downloads"] else None
        out["late_providers"] = summary["providers"] if summary else None
        if summary:  # the late joiner's find+fetch in parts (s): CLI start, find, manifest, chunks, install
            tl = summary["timeline"]
            out["late_parts"] = {"cli_start": tl["asked"] - t2, "find": tl["found"] - tl["asked"],
                                 "manifest": tl["manifest"] - tl["found"], "first_chunk": tl["first_chunk"] - tl["manifest"],
                                 "rest": tl["complete"] - tl["first_chunk"], "install": tl["installed"] - tl["complete"],
                                 "cli_exit": t2 + out["late_find_fetch_s"] - tl["installed"],
                                 "sessions_at_start": len(late_status["peers"])}
    finally:
        for d in daemons:
            d.stop()
        if not KEEP:
            shutil.rmtree(work, ignore_errors=True)
    return out


def start_profiles(daemons: list[Daemon], label: str) -> list[subprocess.Popen]:
    if PROFILE is None:
        return []
    PROFILE.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    procs = [subprocess.Popen([spy, "record", "--pid", str(d.proc.pid), "--format", "raw", "--threads",
                               "--nonblocking", "-r", "100", "-o", str(PROFILE / f"{label}-{d.dir.name}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for d in daemons]
    time.sleep(1.0)
    return procs


def stop_profiles(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    return values[len(values) // 2] if values else None


def anatomy(t0: float, t_end: float, size: int, rate: float, seeder: dict, leechers: list[dict]) -> dict:
    """Where the flash crowd's time and the seeder's bytes went, from the nodes' counters (monotonic
    times, comparable across the processes): completion / one upload = seeder busy + seeder idle
    before its last upload + tail after it (all over one upload)."""
    one_upload = size / rate
    capped = [u for u in seeder.get("uploads", {}).get("capped", []) if u[1] >= t0]
    busy = sum(u[2] - u[1] for u in capped)
    last_end = max((u[2] for u in capped), default=t0)
    copies: dict[int, int] = {}
    small = [u for u in capped if u[7] < u[6]]  # charged more than sent: a manifest, a refused request
    for u in capped:
        if u[7] >= u[6]:
            copies[u[5]] = copies.get(u[5], 0) + 1
    chunks = max(1, -(-size // (1 << 20)))
    out = {
        "seeder_busy": busy / one_upload,
        "seeder_idle_before_last": (last_end - t0 - busy) / one_upload,
        "tail_after_seeder": (t_end - last_end) / one_upload,
        "seeder_requests": len(capped),
        "seeder_small_requests": len(small),
        "seeder_small_requests_busy": sum(u[2] - u[1] for u in small) / one_upload,
        "seeder_chunk_copies_max": max(copies.values(), default=0),
        "seeder_chunks_served_once_before_any_twice": _once_before_twice(capped, chunks),
        "seeder_wait_median_s": _median([u[1] - u[0] for u in capped]),
    }
    parts: dict[str, list[float]] = {}
    for st in leechers:
        for summary in st["downloads"][-1:]:
            tl = summary["timeline"]
            for name, a, b in (("cli_start", None, "asked"), ("find", "asked", "found"), ("manifest", "found", "manifest"),
                               ("first_chunk", "manifest", "first_chunk"), ("chunks", "first_chunk", "complete"),
                               ("install", "complete", "installed")):
                if b in tl and (a is None or a in tl):
                    parts.setdefault(name, []).append(tl[b] - (t0 if a is None else tl[a]))
            parts.setdefault("idle", []).append(summary["idle_s"])
            parts.setdefault("moves", []).append(summary["moves"])
            parts.setdefault("duplicates", []).append(summary["duplicates"])
            parts.setdefault("failed_requests", []).append(sum(summary["failures"].values()))
            parts.setdefault("providers", []).append(summary["providers"])
            parts.setdefault("replaced", []).append(summary.get("replaced", 0))
            parts.setdefault("late_replies", []).append(summary.get("late_replies", 0))
    out["leecher_median"] = {k: _median(v) for k, v in parts.items()}
    out["leecher_max"] = {k: max(v) for k, v in parts.items()}
    return out


def _once_before_twice(capped: list, chunks: int) -> bool:
    """Did the seeder upload every chunk once before it uploaded any chunk a second time?"""
    seen: set[int] = set()
    for u in sorted(capped, key=lambda u: u[1]):
        if u[7] < u[6]:
            continue
        if u[5] in seen and len(seen) < chunks:
            return False
        seen.add(u[5])
    return True


def dht_swarm_process(count: int) -> tuple[subprocess.Popen, list[int]]:
    """A helper process running `count` DHT nodes on 127.0.0.1; prints their ports."""
    code = ("import sys, json, trio\n"
            "from kacheryfs.net.dht import start_swarm\n"
            "async def main():\n"
            "    async with trio.open_nursery() as n:\n"
            f"        swarm = await start_swarm(n, {count})\n"
            "        for d in swarm:\n"
            "            await d.joined.wait()\n"
            "        print(json.dumps([d.port for d in swarm]), flush=True)\n"
            "        await trio.sleep_forever()\n"
            "trio.run(main)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    return proc, json.loads(proc.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, nargs="+", default=[12, 50])
    parser.add_argument("--size-mb", type=float, default=16)
    parser.add_argument("--rate-mb", type=float, default=4)
    parser.add_argument("--no-dht", action="store_true")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' directories and logs")
    parser.add_argument("--profile", default=None, metavar="DIR", help="py-spy record some daemons during the crowd")
    parser.add_argument("--variants", default="swarm,baseline,dht", help="which of swarm,baseline,dht to run")
    parser.add_argument("--start", choices=["cli", "api"], default="cli",
                        help="the crowd starts as `kacheryfs load` processes (cli) or as local API calls "
                             "from this process (api: no process start-up per node)")
    args = parser.parse_args()
    global KEEP, PROFILE
    KEEP = args.keep
    PROFILE = None if args.profile is None else Path(args.profile)
    size, rate = int(args.size_mb * MB), args.rate_mb * MB
    root = Path(tempfile.mkdtemp(prefix="kacheryfs-bench-swarm-"))
    results = {"size_mb": args.size_mb, "rate_mb_s": args.rate_mb, "one_upload_s": size / rate, "runs": []}
    dht_proc = None
    try:
        src = root / "object.bin"
        src.write_bytes(os.urandom(size))
        dht_ports = None
        if not args.no_dht:
            dht_proc, dht_ports = dht_swarm_process(20)
        for n in args.nodes:
            chosen = args.variants.split(",")
            variants = [(True, None)] if "swarm" in chosen else []
            variants += [] if args.no_baseline or "baseline" not in chosen else [(False, None)]
            variants += [] if args.no_dht or "dht" not in chosen else [(True, dht_ports)]
            for swarming, ports in variants:
                print(f"N={n} swarming={'on' if swarming else 'off'} discovery={'dht' if ports else 'dir'} ...",
                      flush=True)
                r = scenario(root, n, src, size, rate, swarming=swarming, dht_ports=ports, start=args.start)
                print("   ", {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
                results["runs"].append(r)
    finally:
        if dht_proc is not None:
            dht_proc.terminate()
            dht_proc.wait()
        if KEEP:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nobject {args.size_mb:g} MB, seeder capped at {args.rate_mb:g} MB/s: one upload = "
          f"{results['one_upload_s']:.2f} s\n")
    print("| N | start | swarming | discovery | last leecher done / one upload | median | seeder served / S | "
          "late joiner find+fetch | late joiner from start | max sessions per node | CPU busy during the crowd "
          "(load avg after) | CPU s: load commands / leecher daemons / seeder |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        cpu = r["crowd_cpu_s"]
        print(f"| {r['nodes']} | {r['start']} | {'on' if r['swarming'] else 'off (baseline)'} "
              f"| {'DHT' if r['dht'] else 'shared dir'} "
              f"| {r['crowd_over_one_upload']:.2f} | {r['median_leecher_over_one_upload']:.2f} "
              f"| {r['seeder_served_over_size']:.2f} | {r['late_find_fetch_s']:.2f} s | {r['late_total_s']:.2f} s "
              f"| {r['max_sessions_per_node']} | {r['crowd_cpu_busy']:.2f} ({r['load_average_after']:.1f}) "
              f"| {cpu['load_commands']:.1f} / {cpu['leecher_daemons']:.1f} / {cpu['seeder']:.1f} |")
    print("\nAnatomy (over one upload; medians of the leechers' download parts in s):\n")
    print("| N | swarming | discovery | seeder busy | seeder idle before its last upload | tail after it | "
          "seeder requests (small) | most copies of a chunk | once before twice | CLI start | find | manifest | "
          "first chunk | chunks | install | idle |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        a, m = r["anatomy"], r["anatomy"]["leecher_median"]

        def f(x):
            return "-" if x is None else f"{x:.2f}"

        print(f"| {r['nodes']} | {'on' if r['swarming'] else 'off'} | {'DHT' if r['dht'] else 'dir'} "
              f"| {a['seeder_busy']:.2f} | {a['seeder_idle_before_last']:.2f} | {a['tail_after_seeder']:.2f} "
              f"| {a['seeder_requests']} ({a['seeder_small_requests']}) | {a['seeder_chunk_copies_max']} "
              f"| {'yes' if a['seeder_chunks_served_once_before_any_twice'] else 'no'} "
              + " ".join(f"| {f(m.get(k))}" for k in ("cli_start", "find", "manifest", "first_chunk", "chunks",
                                                      "install", "idle")) + " |")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M%S")
    for name in (f"swarm-{stamp}.json", "swarm-latest.json"):
        (out / name).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
