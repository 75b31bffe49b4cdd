"""Evaluation of iroh (PyPI 1.2.x) as a connectivity layer: loopback throughput of one iroh stream
against our TCP + encrypted session path, one direction, Python on both ends (two processes each).

iroh must not go into the project's venv; make a scratch one:
    python3 -m venv /tmp/irohvenv && /tmp/irohvenv/bin/pip install iroh
    .venv/bin/python benchmarks/eval_iroh.py --iroh-python /tmp/irohvenv/bin/python --size-mib 1024
Prints a table and saves benchmarks/results/iroh-eval-<time>.json. See docs/architecture.md
("Connectivity: why not iroh") for the figures and the decision.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ALPN = b"kfs-bench/0"


# ---- iroh ends (run under the scratch venv's python) -------------------------------------------
def _iroh_module(patch: bool):
    import ctypes

    from iroh import iroh_ffi as f

    if patch:  # the shipped bindings copy every written byte in a Python loop; best case: one memmove
        def fast_write(self, value):
            n = len(value)
            with self._reserve(n):
                ctypes.memmove(ctypes.addressof(self.rbuf.data.contents) + self.rbuf.len, bytes(value), n)
        f._UniffiRustBufferBuilder.write = fast_write
    return f


async def _iroh_endpoint(f):
    import asyncio

    f.uniffi_set_event_loop(asyncio.get_running_loop())
    return await f.Endpoint.bind(f.EndpointOptions(preset=f.preset_minimal(), bind_addr="127.0.0.1:0",
                                                   alpns=[ALPN], relay_mode=f.RelayMode.disabled()))


async def iroh_receiver(patch: bool) -> None:
    f = _iroh_module(patch)
    ep = await _iroh_endpoint(f)
    print(json.dumps({"id": str(ep.id()), "addrs": ep.bound_sockets()}), flush=True)
    conn = await (await (await ep.accept_next()).accept()).connect()
    bi = await conn.accept_bi()
    recv, total, t0 = bi.recv(), 0, None
    while data := await recv.read(4 << 20):
        t0 = t0 or time.perf_counter()
        total += len(data)
    seconds = time.perf_counter() - t0
    await bi.send().write_all(b"k")
    await bi.send().finish()
    print(json.dumps({"bytes": total, "seconds": seconds}), flush=True)
    await ep.close()


async def iroh_sender(patch: bool, node_id: str, addrs: list[str], size: int, block: int) -> None:
    f = _iroh_module(patch)
    ep = await _iroh_endpoint(f)
    conn = await ep.connect(f.EndpointAddr(f.EndpointId.from_string(node_id), None, addrs), ALPN)
    bi = await conn.open_bi()
    send, buf = bi.send(), bytes(block)
    for _ in range(size // block):
        await send.write_all(buf)
    await send.finish()
    await bi.recv().read(10)
    await ep.close()


# ---- our ends: trio TCP + handshake + AEGIS-256 frames of 1 MiB ChunkData ---------------------
async def ours_receiver(size: int) -> None:
    import trio

    from kacheryfs.crypto import NodeKey
    from kacheryfs.net.session import PeerSession, handshake
    from kacheryfs.protocol import Connection
    from kacheryfs.protocol.connection import RESPONDER
    from kacheryfs.protocol.messages import ChunkData

    done, result = trio.Event(), {}

    async def handle(stream):
        conn = Connection(RESPONDER, NodeKey.generate(), {})
        sess = PeerSession(stream, conn, await handshake(stream, conn), "inbound", "bench")
        total, t0 = 0, None

        async def on_message(s, msg):
            nonlocal total, t0
            t0 = t0 or time.perf_counter()
            total += len(msg.payload)
            if total >= size:
                result.update(bytes=total, seconds=time.perf_counter() - t0)
                await s.send(ChunkData(req=0, payload=b"k"))
                done.set()

        async with trio.open_nursery() as n:
            n.start_soon(sess.receive_loop, on_message)
            await done.wait()
            await trio.sleep(0.2)
            n.cancel_scope.cancel()

    async with trio.open_nursery() as n:
        listeners = await n.start(trio.serve_tcp, handle, 0)
        port = next(l.socket.getsockname()[1] for l in listeners if l.socket.family == socket.AF_INET)
        print(json.dumps({"port": port}), flush=True)
        await done.wait()
        print(json.dumps(result), flush=True)
        n.cancel_scope.cancel()


async def ours_sender(port: int, size: int, block: int) -> None:
    import trio

    from kacheryfs.crypto import NodeKey
    from kacheryfs.net.session import PeerSession, handshake
    from kacheryfs.protocol import Connection
    from kacheryfs.protocol.connection import INITIATOR
    from kacheryfs.protocol.messages import ChunkData

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = Connection(INITIATOR, NodeKey.generate(), {})
    sess = PeerSession(stream, conn, await handshake(stream, conn), "outbound", "bench")
    got, buf = trio.Event(), bytes(block)

    async def on_message(s, msg):
        got.set()

    async with trio.open_nursery() as n:
        n.start_soon(sess.receive_loop, on_message)
        for _ in range(size // block):
            await sess.send(ChunkData(req=1, payload=buf))
        await got.wait()
        n.cancel_scope.cancel()


# ---- driver ------------------------------------------------------------------------------------
def _pair(recv_cmd: list[str], send_cmd, timeout: float) -> dict:
    r = subprocess.Popen(recv_cmd, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(r.stdout.readline())
        subprocess.run(send_cmd(info), check=True, timeout=timeout)
        out = json.loads(r.stdout.readline())
        r.wait(30)
    finally:
        if r.poll() is None:
            r.kill()
    out["MBps"] = out["bytes"] / out["seconds"] / 1e6
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_end":
        import asyncio

        import trio

        role, args = sys.argv[2], sys.argv[3:]
        if role == "iroh-recv":
            asyncio.run(iroh_receiver(args[0] == "1"))
        elif role == "iroh-send":
            asyncio.run(iroh_sender(args[0] == "1", args[1], json.loads(args[2]), int(args[3]), int(args[4])))
        elif role == "ours-recv":
            trio.run(ours_receiver, int(args[0]))
        else:
            trio.run(ours_sender, int(args[0]), int(args[1]), int(args[2]))
        return 0
    p = argparse.ArgumentParser()
    p.add_argument("--iroh-python", required=True, help="python of a scratch venv with iroh installed")
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--unpatched-size-mib", type=int, default=16, help="as shipped it runs at ~2 MB/s")
    a = p.parse_args()
    me, block = os.path.abspath(__file__), 1 << 20
    size = a.size_mib << 20
    rows = {}
    rows["ours: trio TCP + handshake + AEGIS-256 frames"] = _pair(
        [sys.executable, me, "_end", "ours-recv", str(size)],
        lambda info: [sys.executable, me, "_end", "ours-send", str(info["port"]), str(size), str(block)], 600)
    for patch, n in ((True, size), (False, a.unpatched_size_mib << 20)):
        label = "iroh stream, bindings patched (memmove)" if patch else "iroh stream, bindings as shipped"
        rows[label] = _pair(
            [a.iroh_python, me, "_end", "iroh-recv", str(int(patch))],
            lambda info, patch=patch, n=n: [a.iroh_python, me, "_end", "iroh-send", str(int(patch)), info["id"],
                                            json.dumps(info["addrs"]), str(n), str(block)], 900)
    base = rows["ours: trio TCP + handshake + AEGIS-256 frames"]["MBps"]
    print(f"{'path':50} {'MiB':>6} {'MB/s':>8} {'vs ours':>8}")
    for label, r in rows.items():
        print(f"{label:50} {r['bytes'] >> 20:6} {r['MBps']:8.1f} {r['MBps'] / base:8.2f}")
    out = Path(__file__).parent / "results" / time.strftime("iroh-eval-%Y-%m-%d-%H%M%S.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "loadavg": os.getloadavg()}, indent=1))
    print("saved", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
