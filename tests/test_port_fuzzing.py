"""Hostile input at a live node's listening port: a real daemon with a real mount, 127.0.0.1 only.

Random bytes, frames announcing ~2 GiB, idle and slow connections held open, handshakes cut at
every byte offset. The node must stay up, keep its mount working, serve a legitimate peer right
after, stay under 500 MB resident and give its file descriptors back.
"""

import hashlib
import os
import random
import subprocess
import time

import pytest
import trio

from kacheryfs.crypto import NodeKey, channel_id, channel_key
from kacheryfs.protocol.connection import HELLO_BYTES, INITIATOR, MAGIC, RESPONDER, Connection

from .conftest import write_random_file
from .mounting import KACHERYFS
from .procstat import listen_port, node_status, open_fds, peak_rss_bytes, wait_fds_at_most

LOCAL = ["--listen", "127.0.0.1:0"]
HANDSHAKE_TIMEOUT = 3.0  # the daemon's, set through the environment (10 s by default)
PER_IP = 16  # the default limit of handshakes in progress from one address
CONCURRENCY = 12  # clients at once in the phases that must reach the parser (below PER_IP)


async def read_until_closed(stream: trio.SocketStream) -> None:
    try:
        while await stream.receive_some(65536):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # a reset: the node hung up without reading everything


async def run_all(jobs, concurrency: int) -> None:
    limiter = trio.CapacityLimiter(concurrency)

    async def one(job):
        async with limiter:
            await job()

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(one, job)


def mount_works(m, tag: str) -> None:
    """A write through the mount commits, and reads back by name and by hash."""
    data = f"still here {tag}\n".encode() * 100
    m.path("store", f"check-{tag}.txt").write_bytes(data)
    assert m.path("store", f"check-{tag}.txt").read_bytes() == data
    assert m.path("sha1", hashlib.sha1(data).hexdigest()).read_bytes() == data


def initiator_bytes(key: NodeKey, channels: dict) -> int:
    """How many bytes a legitimate initiator sends in a handshake (hello + Auth frame)."""
    initiator = Connection(INITIATOR, key, channels)
    responder = Connection(RESPONDER, NodeKey.generate(), channels)
    hello = initiator.data_to_send()
    responder.receive_data(hello)
    responder.next_event()
    initiator.receive_data(responder.data_to_send())
    initiator.next_event()
    return len(hello) + len(initiator.data_to_send())


