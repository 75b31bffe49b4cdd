"""B -> A across two NAT routers (tests/nat_topology.py, network namespaces made here, as root):
a file hole-punched vs relayed through the bootstrap vs a plain TCP copy through a port forward on
B's router (the same path, no kacheryfs), and the time the punch takes to upgrade a session.

    .venv/bin/python benchmarks/bench_nat.py [--size-mb 500] [--rate-mbit N]

Each transfer lands on disk (kacheryfs load --dest / the plain receiver writes and fsyncs). "MB/s"
is the whole `kacheryfs load` (find, download, copy to --dest); "download" is the node's own
figure for the download alone (its log line). Two controls for what our session costs apart from the
punch: a direct kacheryfs session B -> A over the same links with the routers only routing (no NAT,
A dials B's own address), and one over LAN 1 (C -> A, no router). Prints a table, saves benchmarks/results/nat-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.mounting import KACHERYFS, Daemon, cli_env  # noqa: E402
from tests.nat_topology import HOST_ADDR, PUBLIC_ADDR, WAN_ADDR, nat_topology  # noqa: E402

BOOT = f"{PUBLIC_ADDR}:7000"
PLAIN_PORT = 9100

SENDER = r"""
import os, socket, sys
path, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", port)); s.listen()
print("ready", flush=True)
c, _ = s.accept()
with open(path, "rb") as f:
    size = os.fstat(f.fileno()).st_size
    sent = 0
    while sent < size:
        sent += os.sendfile(c.fileno(), f.fileno(), sent, size - sent)
c.close()
"""

RECEIVER = r"""
import os, socket, sys, time
host, port, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t0 = time.perf_counter()
c = socket.create_connection((host, port))
buf = bytearray(1 << 20); n = 0
with open(dest, "wb") as f:
    while (got := c.recv_into(buf)):
        f.write(memoryview(buf)[:got]); n += got
    f.flush(); os.fsync(f.fileno())
