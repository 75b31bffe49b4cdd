"""Cache control: the store's pins and LRU eviction, then `kacheryfs ls/pin/unpin/gc` and
`status --json` against real daemons with a small --cache-size."""

from __future__ import annotations

import json
import subprocess

import pytest

from kacheryfs.store import CHUNK_SIZE

from .conftest import random_bytes
from .mounting import KACHERYFS
from .test_mount_network import wait_until_connected

LOCAL = ["--listen", "127.0.0.1:0"]


def test_pinned_cached_copies_survive_eviction_others_go_lru(store):
    stored = store.put_bytes(random_bytes(1000, seed=1))  # stored here: never evicted
    a, b, c = (store.put_bytes(random_bytes(2 * CHUNK_SIZE, seed=s), pinned=False) for s in (2, 3, 4))
    assert a.manifest_sha1 is not None  # large enough to carry a manifest, which goes with it
    store.pin(a.sha1)
    store.index.touch(b.sha1)  # c is now the least recently used unpinned copy
    evicted = store.evict_cached(store.cached_total() - 1)
    assert evicted == [c.sha1, c.manifest_sha1]
    assert store.info(a.sha1) and store.info(b.sha1) and store.info(b.manifest_sha1)
    store.evict_cached(0)
    assert store.info(b.sha1) is None and store.info(b.manifest_sha1) is None
    assert store.info(a.sha1) is not None and store.info(a.manifest_sha1) is not None  # pinned
    assert store.info(stored.sha1) is not None
    listed = {o.sha1: o for o in store.listing()}
    assert listed[a.sha1].pinned and not listed[a.sha1].evictable and not listed[a.sha1].stored
    assert listed[a.manifest_sha1].manifest_of == a.sha1
    assert listed[stored.sha1].stored and not listed[stored.sha1].evictable
    assert store.unpin(a.sha1) and not store.unpin(a.sha1)
    store.evict_cached(0)
    assert store.info(a.sha1) is None and store.cached_total() == 0


def run(env, *args, check=True):
    result = subprocess.run([KACHERYFS, *args], env=env, capture_output=True, timeout=60)
    if check:
        assert result.returncode == 0, (args, result.stderr.decode())
    return result


def cached(env) -> dict[str, dict]:
    out = run(env, "ls", "--cached", "--json").stdout.decode().splitlines()
    return {o["sha1"]: o for o in map(json.loads, out) if o["manifest_of"] is None}


@pytest.mark.timeout(120)
def test_pin_unpin_gc_with_a_small_cache(stack):
    _mount, daemon = stack
    a = daemon("a", "daemon", "--channel", "x", *LOCAL)
    b = daemon("b", "daemon", "--channel", "x", *LOCAL, "--cache-size", "5M")
    a.wait_log("listening on")
    b.wait_log("listening on")
    paths = []
    for i in range(4):
        path = a.root / f"o{i}.bin"
        path.write_bytes(random_bytes(3 * CHUNK_SIZE // 2, seed=10 + i))  # 1.5 MiB each
        paths.append(str(path))
    uris = run(a.env, "store", *paths).stdout.decode().split()
    sha1s = [u[7:47] for u in uris]
    wait_until_connected(b, a)

    run(b.env, "pin", uris[0])  # fetched from A, then pinned
    run(b.env, "load", uris[1])
    run(b.env, "load", uris[2])
    run(b.env, "load", uris[1])  # used again: o2 is now the least recently used
    run(b.env, "load", uris[3])
    listing = cached(b.env)
    assert set(listing) == set(sha1s)
    assert listing[sha1s[0]]["pinned"] and not listing[sha1s[0]]["evictable"]
    assert all(listing[s]["evictable"] for s in sha1s[1:])
    stored_on_a = run(a.env, "ls", "--stored", "--json").stdout.decode().splitlines()
    assert {json.loads(line)["sha1"] for line in stored_on_a} >= set(sha1s)

    out = run(b.env, "gc").stdout.decode()  # to the daemon's --cache-size (5M): one must go
    assert "evicted" in out
    assert set(cached(b.env)) == {sha1s[0], sha1s[1], sha1s[3]}  # o2, least recently used, went

    result = run(b.env, "gc", "--to", "0")
    assert set(cached(b.env)) == {sha1s[0]}  # pinned survives
    assert "pinned" in result.stderr.decode()
    run(b.env, "unpin", uris[0])
    run(b.env, "gc", "--to", "0")
    assert cached(b.env) == {}
    assert "Traceback" not in b.read_log()

    status = json.loads(run(b.env, "status", "--json").stdout)
    assert status["daemon"]["cache_size"] == 5 << 20 and status["cached_bytes"] == 0
    assert status["daemon"]["peers"] and status["objects"] == 0
    run(b.env, "load", uris[3])  # gone from B, still on the channel
    assert cached(b.env).keys() == {sha1s[3]}


@pytest.mark.parametrize("args, message", [
    (("pin", "sha1://nothex/x"), "Not a valid kachery URI"),
    (("pin", "0" * 40), "not in the local store"),
    (("unpin", "0" * 40), "not held here"),
    (("gc", "--to", "lots"), "not a size"),
    (("gc", "--to", "-1G"), "not a size"),
    (("ls", "--cached", "--stored"), "exclude each other"),
    (("ls", "--bogus"), "No such option"),
    (("pin",), "Missing argument"),
    (("status", "--json", "extra"), "unexpected extra argument"),
])
def test_cache_commands_bad_input_is_one_line(cli, args, message):
    result = cli(*args, check=False)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_unpin_of_a_stored_object_explains(cli, tmp_path):
    (tmp_path / "f.txt").write_text("mine\n")
    uri = cli("store", str(tmp_path / "f.txt")).stdout.decode().strip()
    result = cli("unpin", uri, check=False)
    assert result.returncode == 1 and "was stored on this node" in result.stderr.decode()
    assert cli("pin", uri).stdout.decode().startswith("pinned ")
    assert json.loads(cli("ls", "--json").stdout)["pinned"] is True
    cli("unpin", uri)
    assert json.loads(cli("status", "--json").stdout)["daemon"] is None