@pytest.mark.timeout(300)
async def test_live_port_fuzzing(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("KACHERYFS_HANDSHAKE_TIMEOUT", str(HANDSHAKE_TIMEOUT))
    mount, daemon = stack
    a = mount("a", "--channel", "x", *LOCAL)
    port = listen_port(a.read_log())
    src = tmp_path / "twenty.bin"
    sha1 = write_random_file(src, 20 * 1000 * 1000, seed=31)
    with open(src, "rb") as f, open(a.path("store", "twenty.bin"), "wb") as out:
        while block := f.read(1 << 20):
            out.write(block)
    uri = os.getxattr(a.path("store", "twenty.bin"), "user.kachery.uri").decode()
    pid = a.proc.pid
    mount_works(a, "start")
    baseline_fds = open_fds(pid)
    rng = random.Random(9)

    async def connect() -> trio.SocketStream:
        return await trio.open_tcp_stream("127.0.0.1", port)

    # 1. 2,000 connections of random bytes, 0 to 64 KiB; a quarter open with a valid hello, so
    #    the bytes after it are parsed as frames.
    def random_junk(n: int, hello: bool):
        async def job():
            stream = await connect()
            try:
                payload = (MAGIC + os.urandom(32) if hello else b"") + os.urandom(n)
                await stream.send_all(payload)
                await stream.send_eof()
                await read_until_closed(stream)
            except (trio.BrokenResourceError, OSError):
                pass
            finally:
                await stream.aclose()
        return job

    with trio.fail_after(120):
        await run_all([random_junk(rng.randint(0, 64 << 10), i % 4 == 0) for i in range(2000)], CONCURRENCY)
    assert a.proc.poll() is None
    await trio.to_thread.run_sync(mount_works, a, "random")

    # 2. 300 frames announcing ~2 GiB (and 50 announcing 4 MiB) right after a valid hello: before
    #    the peer has authenticated, the node must hang up at once, not wait for (or buffer) them.
    def huge_frame(length: int):
        async def job():
            stream = await connect()
            try:
                await stream.send_all(MAGIC + os.urandom(32) + length.to_bytes(4, "big") + os.urandom(4096))
                with trio.fail_after(HANDSHAKE_TIMEOUT + 10):
                    await read_until_closed(stream)
            finally:
                await stream.aclose()
        return job

    before = node_status(a.mountpoint)["rejected"]
    lengths = [(2 << 30) - rng.randint(0, 1 << 20) for _ in range(300)]
    lengths += [(4 << 20) - rng.randint(0, 1 << 10) for _ in range(50)]  # a chunk-sized frame, before auth
    await run_all([huge_frame(n) for n in lengths], CONCURRENCY)
    after = node_status(a.mountpoint)["rejected"]
    assert after.get("bad", 0) - before.get("bad", 0) == 350, (before, after)
    assert after.get("timeout", 0) == before.get("timeout", 0)  # rejected on the length, not by waiting

    # 3. 200 connections held idle at once, and 5 slow ones (a byte every half second): the node
    #    refuses what exceeds its per-address limit at once and cuts the rest at the handshake timeout.
    closed_after: list[float] = []

    async def idle():
        stream = await connect()
        started = trio.current_time()
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT + 20):
                await read_until_closed(stream)
            closed_after.append(trio.current_time() - started)
        finally:
            await stream.aclose()

    before = node_status(a.mountpoint)["rejected"]
    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(idle)
        await trio.sleep(0.5)  # all 200 open (or already refused) while the mount is used
        await trio.to_thread.run_sync(mount_works, a, "idle")
    after = node_status(a.mountpoint)["rejected"]
    assert len(closed_after) == 200
    refused = after.get("refused", 0) - before.get("refused", 0)
    timed_out = after.get("timeout", 0) - before.get("timeout", 0)
    assert refused + timed_out == 200, (before, after)
    assert timed_out <= PER_IP and refused >= 200 - PER_IP  # the per-address limit held
    assert sum(1 for t in closed_after if t >= HANDSHAKE_TIMEOUT - 0.5) >= timed_out  # none cut early

    async def slow():
        stream = await connect()
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT + 20):
                for byte in MAGIC + os.urandom(32) + os.urandom(200):
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.5)
                raise AssertionError("a slow handshake was never cut")
        except trio.BrokenResourceError:
            pass  # cut by the node
        finally:
            await stream.aclose()

    before = node_status(a.mountpoint)["rejected"]
    await run_all([slow for _ in range(5)], 5)
    after = node_status(a.mountpoint)["rejected"]
    assert after.get("timeout", 0) - before.get("timeout", 0) == 5

    # 4. 500 legitimate handshakes (a channel member's key) cut at every byte offset.
    key = NodeKey.generate()
    ckey = channel_key("x")
    channels = {channel_id(ckey): ckey}
    total = initiator_bytes(key, channels)

    def cut_at(offset: int):
        async def job():
            conn = Connection(INITIATOR, key, channels)
            hello = conn.data_to_send()
            stream = await connect()
            try:
                if offset < len(hello):
                    await stream.send_all(hello[:offset])
                    return
                await stream.send_all(hello)
                received = b""
                with trio.fail_after(10):
                    while len(received) < HELLO_BYTES:
                        data = await stream.receive_some(4096)
                        assert data, "the node hung up on a valid hello"
                        received += data
                conn.receive_data(received)
                assert conn.next_event() is None
                await stream.send_all(conn.data_to_send()[:offset - len(hello)])
            finally:
                await stream.aclose()
        return job

    before = node_status(a.mountpoint)["rejected"]
    with trio.fail_after(120):
        await run_all([cut_at(i % total) for i in range(500)], CONCURRENCY)
    with trio.fail_after(10):  # the node notices the last cuts
        while sum(node_status(a.mountpoint)["rejected"].values()) - sum(before.values()) < 500:
            await trio.sleep(0.1)
    after = node_status(a.mountpoint)["rejected"]
    assert after.get("cut", 0) - before.get("cut", 0) == 500, (before, after)

    # The node is up, its mount works, and a legitimate peer fetches 20 MB right away.
    assert a.proc.poll() is None
    await trio.to_thread.run_sync(mount_works, a, "after")
    b = daemon("b", "daemon", "--channel", "x", *LOCAL)
    b.wait_log("listening on")
    dest = tmp_path / "fetched.bin"
    loaded = await trio.to_thread.run_sync(lambda: subprocess.run(
        [KACHERYFS, "load", uri, "--dest", str(dest)], env=b.env, capture_output=True, text=True, timeout=90))
    assert loaded.returncode == 0, loaded.stderr + b.read_log()
    assert hashlib.sha1(dest.read_bytes()).hexdigest() == sha1

    peak = peak_rss_bytes(pid)
    fds = await trio.to_thread.run_sync(wait_fds_at_most, pid, baseline_fds + 50, 30.0)
    print(f"peak RSS {peak / 1e6:.0f} MB, fds {baseline_fds} at start, {fds} after; rejected {after}")
    assert peak < 500e6
    assert fds <= baseline_fds + 50