print(n, time.perf_counter() - t0, flush=True)
"""


def status(env: dict) -> dict:
    out = subprocess.run([KACHERYFS, "status", "--json"], env=env, capture_output=True, text=True, timeout=30)
    return (json.loads(out.stdout)["daemon"] or {}) if out.returncode == 0 else {}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def path_to(env: dict, peer: str) -> str | None:
    return next((p.get("path") for p in status(env).get("peers", []) if p["node"] == peer), None)


def log_timeline(log: str, peer: str, started: float) -> dict:
    """Seconds from A's start (wall clock) to what its log says (timestamps to the millisecond):
    registered with the bootstrap, first session to B, the punched session to B."""
    import datetime
    import re

    def at(pattern: str) -> float | None:
        found = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*" + pattern, log, re.M)
        if not found:
            return None
        stamp = datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return round(stamp - started, 3)

    out = {"registered": at("registered with bootstrap"),
           "first_session": at(rf"connected <peer {peer[:12]} "),
           "punched": at(rf"connected <peer {peer[:12]} punched")}
    if out["registered"] is not None and out["punched"] is not None:
        out["registered_to_punched"] = round(out["punched"] - out["registered"], 3)
    return out


def wait(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def kacheryfs_transfer(work: Path, symmetric: tuple[str, ...], rate: float | None, src: Path, size: int,
                       server: str = "b", nat: bool = True) -> dict:
    """One B -> A `kacheryfs load` through the topology (``server="c"``: C -> A over LAN 1;
    ``nat=False``: the routers only route, so A dials B plainly over the same links: the two
    direct-session controls); returns MB/s, path, upgrade times."""
    env_b = cli_env(work / "b" / "storage", work / "b" / "config")
    uri = subprocess.run([KACHERYFS, "store", str(src)], env=env_b, check=True, capture_output=True,
                         text=True).stdout.strip()
    with nat_topology(symmetric=symmetric, rate_mbit=rate, nat=nat) as topo, contextlib.ExitStack() as stack:
        boot = Daemon(work / "boot", "bootstrap", "--listen", "0.0.0.0:7000", prefix=topo.prefix("pub"))
        stack.callback(boot.stop)
        boot.start().wait_log("listening on")
        b = Daemon(work / "b", "daemon", "--channel", "bench", "--bootstrap", BOOT, prefix=topo.prefix(server))
        stack.callback(b.stop)
        b.start()
        id_b = wait("b", lambda: status(env_b).get("node_id"))
        wait("b registered", lambda: status(env_b).get("observed"))
        a = Daemon(work / "a", "daemon", "--channel", "bench", "--bootstrap", BOOT, prefix=topo.prefix("a"))
        stack.callback(a.stop)
        started, started_wall = time.monotonic(), time.time()
        a.start()
        first_session = wait("a session to b", lambda: path_to(a.env, id_b)) and time.monotonic()
        want = "relayed" if symmetric else "hole-punched" if server == "b" and nat else "direct"
        if want == "direct":
            wait("direct", lambda: path_to(a.env, id_b) == "direct", timeout=60)
        elif symmetric:
            wait("the punch to fail", lambda: status(a.env).get("punch", {}).get("failed")
                 or status(env_b).get("punch", {}).get("failed"), timeout=60)
        else:
            wait("punched", lambda: path_to(a.env, id_b) == "hole-punched", timeout=60)
        upgraded = time.monotonic()
        # whichever of the two started the punch (the smaller node id) timed it from its request
        punches = [status(a.env).get("punch", {}), status(env_b).get("punch", {})]
        punch = next((p for p in punches if p.get("attempted")), punches[0])
        relay_before = status(boot.env)["relay"]["bytes"]
        dest = work / "a-out.bin"
        daemons = {"a": a, "b (server)": b, "bootstrap": boot}
        cpu0 = {k: cpu_seconds(d.proc.pid) for k, d in daemons.items()}
        t0 = time.perf_counter()
        subprocess.run([KACHERYFS, "load", uri, "--dest", str(dest)], env=a.env, check=True, capture_output=True,
                       timeout=1800)
        seconds = time.perf_counter() - t0
        # CPU each daemon used per second of the transfer (2 cores here: 1.0 is one core busy)
        cpu = {k: round((cpu_seconds(d.proc.pid) - cpu0[k]) / seconds, 2) for k, d in daemons.items()}
        final_path = path_to(a.env, id_b)
        import re

        fetched = re.findall(r"fetched \w+: \d+ bytes in ([0-9.]+)s", a.read_log())
        relayed = status(boot.env)["relay"]["bytes"] - relay_before
        timeline = log_timeline(a.read_log(), id_b, started_wall)
        dest.unlink()
    return {"path": final_path, "expected_path": want, "seconds": seconds, "MBps": size / seconds / 1e6,
            "download_MBps": size / float(fetched[-1]) / 1e6 if fetched else None,
            "relay_bytes": relayed, "cpu_cores": cpu, "seconds_to_first_session": round(first_session - started, 3),
            "seconds_to_upgrade_from_start": round(upgraded - started, 3),
            "punch_seconds": punch.get("last_seconds"), "punch": punch, "timeline": timeline}


def plain_transfer(work: Path, rate: float | None, src: Path, size: int) -> dict:
    """A plain TCP copy B -> A through a port forward on B's router: the same routers and links."""
    with nat_topology(rate_mbit=rate) as topo:
        topo.forward_port("r2", PLAIN_PORT, "b", PLAIN_PORT)
        sender = topo.popen("b", [sys.executable, "-c", SENDER, str(src), str(PLAIN_PORT)],
                            stdout=subprocess.PIPE, text=True)
        assert sender.stdout.readline().strip() == "ready"
        dest = work / "plain-out.bin"
        out = topo.run("a", sys.executable, "-c", RECEIVER, WAN_ADDR["r2"], str(PLAIN_PORT), str(dest))
        n, seconds = out.stdout.split()
        assert int(n) == size, (n, size)
        dest.unlink()
        sender.wait(30)
    return {"path": "plain TCP via port forward", "seconds": float(seconds), "MBps": size / float(seconds) / 1e6}


