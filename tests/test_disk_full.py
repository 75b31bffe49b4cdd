"""A full disk during fetches: B's storage is a 64 MiB tmpfs this test mounts; A serves files of
10, 40 and 150 MB. Real daemons and a real mount on 127.0.0.1."""

import errno
import hashlib
import os
import secrets
import subprocess

import pytest

from .conftest import write_random_file
from .mounting import KACHERYFS, Daemon
from .test_bitrot import assert_store_consistent, cli
from .test_mount_network import LOCAL, wait_until_connected


@pytest.fixture
def small_disk(tmp_path):
    """tmp_path/b/storage is a 64 MiB tmpfs (unmounted after the test, even on failure)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / "b" / "storage"
    path.mkdir(parents=True)
    tag = f"kfs-test-{secrets.token_hex(3)}"  # names the mount, so the cleanup only touches ours
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", tag, str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.timeout(240)
def test_disk_full_during_fetches(small_disk, stack, tmp_path):
    mount, daemon = stack
    a_env = Daemon(tmp_path / "a").env
    uris, sha1 = {}, {}
    for seed, (name, size) in enumerate((("c1", 10), ("c2", 10), ("c3", 10), ("forty", 40), ("big", 150))):
        path = tmp_path / f"{name}.bin"
        sha1[name] = write_random_file(path, size * 1_000_000, seed=40 + seed)
        out = subprocess.run([KACHERYFS, "store", str(path)], env=a_env, check=True, capture_output=True, text=True)
        uris[name] = out.stdout.strip()
    daemon("a", "daemon", "--channel", "x", *LOCAL).wait_log("listening on")
    b = mount("b", "--channel", "x", *LOCAL)
    assert b.storage == small_disk
    own = os.urandom(5_000_000)
    b.path("store", "own.bin").write_bytes(own)  # stored on B: never evicted
    a_log = tmp_path / "a" / "daemon.log"
    wait_until_connected(b, type("A", (), {"read_log": lambda self: a_log.read_text()})())

    for name in ("c1", "c2", "c3"):  # 30 MB of cached copies
        got = cli(b, "load", uris[name])
        assert got.returncode == 0, got.stderr
    # 40 MB do not fit in what is free, but do once cached copies (least recently used) go
    dest = tmp_path / "forty-out.bin"
    got = cli(b, "load", uris["forty"], "--dest", str(dest))
    assert got.returncode == 0, got.stderr + b.read_log()
    assert hashlib.sha1(dest.read_bytes()).hexdigest() == sha1["forty"]
    held = [n for n in ("c1", "c2", "c3") if (b.storage / "sha1" / sha1[n][:2]).exists()
            and any(p.name == sha1[n] for p in (b.storage / "sha1").rglob(sha1[n]))]
    assert "c1" not in held and "c3" in held, held  # the oldest went first, no more than needed

    # 150 MB cannot fit at all: the reader through the mount gets ENOSPC (or EIO), not a hang
    read = subprocess.run(["cat", str(b.path("sha1", sha1["big"]))], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    assert read.returncode != 0
    assert "No space left on device" in read.stderr or "Input/output error" in read.stderr, read.stderr
    # and `load` says so in one line, at once
    got = cli(b, "load", uris["big"], "--dest", str(tmp_path / "never.bin"))
    assert got.returncode == 1 and len(got.stderr.strip().splitlines()) == 1, got.stderr
    assert "No space left" in got.stderr and "Traceback" not in got.stderr

    # B is alive and still serves: its own file reaches C, its mount takes writes, nothing is corrupt
    assert b.proc.poll() is None
    assert not list((b.storage / "partial").glob("*.part")), "a partial that cannot complete was kept"
    assert b.path("store", "own.bin").read_bytes() == own
    b.path("store", "after.txt").write_text("still writable\n")
    assert b.path("store", "after.txt").read_text() == "still writable\n"
    c = daemon("c", "daemon", "--channel", "x", *LOCAL)
    c.wait_log("listening on")
    own_uri = os.getxattr(b.path("store", "own.bin"), "user.kachery.uri").decode()
    got = cli(c, "load", own_uri, "--dest", str(tmp_path / "own-at-c.bin"))
    assert got.returncode == 0, got.stderr + c.read_log()
    assert (tmp_path / "own-at-c.bin").read_bytes() == own
    assert_store_consistent(b.storage)
    checked = cli(b, "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert b.proc.poll() is None
