"""The HTTP gateway: Range parsing (pure), then real daemons over 127.0.0.1 and a real HTTP client."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import httpx
import pytest
import trio

from kacheryfs.gateway.ranges import ByteRange, Unsatisfiable, parse_range
from kacheryfs.store import CHUNK_SIZE, Digest, LocalStore

from .conftest import random_bytes
from .mounting import KACHERYFS
from .test_mount_network import node_id_of, wait_until_connected

LOCAL = ["--listen", "127.0.0.1:0"]


@pytest.mark.parametrize("header, size, expected", [
    (None, 10, None),
    ("bytes=0-0", 10, ByteRange(0, 0)),  # first byte
    ("bytes=9-9", 10, ByteRange(9, 9)),  # last byte
    ("bytes=-1", 10, ByteRange(9, 9)),  # last byte, as a suffix
    ("bytes=-4", 10, ByteRange(6, 9)),
    ("bytes=-40", 10, ByteRange(0, 9)),  # a suffix longer than the object: all of it
    ("bytes=3-", 10, ByteRange(3, 9)),
    ("bytes=3-100", 10, ByteRange(3, 9)),  # clipped to the end
    (" Bytes = 2 - 5 ", 10, ByteRange(2, 5)),
    ("bytes=5-2", 10, None),  # invalid: ignored (RFC 9110), the whole object
    ("bytes=0-1,4-5", 10, None),  # several ranges: ignored
    ("items=0-1", 10, None),
    ("bytes=a-b", 10, None),
    ("bytes=-", 10, None),
    ("bytes=+1-2", 10, None),
    ("bytes=5000000000-5000000099", 6 << 30, ByteRange(5_000_000_000, 5_000_000_099)),
])
def test_parse_range(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header, size", [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=0-0", 0),
                                          ("bytes=-5", 0)])
def test_unsatisfiable_ranges(header, size):
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


# ---- real daemons ---------------------------------------------------------------------------------

def status_of(d) -> dict:
    out = subprocess.run([KACHERYFS, "status", "--json"], env=d.env, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def gateway_url(d, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = status_of(d)["daemon"]
        if node and node.get("http"):
            return node["http"]
        assert d.proc.poll() is None, d.read_log()
        time.sleep(0.1)
    raise AssertionError(f"no gateway after {timeout}s:\n{d.read_log()}")


def fetched(d) -> int:
    return status_of(d)["daemon"]["fetched_bytes"]


TAIL = 3 * CHUNK_SIZE + 12345
ZEROS = 4 << 30  # the head of a sparse 4 GiB + tail object: nothing under 4 GiB is ever written


def install_sparse_object(storage) -> tuple[str, int, bytes]:
    """A (4 GiB + TAIL)-byte object, zeros then random bytes, stored without writing the zeros:
    a sparse file installed with its digest. Returns (sha1, size, tail)."""
    store = LocalStore(storage)
    tail = random_bytes(TAIL, seed=7)
    path = store.tmp_dir / f"{os.getpid()}-sparse.part"
    with open(path, "wb") as f:
        f.truncate(ZEROS)
        f.seek(ZEROS)
        f.write(tail)
    whole = hashlib.sha1()
    zeros = memoryview(bytes(64 << 20))
    for _ in range(ZEROS // len(zeros)):
        whole.update(zeros)
    whole.update(tail)
    zero_chunk = hashlib.sha1(zeros[:CHUNK_SIZE]).hexdigest()
    chunks = [zero_chunk] * (ZEROS // CHUNK_SIZE) + [
        hashlib.sha1(tail[i:i + CHUNK_SIZE]).hexdigest() for i in range(0, TAIL, CHUNK_SIZE)]
    size = ZEROS + TAIL
    store.install_verified(path, Digest(whole.hexdigest(), size, tuple(chunks)), pinned=True)
    store.close()
    return whole.hexdigest(), size, tail


@pytest.fixture
def pair(stack, tmp_path):
    """A holds a small file, a 5 MiB file and a sparse 4 GiB one; B (same channel) runs the gateway;
    C (another channel) holds a file B must never see."""
    _mount, daemon = stack
    a_storage = tmp_path / "a" / "storage"
    a_store = LocalStore(a_storage)
    small = b"hello, web\n"
    medium = random_bytes(5 * CHUNK_SIZE + 777, seed=3)
    small_sha1, medium_obj = a_store.put_bytes(small).sha1, a_store.put_bytes(medium)
    medium_sha1 = medium_obj.sha1
    a_store.close()
    big_sha1, big_size, tail = install_sparse_object(a_storage)
    c_store = LocalStore(tmp_path / "c" / "storage")
    secret_sha1 = c_store.put_bytes(b"channel y only").sha1
    c_store.close()
    a = daemon("a", "daemon", "--channel", "x", *LOCAL)
    c = daemon("c", "daemon", "--channel", "y", *LOCAL)
    b = daemon("b", "daemon", "--channel", "x", *LOCAL, "--http", "127.0.0.1:0", "--find-timeout", "1.5")
    for d in (a, b, c):
        d.wait_log("listening on")
    url = gateway_url(b)
    wait_until_connected(b, a)
    return dict(a=a, b=b, c=c, url=url, small=(small_sha1, small), medium=(medium_sha1, medium),
                medium_manifest=medium_obj.manifest_sha1,
                big=(big_sha1, big_size, tail), secret=secret_sha1)


@pytest.mark.timeout(150)
async def test_gateway_objects_ranges_and_errors(pair):
    url, b = pair["url"], pair["b"]
    small_sha1, small = pair["small"]
    medium_sha1, medium = pair["medium"]
    big_sha1, big_size, tail = pair["big"]
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.get(f"/sha1/{small_sha1}")  # fetched from A on first use
        assert r.status_code == 200 and r.content == small
        assert r.headers["etag"] == f'"{small_sha1}"'
        assert "immutable" in r.headers["cache-control"] and r.headers["access-control-allow-origin"] == "*"
        assert r.headers["accept-ranges"] == "bytes"
        assert (await client.get(f"/sha1/{small_sha1}/note.txt")).headers["content-type"].startswith("text/plain")

        r = await client.get(f"/sha1/{medium_sha1}/m.bin?manifest={pair['medium_manifest']}")  # a URI's path
        assert r.status_code == 200 and r.content == medium and int(r.headers["content-length"]) == len(medium)
        assert (await client.get(f"/sha1/{medium_sha1}?manifest=nothex")).status_code == 400
        n = len(medium)
        for header, expected in [("bytes=0-0", medium[:1]), (f"bytes={n - 1}-{n - 1}", medium[-1:]),
                                 ("bytes=-1", medium[-1:]), ("bytes=-1000", medium[-1000:]),
                                 (f"bytes={CHUNK_SIZE - 5}-{2 * CHUNK_SIZE + 5}", medium[CHUNK_SIZE - 5:2 * CHUNK_SIZE + 6]),
                                 (f"bytes={n - 10}-{n + 1000}", medium[n - 10:])]:
            r = await client.get(f"/sha1/{medium_sha1}", headers={"Range": header})
            assert r.status_code == 206, (header, r.text)
            assert r.content == expected, header
            first = n - len(expected) if header.startswith("bytes=-") else int(header[6:].split("-")[0])
            assert r.headers["content-range"] == f"bytes {first}-{first + len(expected) - 1}/{n}"
        for header in (f"bytes={n}-", f"bytes={n + 5}-{n + 10}", "bytes=-0"):
            r = await client.get(f"/sha1/{medium_sha1}", headers={"Range": header})
            assert r.status_code == 416, header
            assert r.headers["content-range"] == f"bytes */{n}"
        r = await client.get(f"/sha1/{medium_sha1}", headers={"Range": "bytes=9-3"})  # invalid: ignored
        assert r.status_code == 200 and r.content == medium
        r = await client.get(f"/sha1/{medium_sha1}", headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        assert r.status_code == 200 and len(r.content) == n
        r = await client.get(f"/sha1/{medium_sha1}", headers={"If-None-Match": f'"{medium_sha1}"'})
        assert r.status_code == 304 and r.content == b""
        r = await client.head(f"/sha1/{medium_sha1}", headers={"Range": "bytes=10-19"})
        assert r.status_code == 206 and r.headers["content-length"] == "10" and r.content == b""
        r = await client.options(f"/sha1/{medium_sha1}", headers={
            "Origin": "http://127.0.0.1:1", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range"})
        assert r.status_code == 204 and "range" in r.headers["access-control-allow-headers"]

        # multi-GB offsets of a lazily fetched object: only the chunks the range covers are fetched
        before = fetched(b)
        r = await client.head(f"/sha1/{big_sha1}")
        assert r.status_code == 200 and int(r.headers["content-length"]) == big_size
        lo = ZEROS + CHUNK_SIZE - 100
        r = await client.get(f"/sha1/{big_sha1}", headers={"Range": f"bytes={lo}-{lo + CHUNK_SIZE + 199}"})
        assert r.status_code == 206 and r.content == tail[CHUNK_SIZE - 100:2 * CHUNK_SIZE + 100]
        r = await client.get(f"/sha1/{big_sha1}", headers={"Range": "bytes=-100"})
        assert r.content == tail[-100:]
        r = await client.get(f"/sha1/{big_sha1}", headers={"Range": "bytes=3000000000-3000000009"})
        assert r.content == bytes(10)
        assert fetched(b) - before < 16 * CHUNK_SIZE, fetched(b) - before  # of 4 GiB

        # bad input: one line, the right status, never a traceback
        for path, status in [("/sha1/xyz", 400), ("/sha1/" + "g" * 40, 400), ("/", 404), ("/nope", 404),
                             ("/sha1/", 404), (f"/sha1/{'ab' * 20}", 404),  # held by nobody
                             (f"/sha1/{pair['secret']}", 404),  # held only on a channel B is not in
                             ("/feeds/xyz/q", 400), ("/feeds/" + "a" * 64 + "/q", 404)]:
            r = await client.get(path)
            assert r.status_code == status, (path, r.text)
            assert r.text.count("\n") == 1 and "Traceback" not in r.text
        assert (await client.post(f"/sha1/{small_sha1}")).status_code == 405
        r = await client.get(f"/sha1/{small_sha1}", headers={"Host": "evil.example:80"})
        assert r.status_code == 403  # a DNS-rebinding page gets nothing
    assert node_id_of(b) not in pair["c"].read_log()  # C never even talked to B
    assert "Traceback" not in b.read_log()


@pytest.mark.timeout(150)
async def test_gateway_concurrent_clients_and_disconnect_mid_stream(pair):
    url, b = pair["url"], pair["b"]
    medium_sha1, medium = pair["medium"]
    big_sha1, big_size, tail = pair["big"]
    results = []

    async def client_task(i: int) -> None:
        lo = (i * 611_953) % (len(medium) - 200_000)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            r = await client.get(f"/sha1/{medium_sha1}", headers={"Range": f"bytes={lo}-{lo + 199_999}"})
            results.append(r.status_code == 206 and r.content == medium[lo:lo + 200_000])
            r = await client.get(f"/sha1/{big_sha1}", headers={"Range": f"bytes={ZEROS + i * 1000}-{ZEROS + i * 1000 + 99}"})
            results.append(r.status_code == 206 and r.content == tail[i * 1000:i * 1000 + 100])

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(client_task, i)
    assert results == [True] * 16

    # A client that leaves after 2 MiB of a 4 GiB object it streams from the start: the lazy
    # download it started is dropped, so B stops fetching.
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async with client.stream("GET", f"/sha1/{big_sha1}") as r:
            assert r.status_code == 200 and int(r.headers["content-length"]) == big_size
            got = 0
            async for block in r.aiter_raw():
                got += len(block)
                if got >= 2 * CHUNK_SIZE:
                    break
    await trio.sleep(1.0)  # let in-flight chunk requests settle, then watch B for a second
    settled = fetched(b)
    await trio.sleep(1.0)
    assert fetched(b) == settled, "B kept fetching for a client that had left"
    assert settled < (1 << 30)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:  # and B serves on
        r = await client.get(f"/sha1/{medium_sha1}", headers={"Range": "bytes=5-9"})
        assert r.content == medium[5:10]
    assert "Traceback" not in b.read_log()


@pytest.mark.timeout(120)
async def test_gateway_feeds_json_lines_and_live_events(stack, tmp_path):
    _mount, daemon = stack
    a = daemon("a", "daemon", "--channel", "x", *LOCAL)
    b = daemon("b", "daemon", "--channel", "x", *LOCAL, "--http", "0")
    a.wait_log("listening on")
    url = gateway_url(b)
    assert url.startswith("http://127.0.0.1:")  # a bare port means loopback
    wait_until_connected(b, a)

    def on_a(*args: str) -> str:
        out = subprocess.run([KACHERYFS, "feed", *args], env=a.env, capture_output=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.decode().strip()

    feed_id = on_a("create", "--label", "jobs")
    on_a("append", feed_id, "queue", '{"job": 1}', '{"job": 2}')
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.get(f"/feeds/{feed_id}/queue")  # B fetches the feed from A
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/jsonl")
        assert [json.loads(line) for line in r.text.splitlines()] == [{"job": 1}, {"job": 2}]
        r = await client.get(f"/feeds/{feed_id}/queue?start=1")
        assert r.text == '{"job":2}\n'
        assert (await client.get(f"/feeds/{feed_id}")).json()["subfeeds"] == {"queue": 2}
        assert (await client.get(f"/feeds/{feed_id}/queue?start=x")).status_code == 400
        assert (await client.get(f"/feeds/{feed_id}/nosuch")).status_code == 404

        events = []
        async with client.stream("GET", f"/feeds/{feed_id}/queue?follow=1&start=1") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.aiter_lines()
            with trio.fail_after(30):
                async for line in lines:
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        if len(events) == 1:  # the backlog is in: append on A, expect it live
                            on_a("append", feed_id, "queue", '{"job": 3}')
                        if len(events) == 2:
                            break
        assert events == [{"job": 2}, {"job": 3}]
        # an EventSource that reconnects resumes after the last id it saw
        async with client.stream("GET", f"/feeds/{feed_id}/queue?follow=1", headers={"Last-Event-ID": "1"}) as r:
            with trio.fail_after(30):
                async for line in r.aiter_lines():
                    if line.startswith("id: "):
                        assert line == "id: 2"
                        break
    assert "Traceback" not in b.read_log()


@pytest.mark.timeout(120)
async def test_gateway_serves_directories(stack, tmp_path):
    """/sha1dir/<hash>[/path]: B fetches A's directory manifest, lists it, serves its files (with
    ranges, chunks checked against the directory's chunk manifests)."""
    _mount, daemon = stack
    tree = tmp_path / "data"
    (tree / "sub").mkdir(parents=True)
    (tree / "README.txt").write_bytes(b"read me\n")
    big = random_bytes(3 * CHUNK_SIZE + 99, seed=11)
    (tree / "sub" / "big.bin").write_bytes(big)
    a_store = LocalStore(tmp_path / "a" / "storage")
    stored, _directory = a_store.put_dir(tree)
    plain_sha1 = a_store.put_bytes(b"not a directory").sha1
    a_store.close()
    a = daemon("a", "daemon", "--channel", "x", *LOCAL)
    b = daemon("b", "daemon", "--channel", "x", *LOCAL, "--http", "0", "--find-timeout", "1.5")
    a.wait_log("listening on")
    url = gateway_url(b)
    wait_until_connected(b, a)
    top = stored.sha1
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.get(f"/sha1dir/{top}")
        assert r.status_code == 200, r.text
        assert r.json() == {"files": {"README.txt": {"sha1": hashlib.sha1(b"read me\n").hexdigest(), "size": 8}},
                            "dirs": {"sub": {}}}
        assert "immutable" in r.headers["cache-control"]
        deep = (await client.get(f"/sha1dir/{top}?recursive=1")).json()
        assert deep["dirs"]["sub"]["files"]["big.bin"]["size"] == len(big)
        assert (await client.get(f"/sha1dir/{top}/sub/")).json()["files"].keys() == {"big.bin"}
        r = await client.get(f"/sha1dir/{top}/README.txt")
        assert r.content == b"read me\n" and r.headers["content-type"].startswith("text/plain")
        r = await client.get(f"/sha1dir/{top}/sub/big.bin", headers={"Range": f"bytes={CHUNK_SIZE - 3}-{CHUNK_SIZE + 2}"})
        assert r.status_code == 206 and r.content == big[CHUNK_SIZE - 3:CHUNK_SIZE + 3]
        assert r.headers["etag"] == f'"{hashlib.sha1(big).hexdigest()}"'
        assert (await client.get(f"/sha1dir/{top}/sub/big.bin")).content == big
        for path, status in [(f"/sha1dir/{top}/nope.txt", 404), (f"/sha1dir/{top}/README.txt/x", 404),
                             ("/sha1dir/xyz", 400), (f"/sha1dir/{'cd' * 20}", 404),
                             (f"/sha1dir/{plain_sha1}", 400)]:  # an object that is not a directory
            r = await client.get(path)
            assert r.status_code == status, (path, r.text)
            assert r.text.count("\n") == 1 and "Traceback" not in r.text
    assert "Traceback" not in b.read_log()


