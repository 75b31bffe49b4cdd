"""Several real daemons with real mounts, talking over 127.0.0.1."""

import errno
import hashlib
import os
import re
import subprocess
import time

import numpy as np
import pytest

from .mounting import Daemon, free_port, fuse_mounted

LOCAL = ["--listen", "127.0.0.1:0"]


def wait_until_connected(m, other, timeout: float = 20) -> None:
    """Until ``m``'s log shows a session with ``other`` (found by bootstrap, discovery or relay)."""
    deadline = time.monotonic() + timeout
    while node_id_of(other) not in m.read_log():
        assert time.monotonic() < deadline, m.read_log()
        time.sleep(0.1)


def node_id_of(m) -> str:
    text = m.read_log()
    found = re.search(r"node ([0-9a-f]{12}) (listening|is)", text)
    assert found, text
    return found.group(1)


def start_bootstrap(daemon):
    """A `kacheryfs bootstrap` on a free loopback port, up and listening: (daemon, port)."""
    port = free_port()
    boot = daemon("boot", "bootstrap", "--listen", f"127.0.0.1:{port}")
    boot.wait_log("listening on")
    return boot, port


@pytest.mark.timeout(120)
def test_channel_members_read_through_their_mounts(stack):
    mount, daemon = stack
    boot, port = start_bootstrap(daemon)
    via = ["--bootstrap", f"127.0.0.1:{port}"]
    a = mount("a", "--channel", "x", *LOCAL, *via)
    b = mount("b", "--channel", "x", *LOCAL, *via)
    c = mount("c", "--channel", "y", *LOCAL, *via, "--find-timeout", "2")

    arr = np.random.default_rng(0).standard_normal((1000, 1000))  # 8 MB: several chunks
    np.save(a.path("store", "arr.npy"), arr)
    a.path("store", "note.txt").write_text("hello from A\n")
    arr_sha1 = os.getxattr(a.path("store", "arr.npy"), "user.kachery.uri").decode()[7:47]
    note_sha1 = hashlib.sha1(b"hello from A\n").hexdigest()

    wait_until_connected(b, a)
    out = subprocess.run(["cat", str(b.path("sha1", note_sha1))], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello from A\n"
    assert np.array_equal(np.load(b.path("sha1", arr_sha1)), arr)
    assert np.array_equal(np.load(b.path("sha1", arr_sha1), mmap_mode="r")[10:20], arr[10:20])

    start = time.monotonic()
    with pytest.raises(OSError) as info:
        open(c.path("sha1", note_sha1), "rb")
    assert info.value.errno == errno.ENOENT
    assert time.monotonic() - start < 10
    c_id = node_id_of(c)
    assert c_id not in a.read_log()  # A never even talked to C, let alone sent it bytes
    for m in (a, b, c):
        assert fuse_mounted(m.mountpoint) and m.proc.poll() is None


@pytest.mark.timeout(120)
def test_same_machine_discovery_without_bootstrap(stack):
    mount, _daemon = stack
    a = mount("a", "--channel", "x", *LOCAL)
    b = mount("b", "--channel", "x", *LOCAL)
    c = mount("c", "--channel", "y", *LOCAL, "--find-timeout", "2")
    a.path("store", "data.bin").write_bytes(b"\x01\x02" * 3_000_000)  # 6 MB
    sha1 = hashlib.sha1(b"\x01\x02" * 3_000_000).hexdigest()
    wait_until_connected(b, a)
    assert b.path("sha1", sha1).read_bytes() == b"\x01\x02" * 3_000_000
    with pytest.raises(OSError) as info:
        c.path("sha1", sha1).stat()
    assert info.value.errno == errno.ENOENT
    assert node_id_of(c) not in a.read_log()


@pytest.mark.timeout(120)
def test_relay_through_bootstrap_for_unreachable_nodes(stack):
    mount, daemon = stack
    boot, port = start_bootstrap(daemon)
    via = ["--bootstrap", f"127.0.0.1:{port}", "--listen", "none"]
    a = mount("a", "--channel", "x", *via)
    b = mount("b", "--channel", "x", *via)
    payload = np.arange(2_000_000, dtype=np.int64)  # 16 MB
    np.save(a.path("store", "r.npy"), payload)
    sha1 = os.getxattr(a.path("store", "r.npy"), "user.kachery.uri").decode()[7:47]
    boot.wait_log("relaying")
    wait_until_connected(b, a)
    assert np.array_equal(np.load(b.path("sha1", sha1)), payload)
    assert "relay:" in b.read_log()


def fetched_bytes(m) -> int:
    import json

    return json.loads(os.getxattr(m.mountpoint, "user.kachery.stats"))["fetched_bytes"]


@pytest.mark.timeout(180)
def test_lazy_mmap_slice_fetches_only_what_it_touches(stack):
    from kacheryfs.store import CHUNK_SIZE

    mount, _daemon = stack
    a = mount("a", "--channel", "x", *LOCAL)
    b = mount("b", "--channel", "x", *LOCAL)
    n = 200_000_000 // 8
    arr = np.arange(n, dtype=np.float64)
    np.save(a.path("store", "big.npy"), arr)
    sha1 = os.getxattr(a.path("store", "big.npy"), "user.kachery.uri").decode()[7:47]
    wait_until_connected(b, a)
    before = fetched_bytes(b)
    mapped = np.load(b.path("sha1", sha1), mmap_mode="r")
    i = 17_000_000  # ~136 MB into the file
    assert np.array_equal(mapped[i:i + 1000], arr[i:i + 1000])
    del mapped
    fetched = fetched_bytes(b) - before
    manifest_bytes = 200 * 43 + 200  # the manifest object itself
    # chunk 0 (the .npy header), the chunk(s) under the slice, and the kernel's read-ahead
    assert fetched <= 5 * CHUNK_SIZE + manifest_bytes, fetched
    assert fetched >= 2 * CHUNK_SIZE
    # a sequential read of the whole file still gives identical bytes (read-ahead grows to bulk)
    import hashlib

    h = hashlib.sha1()
    with open(b.path("sha1", sha1), "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    assert h.hexdigest() == sha1


@pytest.mark.timeout(120)
def test_cli_and_python_fetch_through_the_daemon(stack, monkeypatch):
    from .mounting import KACHERYFS

    mount, daemon = stack
    a = mount("a", "--channel", "x", *LOCAL)
    b = daemon("b", "daemon", "--channel", "x", *LOCAL)  # a node without a mount
    b.wait_log("listening on")
    arr = np.random.default_rng(5).standard_normal((700, 1000))  # 5.6 MB
    np.save(a.path("store", "w.npy"), arr)
    uri = os.getxattr(a.path("store", "w.npy"), "user.kachery.uri").decode()
    a.path("store", "t.txt").write_text("text via the daemon")
    text_uri = os.getxattr(a.path("store", "t.txt"), "user.kachery.uri").decode()
    wait_until_connected(b, a)

    def cli(*args):
        return subprocess.run([KACHERYFS, *args], env=b.env, capture_output=True, text=True, timeout=60)

    found = cli("find", uri)
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith(node_id_of(a)) or node_id_of(a) in found.stdout
    dest = b.root / "w.npy"
    loaded = cli("load", uri, "--dest", str(dest))
    assert loaded.returncode == 0, loaded.stderr
    assert np.array_equal(np.load(dest), arr)
    status = cli("status")
    assert "node id:" in status.stdout and node_id_of(a) in status.stdout and "fetched:" in status.stdout
    missing = cli("load", "sha1://" + "0" * 40 + "/nothing")
    assert missing.returncode == 1 and "not found on any peer" in missing.stderr
    assert "Traceback" not in missing.stderr

    import kacheryfs as kfs

    monkeypatch.setenv("KACHERY_STORAGE_DIR", b.env["KACHERY_STORAGE_DIR"])
    monkeypatch.setenv("KACHERY_P2P_CONFIG_DIR", b.env["KACHERY_P2P_CONFIG_DIR"])
    assert kfs.load_text(text_uri) == "text via the daemon"
    assert np.array_equal(kfs.load_npy(uri, mmap_mode="r")[3:5], arr[3:5])


@pytest.mark.timeout(240)
def test_provider_killed_mid_transfer_of_200mb(stack, tmp_path):
    """Real daemons killed with SIGKILL: the download finishes from the other provider; with no
    other provider it fails clearly, then resumes from its verified chunks when the provider returns."""
    from .conftest import write_random_file
    from .mounting import KACHERYFS

    _mount, daemon = stack
    src = tmp_path / "big.bin"
    write_random_file(src, 200 * 1024 * 1024, seed=11)
    providers = {}
    for name in ("p1", "p2"):
        d = Daemon(tmp_path / name, "daemon")  # just to get the env for `kacheryfs store`
        out = subprocess.run([KACHERYFS, "store", str(src)], env=d.env, capture_output=True, text=True, check=True)
        uri = out.stdout.strip()
        providers[name] = daemon(name, "daemon", "--channel", "x", *LOCAL)
    reader = daemon("reader", "daemon", "--channel", "x", *LOCAL)
    for d in (*providers.values(), reader):
        d.wait_log("listening on")

    def load(dest):
        return subprocess.Popen([KACHERYFS, "load", uri, "--dest", str(dest)], env=reader.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_partial(min_bytes):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            parts = list((reader.root / "storage" / "partial").glob("*.part"))
            if parts:
                bitmap = parts[0].with_suffix(".bitmap")
                if bitmap.exists() and parts[0].stat().st_blocks * 512 >= min_bytes:
                    return
            time.sleep(0.02)
        raise AssertionError("the download never got going")

    deadline = time.monotonic() + 20
    while reader.read_log().count("connected <peer") < 2:
        assert time.monotonic() < deadline, reader.read_log()
        time.sleep(0.1)
    first = load(tmp_path / "out1.bin")
    wait_partial(20 << 20)
    providers["p1"].proc.kill()  # SIGKILL, mid-transfer
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert sha1_of(tmp_path / "out1.bin") == uri[7:47]

    # Now with one provider only: p2 dies mid-way, the load fails clearly, chunks are kept.
    reader.stop()
    reader = daemon("reader2", "daemon", "--channel", "x", *LOCAL)  # a fresh node
    reader.wait_log("connected <peer")
    second = load(tmp_path / "out2.bin")
    wait_partial(40 << 20)
    providers["p2"].proc.kill()
    out, err = second.communicate(timeout=120)
    assert second.returncode == 1 and "Traceback" not in err
    assert "kept for resuming" in err or "not found" in err or "failed" in err, err
    kept = list((reader.root / "storage" / "partial").glob("*.part"))
    assert kept and kept[0].stat().st_blocks * 512 >= 40 << 20
    p2 = Daemon(providers["p2"].root, "daemon", "--channel", "x", *LOCAL)  # the provider returns
    p2.log_path = providers["p2"].root / "daemon-again.log"
    p2.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            third = load(tmp_path / "out2.bin")
            out, err = third.communicate(timeout=120)
            if third.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert third.returncode == 0, err
        assert sha1_of(tmp_path / "out2.bin") == uri[7:47]
        served = re.findall(r"fetched \w+: \d+ bytes", reader.read_log())
        assert served, reader.read_log()
    finally:
        p2.stop()


def sha1_of(path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()
