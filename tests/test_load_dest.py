"""`kacheryfs load --dest` and the download pipeline with real daemons on 127.0.0.1: the daemon fills
the user's file as it fetches (each verified chunk written into it from the buffer it arrived in,
while the store's copy is written), the user's file is their own (changing it never changes the
store's copy), and a daemon killed between verifying chunks and installing the object resumes."""

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kacheryfs.api.client import daemon_load_into
from kacheryfs.errors import BadDestination
from kacheryfs.store import CHUNK_SIZE

from .conftest import random_bytes
from .mounting import KACHERYFS
from .test_mount_network import LOCAL, wait_until_connected


def cli(node, *args, timeout=120):
    return subprocess.run([KACHERYFS, *args], env=node.env, capture_output=True, text=True, timeout=timeout)


def store_on(node, tmp_path: Path, data: bytes, name: str) -> str:
    src = tmp_path / name
    src.write_bytes(data)
    out = cli(node, "store", str(src))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def holder_and_reader(stack, tmp_path: Path, data: bytes):
    """Daemon A holding ``data`` and daemon B connected to it, one channel: (a, b, the URI)."""
    _mount, daemon = stack
    a = daemon("a", "daemon", "--channel", "x", *LOCAL)
    a.wait_log("listening on")
    uri = store_on(a, tmp_path, data, "src.bin")
    b = daemon("b", "daemon", "--channel", "x", *LOCAL)
    b.wait_log("listening on")
    wait_until_connected(b, a)
    return a, b, uri