@pytest.mark.timeout(60)
def test_http_flag_errors_are_one_line(cli, tmp_path):
    for value in ("abc", "127.0.0.1:99999", "host:"):
        result = cli("daemon", "--channel", "x", "--listen", "127.0.0.1:0", "--http", value, check=False)
        assert result.returncode == 1, result
        assert result.stderr.decode().count("\n") == 1 and "--http" in result.stderr.decode()
    import socket

    with socket.socket() as taken:  # a port in use: a clear line, no traceback
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = cli("daemon", "--channel", "x", "--listen", "127.0.0.1:0", "--http", f"127.0.0.1:{port}", check=False)
    err = result.stderr.decode()
    assert result.returncode == 1 and "cannot serve HTTP" in err and "Traceback" not in err, err


@pytest.mark.timeout(60)
def test_mount_serves_http_too(stack):
    mount, _daemon = stack
    m = mount("m", "--channel", "x", *LOCAL, "--http", "127.0.0.1:0")
    m.path("store", "w.txt").write_bytes(b"written through the mount\n")
    sha1 = hashlib.sha1(b"written through the mount\n").hexdigest()
    url = gateway_url(m)
    r = httpx.get(f"{url}/sha1/{sha1}/w.txt", headers={"Range": "bytes=-6"}, timeout=30)
    assert r.status_code == 206 and r.content == b"mount\n"
    assert status_of(m)["daemon"]["mountpoint"] == str(m.mountpoint)


