"""Across NATs, in network namespaces this test creates (tests/nat_topology.py): hole punching,
the relay as a bounded fallback, LAN peers behind one NAT, and forged or stormy punch messages."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import write_random_file
from .mounting import KACHERYFS, Daemon, Mount, cli_env
from .nat_topology import HOST_ADDR, PUBLIC_ADDR, WAN_ADDR, available, nat_topology

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

BOOT = f"{PUBLIC_ADDR}:7000"
MB = 1_000_000


def status(env: dict) -> dict:
    """The running daemon's status (`kacheryfs status --json`), or {} while it is not up yet."""
    result = subprocess.run([KACHERYFS, "status", "--json"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["daemon"] or {}


def peer_path(env: dict, peer_id: str) -> str | None:
    for p in status(env).get("peers", []):
        if p["node"] == peer_id:
            return p["path"]
    return None


def node_id(env: dict) -> str | None:
    return status(env).get("node_id")


def wait_for(what: str, check, timeout: float = 40.0, logs=()):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(
                f"---- {log}\n{Path(log).read_text(errors='replace')[-6000:]}" for log in logs))
        time.sleep(0.2)


@contextlib.contextmanager
def nat_cluster(tmp_path: Path, symmetric=(), boot_flags=()):
    """The topology with a bootstrap running in pub; yields (topo, start) where start(kind, host,
    name, *flags) starts a daemon or mount on a host; everything stops before the topology goes."""
    with nat_topology(symmetric=symmetric) as topo, contextlib.ExitStack() as stack:
        boot = Daemon(tmp_path / "boot", "bootstrap", "--listen", "0.0.0.0:7000", *boot_flags,
                      prefix=topo.prefix("pub"))
        stack.callback(boot.stop)
        boot.start().wait_log("listening on")

        def start(kind: str, host: str, name: str, *flags: str):
            if kind == "mount":
                (tmp_path / name).mkdir(exist_ok=True)
                m = Mount(tmp_path / name, prefix=topo.prefix(host))
                stack.callback(m.stop)
                return m.start(*flags)
            d = Daemon(tmp_path / name, "daemon", *flags, prefix=topo.prefix(host))
            stack.callback(d.stop)
            return d.start()

        topo.boot = boot
        yield topo, start


def store_file(env: dict, path: Path, size: int, seed: int) -> tuple[str, str]:
    digest = write_random_file(path, size, seed=seed)
    uri = subprocess.run([KACHERYFS, "store", str(path)], env=env, check=True, capture_output=True,
                         text=True).stdout.strip()
    return digest, uri


def sha1_of(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@pytest.mark.timeout(240)
def test_read_through_the_mount_across_two_nats_is_hole_punched(tmp_path):
    env_b = cli_env(tmp_path / "b" / "storage", tmp_path / "b" / "config")
    digest, _uri = store_file(env_b, tmp_path / "data.bin", 50 * MB, seed=12)
    with nat_cluster(tmp_path) as (topo, start):
        b = start("daemon", "b", "b", "--channel", "x", "--bootstrap", BOOT)
        a = start("mount", "a", "a", "--channel", "x", "--bootstrap", BOOT)
        c = start("daemon", "c", "c", "--channel", "x", "--bootstrap", BOOT)
        logs = (a.log_path, b.log_path, topo.boot.log_path)
        id_a = wait_for("a's node id", lambda: node_id(a.env), logs=logs)
        id_b = wait_for("b's node id", lambda: node_id(env_b), logs=logs)
        id_c = wait_for("c's node id", lambda: node_id(c.env), logs=logs)
        wait_for("A-B hole-punched", lambda: peer_path(a.env, id_b) == "hole-punched", logs=logs)
        # the bootstrap told each node where it sees it: its router's address
        assert status(a.env)["observed"] == [f"{WAN_ADDR['r1']}:{status(a.env)['listen_port']}"]
        assert status(env_b)["observed"][0].startswith(WAN_ADDR["r2"] + ":")
        before = status(topo.boot.env)["relay"]["bytes"]

        dest = tmp_path / "out.bin"
        shutil.copyfile(a.path("sha1", digest), dest)
        assert sha1_of(dest) == digest

        assert peer_path(a.env, id_b) == "hole-punched"
        assert peer_path(env_b, id_a) == "hole-punched"
        relay = status(topo.boot.env)["relay"]
        assert relay["bytes"] - before < 1 * MB, relay  # (almost) none of the 50 MB crossed the relay
        assert relay["open"] == 0  # the circuits used before the punch were closed
        # A and C share LAN 1 behind r1: they talk directly over the LAN, not through r1 or the relay
        wait_for("A-C direct", lambda: peer_path(a.env, id_c) == "direct", logs=logs)
        remote = next(p["remote"] for p in status(a.env)["peers"] if p["node"] == id_c)
        assert remote.split(":")[0] in (HOST_ADDR["c"], HOST_ADDR["a"]), remote


@pytest.mark.timeout(240)
def test_symmetric_nat_falls_back_to_the_relay_within_its_limit(tmp_path):
    env_b = cli_env(tmp_path / "b" / "storage", tmp_path / "b" / "config")
    digest, _ = store_file(env_b, tmp_path / "data.bin", 50 * MB, seed=13)
    big, big_uri = store_file(env_b, tmp_path / "big.bin", 30 * MB, seed=14)
    with nat_cluster(tmp_path, symmetric=("r2",), boot_flags=("--relay-circuit-bytes", "64M")) as (topo, start):
        b = start("daemon", "b", "b", "--channel", "x", "--bootstrap", BOOT)
        a = start("mount", "a", "a", "--channel", "x", "--bootstrap", BOOT)
        logs = (a.log_path, b.log_path, topo.boot.log_path)
        id_b = wait_for("b's node id", lambda: node_id(env_b), logs=logs)
        wait_for("A-B relayed", lambda: peer_path(a.env, id_b) == "relayed", logs=logs)
        # the smaller node id starts the punch; both ends count it as failed
        wait_for("the punch to fail", lambda: status(a.env)["punch"]["failed"] >= 1
                 and status(env_b)["punch"]["failed"] >= 1, timeout=60, logs=logs)

        dest = tmp_path / "out.bin"
        shutil.copyfile(a.path("sha1", digest), dest)
        assert sha1_of(dest) == digest
        assert peer_path(a.env, id_b) == "relayed"
        assert status(topo.boot.env)["relay"]["bytes"] >= 50 * MB

        # 50 MB + 30 MB is more than the 64 MiB one circuit may carry: the transfer fails, naming it
        result = subprocess.run([KACHERYFS, "load", big_uri, "--dest", str(tmp_path / "big.out")], env=a.env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        assert "relay limit reached: 64 MiB per circuit (--relay-circuit-bytes)" in result.stderr
        assert status(topo.boot.env)["relay"]["closed_by_limit"] == {"circuit-bytes": 1}
        assert a.proc.poll() is None and b.proc.poll() is None and topo.boot.proc.poll() is None


@pytest.mark.timeout(180)
def test_a_dropped_punch_is_retried_and_upgrades_the_relayed_session(tmp_path):
    env_b = cli_env(tmp_path / "b" / "storage", tmp_path / "b" / "config")
    digest, uri = store_file(env_b, tmp_path / "data.bin", 5 * MB, seed=17)
    with nat_cluster(tmp_path) as (topo, start):
        topo.block("r1", WAN_ADDR["r2"])  # r1 drops every packet between the two routers
        try:
            b = start("daemon", "b", "b", "--channel", "x", "--bootstrap", BOOT)
            a = start("daemon", "a", "a", "--channel", "x", "--bootstrap", BOOT)
            logs = (a.log_path, b.log_path, topo.boot.log_path)
            id_a = wait_for("a's node id", lambda: node_id(a.env), logs=logs)
            id_b = wait_for("b's node id", lambda: node_id(env_b), logs=logs)
            initiator = a.env if id_a < id_b else env_b  # the smaller id punches (protocol.md §5b)
            wait_for("A-B relayed", lambda: peer_path(a.env, id_b) == "relayed", logs=logs)
            wait_for("the first punch to fail", lambda: status(initiator)["punch"]["failed"] >= 1, timeout=60,
                     logs=logs)
            assert peer_path(a.env, id_b) == "relayed"  # the relay carries the session meanwhile
            # bytes flow before the upgrade, through the relay
            result = subprocess.run([KACHERYFS, "load", uri, "--dest", str(tmp_path / "out.bin")], env=a.env,
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            assert sha1_of(tmp_path / "out.bin") == digest
        finally:
            topo.unblock("r1")
        wait_for("A-B hole-punched by a retry", lambda: peer_path(a.env, id_b) == "hole-punched", timeout=60,
                 logs=logs)
        punch = status(initiator)["punch"]
        assert punch["retries"] >= 1 and punch["punched"] == 1 and punch["attempted"] >= 2, punch
        assert peer_path(env_b, id_a) == "hole-punched"
        wait_for("the relay circuit closed", lambda: status(topo.boot.env)["relay"]["open"] == 0, logs=logs)


@pytest.mark.timeout(180)
def test_a_peer_that_only_dials_out_serves_what_it_holds_through_the_relay(tmp_path):
    env_b = cli_env(tmp_path / "b" / "storage", tmp_path / "b" / "config")
    digest, uri = store_file(env_b, tmp_path / "data.bin", 5 * MB, seed=16)
    with nat_cluster(tmp_path) as (topo, start):
        b = start("daemon", "b", "b", "--channel", "x", "--bootstrap", BOOT, "--listen", "none")
        a = start("daemon", "a", "a", "--channel", "x", "--bootstrap", BOOT)
        logs = (a.log_path, b.log_path, topo.boot.log_path)
        id_b = wait_for("b's node id", lambda: node_id(env_b), logs=logs)
        wait_for("A-B relayed", lambda: peer_path(a.env, id_b) == "relayed", logs=logs)
        assert status(env_b)["listen"] == [] and status(env_b)["punch"]["attempted"] == 0
        result = subprocess.run([KACHERYFS, "load", uri, "--dest", str(tmp_path / "out.bin")], env=a.env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert sha1_of(tmp_path / "out.bin") == digest
        assert status(topo.boot.env)["relay"]["bytes"] >= 5 * MB


@pytest.mark.timeout(120)
def test_lan_peers_behind_a_nat_connect_directly_without_a_bootstrap(tmp_path):
    env_c = cli_env(tmp_path / "c" / "storage", tmp_path / "c" / "config")
    digest, uri = store_file(env_c, tmp_path / "data.bin", 5 * MB, seed=15)
    with nat_topology() as topo, contextlib.ExitStack() as stack:
        nodes = {}
        for host in ("a", "c"):
            d = Daemon(tmp_path / host, "daemon", "--channel", "x", prefix=topo.prefix(host))
            d.env["KACHERYFS_DISCOVERY_DIR"] = str(tmp_path / host / "discovery")  # LAN only
            stack.callback(d.stop)
            nodes[host] = d.start()
        id_c = wait_for("c's node id", lambda: node_id(env_c), logs=(nodes["c"].log_path,))
        wait_for("A-C direct", lambda: peer_path(nodes["a"].env, id_c) == "direct",
                 logs=(nodes["a"].log_path, nodes["c"].log_path))
        result = subprocess.run([KACHERYFS, "load", uri, "--dest", str(tmp_path / "out.bin")],
                                env=nodes["a"].env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert sha1_of(tmp_path / "out.bin") == digest


# A client that speaks to the bootstrap directly (registered from its listening port like a node,
# in B's channel: a malicious member) and sends forged punch messages and a storm. Prints one JSON object of what came back.
FORGER = r"""
import json, sys, trio
from kacheryfs.crypto import NodeKey
from kacheryfs.protocol import Connection
from kacheryfs.protocol.connection import INITIATOR
from kacheryfs.protocol.messages import *
from kacheryfs.net.session import PeerSession, handshake, RequestFailed
from kacheryfs.net.sockets import open_shared_listener, connect_from

async def main(boot_host, boot_port, target):
    listener = await open_shared_listener("0.0.0.0", 0)
    port = listener.socket.getsockname()[1]
    stream = await connect_from(("0.0.0.0", port), boot_host, boot_port)
    conn = Connection(INITIATOR, NodeKey.generate(), {})
    s = PeerSession(stream, conn, await handshake(stream, conn), "outbound", "boot")
    out = {}
    observed = []
    async def on_message(sess, msg):
        if isinstance(msg, Observed):
            observed.append(msg.addr)
    async with trio.open_nursery() as n:
        n.start_soon(s.receive_loop, on_message)
        async def ask(name, msg):
            try:
                r = await s.request(msg, 5)
                out[name] = type(r).__name__
            except RequestFailed as exc:
                out[name] = exc.detail.split(":")[0]
        await ask("unregistered", PunchRequest(req=s.next_req(), target=target, addrs=["198.51.100.2:1"]))
        from kacheryfs.crypto import channel_id, channel_key
        await s.send(Register(channel_ids=[channel_id(channel_key("x"))], addrs=[]))  # a channel member
        with trio.fail_after(5):
            while not observed:
                await trio.sleep(0.05)
        out["observed"] = observed[0]
        await ask("third-party", PunchRequest(req=s.next_req(), target=target, addrs=["203.0.113.7:22"]))
        await ask("unknown-target", PunchRequest(req=s.next_req(), target="e" * 64, addrs=[observed[0]]))
        await s.send(PunchReply(punch=1, addrs=[observed[0]]))        # never asked
        await s.send(PunchSync(punch=1, attempt=1))                   # not ours
        codes = {}
        for _ in range(200):                                           # a storm
            try:
                r = await s.request(PunchRequest(req=s.next_req(), target=target, addrs=[observed[0]]), 5)
                codes["ready"] = codes.get("ready", 0) + 1
            except RequestFailed as exc:
                code = exc.detail.split(":")[0]
                codes[code] = codes.get(code, 0) + 1
            except trio.TooSlowError:
                codes["timeout"] = codes.get("timeout", 0) + 1
        out["storm"] = codes
        n.cancel_scope.cancel()
    print(json.dumps(out))

trio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3])
"""


@pytest.mark.timeout(180)
def test_forged_punches_and_storms_are_refused_and_nothing_crashes(tmp_path):
    env_b = cli_env(tmp_path / "b" / "storage", tmp_path / "b" / "config")
    with nat_cluster(tmp_path) as (topo, start):
        b = start("daemon", "b", "b", "--channel", "x", "--bootstrap", BOOT)
        id_b = wait_for("b's node id", lambda: node_id(env_b), logs=(b.log_path,))
        wait_for("b registered", lambda: status(env_b)["observed"], logs=(b.log_path, topo.boot.log_path))
        forger = topo.run("a", sys.executable, "-c", FORGER, PUBLIC_ADDR, "7000", id_b, check=False)
        assert forger.returncode == 0, forger.stderr
        out = json.loads(forger.stdout)
        assert out["unregistered"] == "not-registered"
        assert out["observed"].startswith(WAN_ADDR["r1"] + ":")
        assert out["third-party"] == "address-not-observed"
        assert out["unknown-target"] == "unknown-target"
        storm = out["storm"]
        assert storm.get("rate-limited", 0) >= 150, storm  # at most a burst gets through
        assert sum(storm.values()) == 200
        boot = status(topo.boot.env)
        assert boot["punch"]["refused"]["no-such-punch"] >= 2  # the reply and sync never asked for
        assert boot["punch"]["refused"]["rate-limited"] >= 150
        # everyone is still up, and B still works with an honest peer
        assert b.proc.poll() is None and topo.boot.proc.poll() is None
        a = start("daemon", "a", "a", "--channel", "x", "--bootstrap", BOOT)
        wait_for("A-B hole-punched", lambda: peer_path(a.env, id_b) == "hole-punched",
                 logs=(a.log_path, b.log_path, topo.boot.log_path))