def upgrade_only(work: Path, repeats: int) -> int:
    """Time from A's start to a punched session to B, ``repeats`` times (a fresh topology each)."""
    import statistics

    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    src = work / "data.bin"
    src.write_bytes(os.urandom(1_000_000))
    runs = []
    load = os.getloadavg()
    for n in range(repeats):
        sub = work / f"run{n}"
        sub.mkdir()
        r = kacheryfs_transfer(sub, (), None, src, 1_000_000)
        runs.append({"timeline": r["timeline"], "punch_seconds": r["punch_seconds"]})
        print(n, r["timeline"], "punch", r["punch_seconds"], "s", flush=True)
    res = {"runs": runs, "loadavg_before": load, "loadavg_after": os.getloadavg()}
    for key in ("registered", "first_session", "punched", "registered_to_punched"):
        values = [r["timeline"][key] for r in runs if r["timeline"].get(key) is not None]
        if values:
            res[key + "_median"] = statistics.median(values)
            print(f"{key:24} median {statistics.median(values):.3f} s, max {max(values):.3f} s (A's start = 0)")
    print(f"load average before {load[0]:.2f}, after {res['loadavg_after'][0]:.2f}")
    out = ROOT / "benchmarks" / "results" / time.strftime("nat-upgrade-%Y-%m-%d-%H%M%S.json")
    out.write_text(json.dumps(res, indent=1))
    print("saved", out)
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mb", type=int, default=500)
    p.add_argument("--rate-mbit", type=float, default=None, help="tbf limit on the WAN links")
    p.add_argument("--work", default="/tmp/kacheryfs-bench-nat")
    p.add_argument("--upgrade-only", type=int, default=0, metavar="N",
                   help="only time the upgrade: N punched rows with a 1 MB file (no table of rates)")
    a = p.parse_args()
    if a.upgrade_only:
        return upgrade_only(Path(a.work), a.upgrade_only)
    work = Path(a.work)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    size = a.size_mb * 1_000_000
    src = work / "data.bin"
    with open(src, "wb") as f:
        left = size
        while left:
            n = min(left, 64 << 20)
            f.write(os.urandom(n))
            left -= n
    res = {"size": size, "rate_mbit": a.rate_mbit, "loadavg_before": os.getloadavg()}
    res["plain"] = plain_transfer(work, a.rate_mbit, src, size)
    rows = {"direct (same path)": ((), "b", False), "direct (LAN, C -> A)": ((), "c", True),
            "punched": ((), "b", True), "relayed": (("r2",), "b", True)}
    for n, (label, (symmetric, server, nat)) in enumerate(rows.items()):
        sub = work / f"row{n}"
        sub.mkdir()
        res[label] = kacheryfs_transfer(sub, symmetric, a.rate_mbit, src, size, server, nat)
    res["loadavg_after"] = os.getloadavg()
    plain = res["plain"]["MBps"]
    print(f"{'B -> A, ' + str(a.size_mb) + ' MB':24} {'MB/s':>7} {'vs plain':>9} {'download':>9} {'relay MB':>9}"
          f"  {'CPU A/B/boot':>14}  path")
    for label in ("plain", *rows):
        r = res[label]
        relay = f"{r['relay_bytes'] / 1e6:9.1f}" if "relay_bytes" in r else f"{'':9}"
        download = f"{r['download_MBps']:9.1f}" if r.get("download_MBps") else f"{'':9}"
        cpu = "/".join(f"{v:.2f}" for v in r["cpu_cores"].values()) if "cpu_cores" in r else ""
        print(f"{label:24} {r['MBps']:7.1f} {r['MBps'] / plain:9.2f} {download} {relay}  {cpu:>14}  {r['path']}")
    res["ratios"] = {"punched_vs_plain": res["punched"]["MBps"] / plain,
                     "punched_vs_direct": res["punched"]["MBps"] / res["direct (same path)"]["MBps"],
                     "direct_vs_plain": res["direct (same path)"]["MBps"] / plain,
                     "relayed_vs_punched": res["relayed"]["MBps"] / res["punched"]["MBps"]}
    print(f"punched / direct session over the same path: {res['ratios']['punched_vs_direct']:.2f}; "
          f"direct / plain: {res['ratios']['direct_vs_plain']:.2f}")
    print(f"load average before {res['loadavg_before'][0]:.2f}, after {res['loadavg_after'][0]:.2f}")
    print(f"relayed / punched: {res['ratios']['relayed_vs_punched']:.2f}")
    print(f"A's log, seconds from its start: {res['punched']['timeline']}")
    print(f"upgrade: punch {res['punched']['punch_seconds']} s (request -> direct session); "
          f"daemon start -> first session {res['punched']['seconds_to_first_session']} s, "
          f"-> hole-punched {res['punched']['seconds_to_upgrade_from_start']} s")
    out = ROOT / "benchmarks" / "results" / time.strftime("nat-%Y-%m-%d-%H%M%S.json")
    out.write_text(json.dumps(res, indent=1))
    (ROOT / "benchmarks" / "results" / "nat-latest.json").write_text(json.dumps(res, indent=1))
    print("saved", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