@pytest.mark.timeout(90)
def test_kachery_p2p_api_port_is_the_gateways_default_port(stack, cli, monkeypatch):
    """kachery-p2p's web tools talked HTTP to localhost:$KACHERY_P2P_API_PORT: a daemon serves its
    gateway there when --http is not given; a taken port is a warning (the daemon runs on), a bad
    value one line at the daemon's start."""
    import socket

    from .mounting import free_port

    mount, daemon = stack
    port = free_port()
    monkeypatch.setenv("KACHERY_P2P_API_PORT", str(port))  # the Daemon/Mount helpers copy os.environ
    d = daemon("d", "daemon", "--channel", "x", *LOCAL)
    assert gateway_url(d) == f"http://127.0.0.1:{port}"
    d.root.joinpath("note.txt").write_bytes(b"served on the seed's port\n")
    subprocess.run([KACHERYFS, "store", str(d.root / "note.txt")], env=d.env, check=True, capture_output=True,
                   timeout=60)
    sha1 = hashlib.sha1(b"served on the seed's port\n").hexdigest()
    assert httpx.get(f"http://127.0.0.1:{port}/sha1/{sha1}", timeout=30).content == b"served on the seed's port\n"
    with socket.socket() as taken:  # taken: the second daemon runs on, without a gateway, and says why
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        monkeypatch.setenv("KACHERY_P2P_API_PORT", str(taken.getsockname()[1]))
        m = mount("m", "--channel", "x", *LOCAL)
        deadline = time.monotonic() + 20
        while "running without the HTTP gateway" not in m.read_log():
            assert time.monotonic() < deadline, m.read_log()
            time.sleep(0.1)
        assert m.proc.poll() is None and status_of(m)["daemon"]["http"] is None
    result = subprocess.run([KACHERYFS, "daemon", "--channel", "x", *LOCAL],
                            env={**cli.env, "KACHERY_P2P_API_PORT": "abc"}, capture_output=True, timeout=60)
    err = result.stderr.decode()
    assert result.returncode == 1 and err.count("\n") == 1 and "KACHERY_P2P_API_PORT" in err, err
