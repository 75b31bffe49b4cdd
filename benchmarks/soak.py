#!/usr/bin/env python3
"""Soak: 3 mounted nodes on 127.0.0.1 under a mixed load with random restarts, for --minutes.

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--workers 4] [--restart-every 60]

Each node is ``kacheryfs mount`` in a subprocess (channel "soak", same-machine discovery in a
private directory). Workers loop over a mix of operations on the nodes that are up:
  - store:    write a random file (64 KiB - 8 MiB) into a node's store/;
  - lazy:     read a random 1 MiB range of a file stored on another node through this node's sha1/;
  - load:     `kacheryfs load URI --dest` of a file stored elsewhere (the CLI, through the daemon);
  - append:   append a message to node 0's feed (followed by nodes 1 and 2).
Every byte read is compared with the bytes that were stored (regenerated from the file's seed).
A restarter picks a node every --restart-every seconds (on average) and restarts it: SIGTERM
(graceful) or SIGKILL (crash), alternately. Failures of an operation that involves a node that went down
during it or came back less than --grace seconds before it are *expected*; any other failure, and any wrong
byte ever, is *unexpected* (the run fails). Every 2 s the RSS and open fds of each daemon are sampled.

At the end: each node's store is scrubbed (`kacheryfs verify`), the feed replicas are checked to be
valid prefixes of the owner's log. Prints a Markdown table, writes benchmarks/results/soak-<date>.json
and soak-latest.json, and, if matplotlib is installed (`pip install -e '.[bench]'`), a plot of RSS
and fds over time to benchmarks/results/soak-latest.png. Runs as root (FUSE); everything lives in
one temp dir, unmounted and deleted at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
KACHERYFS = str(Path(sys.executable).parent / "kacheryfs")
MiB = 1 << 20


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def file_bytes(seed: int, size: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def fuse_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def proc_sample(pid: int) -> tuple[int, int] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None


class Node:
    def __init__(self, index: int, root: Path, discovery: Path):
        self.index = index
        self.root = root
        self.mnt = root / "mnt"
        self.env = dict(os.environ, KACHERY_STORAGE_DIR=str(root / "storage"),
                        KACHERY_P2P_CONFIG_DIR=str(root / "config"), KACHERYFS_DISCOVERY_DIR=str(discovery),
                        KACHERYFS_LAN_DISCOVERY="0")
        self.proc: subprocess.Popen | None = None
        self.up = False
        self.restarts: list[float] = []  # monotonic times a restart began
        self.up_since = 0.0  # monotonic time it last came up
        self.lock = threading.Lock()

    def start(self) -> None:
        root = self.root
        root.mkdir(parents=True, exist_ok=True)
        logf = open(root / "mount.log", "ab")
        self.proc = subprocess.Popen([KACHERYFS, "-v", "mount", str(self.mnt), "--channel", "soak",
                                      "--listen", "127.0.0.1:0"], env=self.env, stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        registration = root / "config" / "mounts" / f"{self.proc.pid}.json"
        deadline = time.monotonic() + 60
        while not (registration.exists() and fuse_mounted(self.mnt)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {self.index} did not mount:\n{(root / 'mount.log').read_text()[-3000:]}")
            time.sleep(0.05)
        self.up = True
        self.up_since = time.monotonic()

    def stop(self, crash: bool = False) -> None:
        self.up = False
        self.restarts.append(time.monotonic())
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        if crash:
            helpers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == proc.pid]
            os.killpg(proc.pid, signal.SIGKILL)
            for pid in helpers:  # the auto_unmount helper: leaves a stale mount for the restart
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        else:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def shutdown(self) -> None:
        try:
            self.stop()
        finally:
            if fuse_mounted(self.mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)

    def restarted_since(self, t: float, grace: float) -> bool:
        """Went down after ``t``, or came back up less than ``grace`` seconds before it."""
        return any(r >= t for r in self.restarts) or (bool(self.restarts) and self.up_since > t - grace)


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


class Soak:
    def __init__(self, args, tmp: Path):
        self.args = args
        self.tmp = tmp
        discovery = tmp / "discovery"
        discovery.mkdir()
        self.nodes = [Node(i, tmp / f"n{i}", discovery) for i in range(3)]
        self.catalogue: list[dict] = []  # stored files: sha1, size, seed, uri, holder
        self.cat_lock = threading.Lock()
        self.ops = Counter()
        self.expected_errors = Counter()
        self.unexpected: list[str] = []
        self.bytes_verified = 0
        self.samples: list[dict] = []
        self.restart_log: list[dict] = []
        self.feed_id: str | None = None
        self.appended = 0
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.seeds = iter(range(10_000, 10_000_000))

    # ---- bookkeeping ---------------------------------------------------------------------------
    def expected(self, nodes: list[Node], t0: float) -> bool:
        """Was a failure at these nodes excusable: one of them went down during the operation, came
        back up less than --grace seconds before it, or is down now?"""
        return any(n.restarted_since(t0, self.args.grace) or not n.up for n in nodes)

    def outcome(self, kind: str, nodes: list[Node], t0: float, error: str | None, wrong: bool = False) -> None:
        with self.lock:
            if wrong:
                self.unexpected.append(f"{kind}: WRONG BYTES: {error}")
                log(f"UNEXPECTED {kind}: wrong bytes: {error}")
            elif error is None:
                self.ops[kind] += 1
            elif self.expected(nodes, t0):
                self.expected_errors[kind] += 1
            else:
                self.unexpected.append(f"{kind} at nodes {[n.index for n in nodes]}: {error}")
                log(f"UNEXPECTED {kind} at nodes {[n.index for n in nodes]} (started {t0 - self.started:.1f} s "
                    f"into the run): {error}")

    def up_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.up]

    # ---- operations ------------------------------------------------------------------------------
    def op_store(self, rng: random.Random) -> None:
        node = rng.choice(self.up_nodes())
        seed, size = next(self.seeds), rng.randrange(64 << 10, 8 * MiB)
        data = file_bytes(seed, size)
        t0 = time.monotonic()
        name = f"f{seed}.bin"
        try:
            (node.mnt / "store" / name).write_bytes(data)
            uri = os.getxattr(node.mnt / "store" / name, "user.kachery.uri").decode()
        except OSError as exc:
            self.outcome("store", [node], t0, repr(exc))
            return
        sha1 = hashlib.sha1(data).hexdigest()
        if uri[7:47] != sha1:
            self.outcome("store", [node], t0, f"{name}: URI {uri} for {sha1}", wrong=True)
            return
        with self.cat_lock:
            self.catalogue.append({"sha1": sha1, "size": size, "seed": seed, "uri": uri, "holder": node.index})
        self.outcome("store", [node], t0, None)

    def pick_remote(self, rng: random.Random) -> tuple[dict, Node, Node] | None:
        with self.cat_lock:
            if not self.catalogue:
                return None
            item = rng.choice(self.catalogue)
        holder = self.nodes[item["holder"]]
        readers = [n for n in self.up_nodes() if n is not holder]
        if not readers:
            return None
        return item, holder, rng.choice(readers)

    def op_lazy(self, rng: random.Random) -> None:
        picked = self.pick_remote(rng)
        if picked is None:
            return
        item, holder, reader = picked
        offset = rng.randrange(0, max(1, item["size"] - MiB))
        t0 = time.monotonic()
        try:
            with open(reader.mnt / "sha1" / item["sha1"], "rb") as f:
                f.seek(offset)
                got = f.read(MiB)
        except OSError as exc:
            self.outcome("lazy", [holder, reader], t0, repr(exc))
            return
        want = file_bytes(item["seed"], item["size"])[offset:offset + MiB]
        if got != want:
            self.outcome("lazy", [holder, reader], t0, f"{item['sha1']}@{offset}", wrong=True)
            return
        with self.lock:
            self.bytes_verified += len(got)
        self.outcome("lazy", [holder, reader], t0, None)

    def op_load(self, rng: random.Random) -> None:
        picked = self.pick_remote(rng)
        if picked is None:
            return
        item, holder, reader = picked
        dest = self.tmp / f"load-{threading.get_ident()}.bin"
        t0 = time.monotonic()
        out = subprocess.run([KACHERYFS, "load", item["uri"], "--dest", str(dest)], env=reader.env,
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            self.outcome("load", [holder, reader], t0, out.stderr.strip()[-300:])
            return
        data = dest.read_bytes()
        dest.unlink()
        if hashlib.sha1(data).hexdigest() != item["sha1"]:
            self.outcome("load", [holder, reader], t0, item["sha1"], wrong=True)
            return
        with self.lock:
            self.bytes_verified += len(data)
        self.outcome("load", [holder, reader], t0, None)

    def op_append(self, rng: random.Random) -> None:
        owner = self.nodes[0]
        if not owner.up or self.feed_id is None:
            return
        from kacheryfs.api.client import call

        t0 = time.monotonic()
        try:
            call(Path(owner.env["KACHERY_P2P_CONFIG_DIR"]), "feed_append", feed=self.feed_id, subfeed="log",
                 messages=[{"t": round(time.time(), 3), "n": self.appended}])
        except Exception as exc:  # KacheryError, or the daemon going away under us
            self.outcome("append", [owner], t0, repr(exc))
            return
        with self.lock:
            self.appended += 1
        self.outcome("append", [owner], t0, None)

    # ---- loops -----------------------------------------------------------------------------------
    def worker(self, i: int) -> None:
        rng = random.Random(1000 + i)
        kinds = [self.op_store] * 2 + [self.op_lazy] * 4 + [self.op_load] * 1 + [self.op_append] * 3
        while not self.stop_event.is_set():
            if not self.up_nodes():
                time.sleep(0.2)
                continue
            try:
                rng.choice(kinds)(rng)
            except Exception as exc:  # a bug in the soak itself: record it, keep going
                with self.lock:
                    self.unexpected.append(f"worker {i}: {exc!r}")
                log(f"worker {i} crashed an operation: {exc!r}")
            time.sleep(self.args.pause)

    def restarter(self) -> None:
        rng = random.Random(7)
        crash = False
        while not self.stop_event.wait(rng.uniform(0.5, 1.5) * self.args.restart_every):
            node = rng.choice(self.nodes)
            crash = not crash
            log(f"restarting node {node.index} ({'SIGKILL' if crash else 'SIGTERM'})")
            t = time.monotonic() - self.started
            with node.lock:
                node.stop(crash=crash)
                time.sleep(rng.uniform(1, 5))  # offline for a while
                try:
                    node.start()
                except RuntimeError as exc:
                    self.unexpected.append(f"restart of node {node.index}: {exc}")
                    log(str(exc))
                    return
            self.restart_log.append({"t": round(t, 1), "node": node.index, "crash": crash})

    def sampler(self) -> None:
        while not self.stop_event.wait(2.0):
            row = {"t": round(time.monotonic() - self.started, 1)}
            for node in self.nodes:
                sample = proc_sample(node.proc.pid) if node.up and node.proc else None
                if sample is not None:
                    row[f"rss{node.index}"], row[f"fds{node.index}"] = sample
            self.samples.append(row)

    # ---- the run ---------------------------------------------------------------------------------
    def setup_feed(self) -> None:
        owner = self.nodes[0]
        out = subprocess.run([KACHERYFS, "feed", "create", "--label", "soak"], env=owner.env,
                             capture_output=True, text=True, check=True)
        self.feed_id = out.stdout.strip()
        subprocess.run([KACHERYFS, "feed", "append", self.feed_id, "log", '"start"'], env=owner.env,
                       capture_output=True, check=True)
        for node in self.nodes[1:]:  # discover it, then follow it (across restarts too)
            deadline = time.monotonic() + 30
            while True:
                got = subprocess.run([KACHERYFS, "feed", "read", self.feed_id, "log"], env=node.env,
                                     capture_output=True, text=True)
                if got.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)

    def run(self) -> dict:
        for node in self.nodes:
            node.start()
        time.sleep(3)  # the nodes meet through the discovery directory
        self.setup_feed()
        self.started = time.monotonic()
        threads = [threading.Thread(target=self.worker, args=(i,), daemon=True) for i in range(self.args.workers)]
        threads += [threading.Thread(target=self.restarter, daemon=True),
                    threading.Thread(target=self.sampler, daemon=True)]
        for t in threads:
            t.start()
        end = self.started + self.args.minutes * 60
        while time.monotonic() < end:
            time.sleep(min(30, max(0.1, end - time.monotonic())))
            log(f"{(time.monotonic() - self.started) / 60:.1f} min: ops {dict(self.ops)}, "
                f"expected errors {dict(self.expected_errors)}, unexpected {len(self.unexpected)}")
        self.stop_event.set()
        for t in threads:
            t.join(timeout=120)
        for node in self.nodes:  # every node up for the final checks
            with node.lock:
                if not node.up:
                    node.start()
        return self.final_checks()

    def final_checks(self) -> dict:
        from kacheryfs.feeds import FeedStore, encode_entry, verify_chain

        checks = {}
        for node in self.nodes:
            out = subprocess.run([KACHERYFS, "verify"], env=node.env, capture_output=True, text=True, timeout=600)
            checks[f"verify n{node.index}"] = out.stdout.splitlines()[0] if out.returncode == 0 else out.stdout + out.stderr
            if out.returncode != 0:
                self.unexpected.append(f"verify of node {node.index}: {out.stdout} {out.stderr}")
        time.sleep(5)  # replicas catch up with the last appends

        def entries(node):
            store = FeedStore(node.root / "storage" / "feeds.sqlite3", self.tmp / "probe-keys")
            try:
                return store.get_entries(self.feed_id, "log")
            finally:
                store.close()

        owner = entries(self.nodes[0])
        verify_chain(owner)
        checks["feed entries at the owner"] = len(owner)
        for node in self.nodes[1:]:
            replica = entries(node)
            try:
                verify_chain(replica)
                ok = [encode_entry(e) for e in replica] == [encode_entry(e) for e in owner[:len(replica)]]
            except Exception as exc:
                ok = False
                self.unexpected.append(f"feed replica at node {node.index}: {exc!r}")
            if not ok:
                self.unexpected.append(f"feed replica at node {node.index} is not a prefix of the owner's log")
            checks[f"feed replica n{node.index}"] = f"{len(replica)} entries, valid prefix: {ok}"
        return checks

    def shutdown(self) -> None:
        self.stop_event.set()
        for node in self.nodes:
            try:
                node.shutdown()
            except Exception as exc:
                log(f"stopping node {node.index}: {exc!r}")


def summarize(soak: Soak, checks: dict, args) -> dict:
    per_node = {}
    for node in soak.nodes:
        rss = [s[f"rss{node.index}"] for s in soak.samples if f"rss{node.index}" in s]
        fds = [s[f"fds{node.index}"] for s in soak.samples if f"fds{node.index}" in s]
        if rss:
            per_node[f"n{node.index}"] = {
                "rss_first_mb": round(rss[0] / 1e6, 1), "rss_max_mb": round(max(rss) / 1e6, 1),
                "rss_last_mb": round(rss[-1] / 1e6, 1), "fds_first": fds[0], "fds_max": max(fds),
                "fds_last": fds[-1], "restarts": sum(1 for r in soak.restart_log if r["node"] == node.index)}
    return {
        "when": dt.datetime.now().isoformat(timespec="seconds"),
        "minutes": args.minutes, "workers": args.workers, "restart_every_s": args.restart_every,
        "ops": dict(soak.ops), "expected_errors": dict(soak.expected_errors),
        "unexpected_errors": soak.unexpected, "bytes_verified": soak.bytes_verified,
        "feed_appends": soak.appended, "restarts": soak.restart_log, "nodes": per_node,
        "checks": checks, "samples": soak.samples,
        "load": os.getloadavg(),
        "git": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip(),
    }


def table(result: dict) -> str:
    ops = result["ops"]
    lines = ["| what | value |", "|---|---|",
             f"| duration | {result['minutes']} min, {result['workers']} workers, a restart every "
             f"~{result['restart_every_s']} s ({len(result['restarts'])} restarts, SIGTERM and SIGKILL alternately) |",
             f"| operations done | {sum(ops.values())} ({', '.join(f'{k} {v}' for k, v in sorted(ops.items()))}) |",
             f"| expected errors (a node involved was restarting) | {sum(result['expected_errors'].values())} "
             f"({', '.join(f'{k} {v}' for k, v in sorted(result['expected_errors'].items()))}) |",
             f"| unexpected errors | {len(result['unexpected_errors'])} |",
             f"| bytes read back and verified | {result['bytes_verified'] / 1e6:.0f} MB |",
             f"| feed appends (owner restarts included) | {result['feed_appends']} |"]
    for name, n in result["nodes"].items():
        lines.append(f"| {name}: RSS first / max / last | {n['rss_first_mb']} / {n['rss_max_mb']} / {n['rss_last_mb']} MB "
                     f"(fds {n['fds_first']} / {n['fds_max']} / {n['fds_last']}; {n['restarts']} restarts) |")
    for what, value in result["checks"].items():
        lines.append(f"| {what} | {value} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed (pip install -e '.[bench]'): no plot")
        return False
    fig, (ax_rss, ax_fds) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for i in range(3):
        pts = [(s["t"] / 60, s[f"rss{i}"] / 1e6, s[f"fds{i}"]) for s in result["samples"] if f"rss{i}" in s]
        if pts:
            t, rss, fds = zip(*pts)
            ax_rss.plot(t, rss, ".", markersize=2, label=f"node {i}")
            ax_fds.plot(t, fds, ".", markersize=2, label=f"node {i}")
    for r in result["restarts"]:
        for ax in (ax_rss, ax_fds):
            ax.axvline(r["t"] / 60, color=f"C{r['node']}", alpha=0.25, linestyle="--" if r["crash"] else ":")
    ax_rss.set_ylabel("RSS (MB)")
    ax_fds.set_ylabel("open fds")
    ax_fds.set_xlabel("minutes (vertical lines: restarts; dashed = SIGKILL)")
    ax_rss.set_title(f"kacheryfs soak: 3 nodes, {result['minutes']} min, {sum(result['ops'].values())} operations")
    ax_rss.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run (30 is the real soak)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--restart-every", type=float, default=60.0, help="mean seconds between restarts")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds after a node is back up during which failures involving it are expected")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds each worker waits between operations")
    parser.add_argument("--tmp-dir", default="/tmp")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' logs and stores (kept anyway after unexpected errors)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("soak: run as root (FUSE mounts)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="kfs-soak-", dir=args.tmp_dir))
    soak = Soak(args, tmp)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        checks = soak.run()
        soak.shutdown()
        result = summarize(soak, checks, args)
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
        for name in (f"soak-{stamp}.json", "soak-latest.json"):
            (RESULTS / name).write_text(json.dumps(result, indent=1))
        plotted = plot(result, RESULTS / "soak-latest.png")
        print(table(result))
        if plotted:
            print(f"\nplot: {RESULTS / 'soak-latest.png'}")
        return 1 if result["unexpected_errors"] else 0
    finally:
        soak.shutdown()
        if soak.unexpected and not args.keep:
            log(f"unexpected errors: the nodes' logs and stores are kept in {tmp}")
        elif not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