def sha1_of(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.mark.timeout(180)
def test_load_dest_is_filled_by_the_daemon_and_stays_the_users_own(stack, tmp_path):
    data = random_bytes(9 * CHUNK_SIZE + 12345, seed=71)
    sha1 = hashlib.sha1(data).hexdigest()
    a, b, uri = holder_and_reader(stack, tmp_path, data)

    # The local API: B's daemon says it filled the file itself (an older daemon would not).
    dest = tmp_path / "dest.bin"
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        path, filled = daemon_load_into(Path(b.env["KACHERY_P2P_CONFIG_DIR"]), uri, fd)
    finally:
        os.close(fd)
    assert filled and dest.read_bytes() == data
    path = Path(path)
    assert os.stat(dest).st_ino != os.stat(path).st_ino  # a file of its own, not a link to the store

    # The user changes their copy every way they can: the store's copy does not change.
    os.chmod(dest, 0o644)
    with open(dest, "r+b") as f:
        f.seek(CHUNK_SIZE + 5)
        f.write(b"changed by the user")
        f.truncate(3 * CHUNK_SIZE)
    with open(dest, "ab") as f:
        f.write(b"appended")
    assert sha1_of(path) == sha1
    verified = cli(b, "verify")
    assert verified.returncode == 0 and "corrupt" not in verified.stdout.lower(), verified.stdout + verified.stderr

    # The CLI, for an object held now: a fresh, right copy; changing it leaves the object as well.
    again = tmp_path / "again.bin"
    out = cli(b, "load", uri, "--dest", str(again))
    assert out.returncode == 0, out.stderr
    assert again.read_bytes() == data and os.stat(again).st_ino != os.stat(path).st_ino
    with open(again, "r+b") as f:
        f.write(b"x" * 100)
    assert sha1_of(path) == sha1

    # A destination that is the store's copy (a hard link outside the store, or a path inside it)
    # is refused before anything is truncated; the object stays whole.
    os.chmod(path, 0o644)  # root could write it anyway: the check is not the file mode
    link = tmp_path / "link.bin"
    os.link(path, link)
    for target in (link, path):
        out = cli(b, "load", uri, "--dest", str(target))
        assert out.returncode != 0 and "destination" in out.stderr.lower() and "Traceback" not in out.stderr, out.stderr
        assert sha1_of(path) == sha1
    assert link.exists()
    link.unlink()

    # The daemon takes only an empty regular file open for writing at any offset.
    config_dir = Path(b.env["KACHERY_P2P_CONFIG_DIR"])
    other = random_bytes(3 * CHUNK_SIZE, seed=73)
    other_uri = store_on(a, tmp_path, other, "other.bin")
    for name, flags, content in (("append.bin", os.O_WRONLY | os.O_APPEND, b""),
                                 ("readonly.bin", os.O_RDONLY, b""),
                                 ("full.bin", os.O_WRONLY, b"not empty")):
        target = tmp_path / name
        target.write_bytes(content)
        fd = os.open(target, flags)
        try:
            with pytest.raises(BadDestination):
                daemon_load_into(config_dir, other_uri, fd)
        finally:
            os.close(fd)
        assert target.read_bytes() == content
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(BadDestination):
            daemon_load_into(config_dir, other_uri, fd)
    finally:
        os.close(fd)


@pytest.mark.timeout(180)
def test_load_link_makes_dest_the_stores_one_read_only_copy(stack, tmp_path):
    """``--link``: fetched or held, dest is a hard link to the store's copy (on disk once) and
    replaces what dest was; on another filesystem it is a copy, with a note saying so."""
    data = random_bytes(5 * CHUNK_SIZE + 777, seed=75)
    sha1 = hashlib.sha1(data).hexdigest()
    a, b, uri = holder_and_reader(stack, tmp_path, data)

    fetched = tmp_path / "fetched.bin"
    fetched.write_bytes(b"an older file of that name")
    out = cli(b, "load", uri, "--dest", str(fetched), "--link")
    assert out.returncode == 0 and out.stdout.strip() == str(fetched), out.stderr
    path = Path(cli(b, "load", uri).stdout.strip())  # the store's copy (held now)
    assert os.stat(fetched).st_ino == os.stat(path).st_ino and os.stat(path).st_nlink == 2
    assert fetched.read_bytes() == data and os.stat(fetched).st_mode & 0o777 == 0o444
    assert not list(tmp_path.glob(".fetched.bin.kacheryfs-*"))  # no temporary name left

    held = tmp_path / "held.bin"  # held here now: linked without asking the daemon
    out = cli(b, "load", uri, "--dest", str(held), "--link")
    assert out.returncode == 0 and os.stat(held).st_ino == os.stat(path).st_ino, out.stderr

    out = cli(b, "load", uri, "--link")
    assert out.returncode != 0 and "--link needs --dest" in out.stderr
    out = cli(b, "load", uri, "--dest", str(tmp_path), "--link")
    assert out.returncode != 0 and "directory" in out.stderr and "Traceback" not in out.stderr, out.stderr

    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(path).st_dev:
        other_fs = shm / f"kacheryfs-test-{os.getpid()}.bin"
        try:
            out = cli(b, "load", uri, "--dest", str(other_fs), "--link")
            assert out.returncode == 0 and "copied, not linked" in out.stderr, out.stderr
            assert other_fs.read_bytes() == data and os.stat(other_fs).st_ino != os.stat(path).st_ino
        finally:
            other_fs.unlink(missing_ok=True)
    assert sha1_of(path) == sha1


@pytest.mark.timeout(240)
def test_daemon_killed_between_verify_and_install_resumes_with_the_right_bytes(stack, tmp_path):
    """kill -9 of the fetching daemon while chunks are verified and written but the object is not
    installed: the restarted daemon keeps the chunks that re-verify, fetches the rest, and installs
    exactly the right object; the interrupted `load --dest` leaves no file behind."""
    _mount, daemon = stack
    data = random_bytes(40 * CHUNK_SIZE, seed=72)
    a = daemon("a", "daemon", "--channel", "x", *LOCAL)
    a.env["KACHERYFS_TEST_SERVE_RATE"] = str(8 * CHUNK_SIZE)  # ~5 s for the object: time to kill
    a.stop()
    a.start()
    a.wait_log("listening on")
    uri = store_on(a, tmp_path, data, "big.bin")
    sha1 = hashlib.sha1(data).hexdigest()
    b = daemon("b", "daemon", "--channel", "x", *LOCAL)
    b.wait_log("listening on")
    wait_until_connected(b, a)

    dest = tmp_path / "dest.bin"
    load = subprocess.Popen([KACHERYFS, "load", uri, "--dest", str(dest)], env=b.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    bitmap = Path(b.env["KACHERY_STORAGE_DIR"]) / "partial" / f"{sha1}.bitmap"
    deadline = time.monotonic() + 60
    while True:  # until B holds at least 8 verified chunks, not all
        held = 0
        if bitmap.exists():
            raw = bitmap.read_bytes()
            held = int.from_bytes(raw[raw.find(b"\n") + 1:], "little").bit_count()
        if held >= 8:
            break
        assert time.monotonic() < deadline and load.poll() is None, b.read_log()
        time.sleep(0.02)
    os.killpg(b.proc.pid, signal.SIGKILL)
    b.proc.wait(timeout=10)
    _out, err = load.communicate(timeout=60)
    assert load.returncode == 1 and "Traceback" not in err, err
    assert not dest.exists()  # a failed load leaves no half-written file
    assert not (Path(b.env["KACHERY_STORAGE_DIR"]) / "sha1" / sha1[:2] / sha1[2:4] / sha1[4:6] / sha1).exists()

    before = b.read_log().count("shared channels: 1")
    b.start()  # the same storage: the partial download is found again
    deadline = time.monotonic() + 30
    while b.read_log().count("shared channels: 1") <= before or cli(b, "status").returncode != 0:
        assert time.monotonic() < deadline and b.proc.poll() is None, b.read_log()  # this run: API, session
        time.sleep(0.05)
    out = cli(b, "load", uri, "--dest", str(dest))
    assert out.returncode == 0, out.stderr + b.read_log()
    assert dest.read_bytes() == data
    fetched = re.findall(r"fetched [0-9a-f]+: \d+ bytes .*chunks from each: (\S+):(\d+)", b.read_log())
    assert fetched and int(fetched[-1][1]) < 40, fetched  # resumed: the kept chunks were not fetched again
    assert cli(b, "verify").returncode == 0
