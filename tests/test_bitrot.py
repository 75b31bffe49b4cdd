"""Bit rot with real daemons and mounts on 127.0.0.1: a provider whose copy rotted (a lying peer
made from a real one), and a node that finds rot in its own store."""

import errno
import hashlib
import os
import subprocess
import time

import pytest

from .conftest import random_bytes
from .mounting import KACHERYFS, Daemon
from .test_mount_network import LOCAL, node_id_of, wait_until_connected


def object_path(storage, sha1: str):
    return storage / "sha1" / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1


def flip_100_bytes(path) -> None:
    """100 bytes spread over the whole object, so every chunk of it is wrong."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for i in range(100):
            f.seek(i * size // 100)
            byte = f.read(1)
            f.seek(i * size // 100)
            f.write(bytes([byte[0] ^ 0x5A]))


def assert_store_consistent(storage) -> None:
    """Every object file hashes to its name; nothing half-downloaded claims to be complete."""
    for dirpath, _dirs, files in os.walk(storage / "sha1"):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                assert hashlib.sha1(f.read()).hexdigest() == name, f"{name} in {storage} is corrupt"


def cli(node, *args, timeout=60):
    return subprocess.run([KACHERYFS, *args], env=node.env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(240)
def test_rotten_provider_and_rotten_own_store(stack, tmp_path):
    mount, daemon = stack
    files = {name: random_bytes(n, seed=i) for i, (name, n) in enumerate(
        [("one.bin", 6_000_000), ("two.bin", 5_000_000), ("small.bin", 300_000), ("only-a.bin", 3_000_000)])}
    sha1 = {name: hashlib.sha1(data).hexdigest() for name, data in files.items()}
    # C holds every file but only-a.bin, stored before its daemon starts
    c_root = tmp_path / "c"
    for name, data in files.items():
        if name != "only-a.bin":
            (tmp_path / name).write_bytes(data)
            subprocess.run([KACHERYFS, "store", str(tmp_path / name)], env=Daemon(c_root).env, check=True,
                           capture_output=True)
    a = mount("a", "--channel", "x", *LOCAL)
    for name, data in files.items():
        a.path("store", name).write_bytes(data)
        assert a.path("sha1", sha1[name]).read_bytes() == data  # A checks its chunks once, here
    uris = {name: os.getxattr(a.path("store", name), "user.kachery.uri").decode() for name in files}
    for name in files:  # now the disk rots under A, which has already checked these chunks:
        flip_100_bytes(object_path(a.storage, sha1[name]))  # A serves them as they are (a lying peer)
    c = daemon("c", "daemon", "--channel", "x", *LOCAL)
    c.wait_log("listening on")
    b = mount("b", "--channel", "x", *LOCAL, "--find-timeout", "2")
    wait_until_connected(b, a)
    wait_until_connected(b, c)

    # B reads through its mount and with `load`: the right bytes (from C) or a clear error
    assert b.path("sha1", sha1["one.bin"]).read_bytes() == files["one.bin"]
    assert b.path("sha1", sha1["small.bin"]).read_bytes() == files["small.bin"]
    dest = tmp_path / "two-from-b.bin"
    loaded = cli(b, "load", uris["two.bin"], "--dest", str(dest))
    assert loaded.returncode == 0, loaded.stderr
    assert dest.read_bytes() == files["two.bin"]
    with pytest.raises(OSError) as failed:  # only A holds it, and A's copy is rotten
        b.path("sha1", sha1["only-a.bin"]).read_bytes()
    assert failed.value.errno in (errno.EIO, errno.ENOENT)
    loaded = cli(b, "load", uris["only-a.bin"], "--dest", str(tmp_path / "never.bin"))
    assert loaded.returncode == 1 and len(loaded.stderr.strip().splitlines()) == 1, loaded.stderr
    assert "Traceback" not in loaded.stderr and not (tmp_path / "never.bin").exists()
    assert "corrupt chunk" in b.read_log() and node_id_of(a) in b.read_log()
    assert_store_consistent(b.storage)
    assert not os.path.exists(object_path(b.storage, sha1["only-a.bin"]))

    # A restarts (it forgets what it checked) and reads its own rotten file: EIO, quarantine, and
    # a good copy comes back from C, pinned as before.
    a.stop()
    a.start("--channel", "x", *LOCAL)
    wait_until_connected(a, c)
    with pytest.raises(OSError) as failed:
        a.path("sha1", sha1["one.bin"]).read_bytes()
    assert failed.value.errno == errno.EIO
    assert (a.storage / "quarantine" / sha1["one.bin"]).exists()
    deadline = time.monotonic() + 30  # the log line comes after the quarantined copy is removed
    while "restored quarantined object " + sha1["one.bin"] not in a.read_log():
        assert time.monotonic() < deadline, a.read_log()
        time.sleep(0.1)
    assert not (a.storage / "quarantine" / sha1["one.bin"]).exists()
    assert a.path("store", "one.bin").read_bytes() == files["one.bin"]

    # A scrub finds the rot nobody has read since; --repair fetches what a peer still has.
    checked = cli(a, "verify")
    assert checked.returncode == 1 and "Traceback" not in checked.stderr, checked.stderr
    corrupt = {line.split()[1] for line in checked.stdout.splitlines() if line.startswith("corrupt:")}
    assert corrupt == {sha1["two.bin"], sha1["small.bin"], sha1["only-a.bin"]}, checked.stdout
    repaired = cli(a, "verify", "--repair")
    assert repaired.returncode == 1, repaired.stdout + repaired.stderr  # only-a.bin is lost
    assert f"restored: {sha1['two.bin']}" in repaired.stdout and f"restored: {sha1['small.bin']}" in repaired.stdout
    assert f"lost:     {sha1['only-a.bin']}" in repaired.stdout
    assert "could not be fetched from any peer" in repaired.stderr
    assert cli(a, "verify").returncode == 0
    assert_store_consistent(a.storage)
    assert a.path("store", "two.bin").read_bytes() == files["two.bin"]
    status = cli(a, "status")
    for m in (a, b):
        assert m.proc.poll() is None
    assert status.returncode == 0
