"""A copy fetched by one member keeps the channel supplied after the original holder leaves.

Two channels meet at one bootstrap: A stores, B reads it through its mount, C (another channel) is
refused, A leaves, and D, a newcomer, fetches from B. Real daemons, real mounts, 127.0.0.1 only.
This scenario once failed one run in six: B's last lazy read returned before B had installed the
completed object (and recorded its channels), so B briefly answered D "not here".
"""

import errno
import hashlib
import os
import subprocess
import time

import numpy as np
import pytest

from .test_mount_network import LOCAL, node_id_of, start_bootstrap, wait_until_connected


@pytest.mark.timeout(150)
def test_a_stores_b_reads_c_refused_a_leaves_d_fetches_from_b(stack):
    mount, daemon = stack
    _boot, port = start_bootstrap(daemon)
    via = ["--bootstrap", f"127.0.0.1:{port}"]
    a = mount("a", "--channel", "x", *LOCAL, *via)
    b = mount("b", "--channel", "x", *LOCAL, *via)
    c = mount("c", "--channel", "y", *LOCAL, *via, "--find-timeout", "2")

    arr = np.random.default_rng(1).standard_normal((1000, 1000))  # 8 MB: a lazily read download
    np.save(a.path("store", "arr.npy"), arr)
    a.path("store", "note.txt").write_text("hello from A\n")  # one chunk: fetched whole
    arr_sha1 = os.getxattr(a.path("store", "arr.npy"), "user.kachery.uri").decode()[7:47]
    note_sha1 = hashlib.sha1(b"hello from A\n").hexdigest()

    wait_until_connected(b, a)
    assert np.array_equal(np.load(b.path("sha1", arr_sha1)), arr)  # B reads it through (lazy, then bulk)
    assert b.path("sha1", note_sha1).read_bytes() == b"hello from A\n"
    # The read returned once the bytes were verified; B installs the completed download right after
    # (hash, fsync, rename). Before the fix the reader's close cancelled that and B never held it.
    deadline = time.monotonic() + 20
    while arr_sha1 not in os.listdir(b.path("sha1")):
        assert time.monotonic() < deadline, "B never installed the file it read through"
        time.sleep(0.05)

    with pytest.raises(OSError) as refused:
        open(c.path("sha1", note_sha1), "rb")
    assert refused.value.errno == errno.ENOENT
    assert node_id_of(c) not in a.read_log()

    a_id = node_id_of(a)
    a.stop()  # A leaves at once: D can only get the file from B
    d = mount("d", "--channel", "x", *LOCAL, *via)
    wait_until_connected(d, b)
    assert a_id not in d.read_log()
    out = subprocess.run(["cat", str(d.path("sha1", note_sha1))], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr + d.read_log().encode()
    assert out.stdout == b"hello from A\n"
    assert np.array_equal(np.load(d.path("sha1", arr_sha1)), arr), d.read_log()
    assert node_id_of(c) not in b.read_log()
    for m in (b, c, d):
        assert m.proc.poll() is None


async def test_last_reader_leaving_a_complete_download_lets_it_install(cluster):
    """In-process and deterministic: the reader reads every chunk and closes at once, before the
    download task has seen that the object is complete. The object must still be installed and
    served on its channel (it was cancelled and left in partial/ before the fix)."""
    from kacheryfs.net.fetcher import NetworkFetcher
    from kacheryfs.store import CHUNK_SIZE

    from .conftest import random_bytes
    from .test_net import addr_of, chans, wait_for

    a = await cluster.node("a", chans("x"))
    b = await cluster.node("b", chans("x"))
    await b.connect(*addr_of(a))
    fetcher = NetworkFetcher(b)
    # trio wakes the reader and the download task in a random order: several objects make sure
    # the reader closes first at least once
    for seed in range(8):
        data = random_bytes(3 * CHUNK_SIZE + 11, seed=seed)
        obj = a.store.put_bytes(data)
        reader = await fetcher.open_remote(obj.sha1)
        assert await reader.read(0, len(data)) == data
        reader.close()
        await wait_for(lambda: b.store.info(obj.sha1) is not None, timeout=5)
        assert b.store.read_bytes(obj.sha1) == data
        assert b.store.channels_of(obj.sha1) == set(chans("x"))
        await wait_for(lambda: obj.sha1 not in fetcher._downloads, timeout=5)  # dropped once installed
    assert not list((b.store.root / "partial").glob("*.part"))


@pytest.mark.timeout(120)
def test_a_provider_back_from_kill9_is_found_at_once(stack):
    """A holder killed with SIGKILL comes back on a new port; the first read at B after A's mount
    is up must find it (A dials B as soon as it starts, whatever B's backoff towards A's old port)."""
    mount, _daemon = stack
    a = mount("a", "--channel", "x", *LOCAL)
    b = mount("b", "--channel", "x", *LOCAL, "--find-timeout", "5")
    files = [os.urandom(3_000_000) for _ in range(2)]
    for i, data in enumerate(files):
        a.path("store", f"f{i}.bin").write_bytes(data)
    wait_until_connected(b, a)
    for data in files:  # a file B has not read yet each time: B must find A again
        a.kill9()
        time.sleep(3)  # B keeps dialling A's old port meanwhile, and backs off
        a.start("--channel", "x", *LOCAL)
        assert b.path("sha1", hashlib.sha1(data).hexdigest()).read_bytes() == data, b.read_log()[-3000:]
