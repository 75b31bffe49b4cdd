"""Where ``load --dest`` and the Python ``load_file(dest=)`` write, with real daemons and mounts on
127.0.0.1: the Python calls hand the open destination to the daemon (it writes every byte, once),
with the CLI's checks and errors; a destination inside the loading daemon's own mount is copied
into store/ by the client (the daemon never writes through its own FUSE mount), refused elsewhere
in that mount and refused by the daemon if handed to it anyway; another node's mount is an
ordinary destination. Every step is bounded: a daemon waiting on itself would hang, not fail."""

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from kacheryfs.errors import BadDestination, KacheryError
from kacheryfs.store import CHUNK_SIZE

from .conftest import random_bytes
from .mounting import KACHERYFS
from .test_load_dest import store_on
from .test_mount_network import LOCAL, wait_until_connected


def written_by_this_process() -> tuple[int, int]:
    """(bytes read, bytes written) by this process's system calls so far (/proc/self/io)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


def use_node(monkeypatch, node) -> None:
    """Python calls in this process act as ``node``'s scripts would (its dirs, its daemon)."""
    for name in ("KACHERY_STORAGE_DIR", "KACHERY_P2P_CONFIG_DIR", "KACHERYFS_RUNTIME_DIR"):
        monkeypatch.setenv(name, node.env[name])


def bounded(args: list[str], env: dict, mounts, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``args``; past ``timeout``, abort the FUSE connections of ``mounts`` (a process waiting
    on a deadlocked FUSE daemon cannot even be killed: a flush on close() waits uninterruptibly),
    kill it and fail. A daemon waiting on itself is a failed test, not a hung suite."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for m in mounts:  # umount -f on FUSE aborts the connection: every request waiting fails
            subprocess.run(["umount", "-f", str(m.mountpoint)], capture_output=True, timeout=10)
        proc.kill()
        proc.communicate(timeout=10)
        pytest.fail(f"{args} hung for {timeout} s")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


PYTHON_DEST = """
import os, sys
from pathlib import Path
import kacheryfs as kfs
from kacheryfs.api.client import daemon_load_into
from kacheryfs.errors import KacheryError
how, uri, dest = sys.argv[1:]
try:
    if how == "api":
        print(kfs.load_file(uri, dest=dest, progress=False))
    else:  # the open file handed to the daemon directly, as a client other than ours could
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            daemon_load_into(Path(os.environ["KACHERY_P2P_CONFIG_DIR"]), uri, fd)
        finally:
            os.close(fd)
        print("loaded")
except KacheryError as exc:
    print(type(exc).__name__, exc)
"""


def object_path(node, sha1: str) -> Path:
    return Path(node.env["KACHERY_STORAGE_DIR"]) / "sha1" / sha1[:2] / sha1[2:4] / sha1[4:6] / sha1


@pytest.mark.timeout(180)
def test_python_load_file_dest_is_written_by_the_daemon(stack, tmp_path, monkeypatch):
    import kachery_p2p as kp
    import kacheryfs as kfs

    _mount, daemon = stack
    a = daemon("a", "daemon", "--channel", "x", *LOCAL)
    a.wait_log("listening on")
    first = random_bytes(12 * CHUNK_SIZE + 777, seed=81)
    second = random_bytes(5 * CHUNK_SIZE + 3, seed=82)
    first_uri = store_on(a, tmp_path, first, "first.bin")
    second_uri = store_on(a, tmp_path, second, "second.bin")
    b = daemon("b", "daemon", "--channel", "x", *LOCAL)
    b.wait_log("listening on")
    wait_until_connected(b, a)
    use_node(monkeypatch, b)

    # kacheryfs's own call: the daemon fills dest as it fetches; this process neither reads the
    # object nor writes a byte of it (a copy after the fetch would show in its write count).
    dest = tmp_path / "out" / "first.bin"
    dest.parent.mkdir()
    before = written_by_this_process()
    assert kfs.load_file(first_uri, dest=dest, progress=False) == str(dest)
    read, written = (now - then for now, then in zip(written_by_this_process(), before))
    assert dest.read_bytes() == first
    assert written < len(first) // 4 and read < len(first) // 4, (read, written)
    stored = object_path(b, hashlib.sha1(first).hexdigest())
    assert stored.exists() and os.stat(stored).st_ino != os.stat(dest).st_ino
    with open(dest, "r+b") as f:  # the caller's own file: changing it leaves the store's copy
        f.write(b"mine now")
    assert hashlib.sha1(stored.read_bytes()).hexdigest() == hashlib.sha1(first).hexdigest()

    # kachery_p2p's load_file(uri, dest): the same path, kachery-p2p's return values.
    dest2 = tmp_path / "out" / "second.bin"
    before = written_by_this_process()
    assert kp.load_file(second_uri, dest=str(dest2)) == str(dest2)
    written = written_by_this_process()[1] - before[1]
    assert dest2.read_bytes() == second and written < len(second) // 4, written
    # held now: a copy in the kernel (or a reflink), and dest replaced, not appended to
    dest2.write_bytes(b"old contents, longer than nothing")
    assert kp.load_file(second_uri, dest=str(dest2)) == str(dest2)
    assert dest2.read_bytes() == second
    missing = tmp_path / "out" / "missing.bin"
    assert kp.load_file("sha1://" + "0" * 40 + "/nothing", dest=str(missing)) is None
    assert not missing.exists()  # a failed load leaves no file behind
    assert kp.load_file(first_uri, dest=str(tmp_path / "out" / "no.bin"), p2p=False) is not None  # held
    # not held and p2p=False: None, nothing fetched, nothing created
    third_uri = store_on(a, tmp_path, random_bytes(CHUNK_SIZE + 1, seed=83), "third.bin")
    assert kp.load_file(third_uri, dest=str(tmp_path / "out" / "third.bin"), p2p=False) is None
    assert not (tmp_path / "out" / "third.bin").exists()

    # The same checks and errors as the CLI: the store's own copy (by a hard link) is refused
    # before anything is truncated; a directory is a one-line error.
    link = tmp_path / "link.bin"
    os.link(stored, link)
    with pytest.raises(BadDestination):
        kfs.load_file(first_uri, dest=link, progress=False)
    with pytest.raises(BadDestination):
        kp.load_file(first_uri, dest=str(stored))
    assert hashlib.sha1(stored.read_bytes()).hexdigest() == hashlib.sha1(first).hexdigest()
    with pytest.raises(KacheryError, match="could not write"):
        kfs.load_file(first_uri, dest=tmp_path / "out", progress=False)


@pytest.mark.timeout(300)
def test_dest_in_the_daemons_own_mount_and_in_another_nodes_mount(stack, tmp_path):
    import sys

    mount, daemon = stack
    a = daemon("a", "daemon", "--channel", "x", *LOCAL)
    a.wait_log("listening on")
    datas = [random_bytes(6 * CHUNK_SIZE + 99 * i, seed=90 + i) for i in range(5)]
    uris = [store_on(a, tmp_path, data, f"f{i}.bin") for i, data in enumerate(datas)]
    b = mount("b", "--channel", "x", *LOCAL)  # the loading node, with a mount of its own
    c = mount("c", "--channel", "y", *LOCAL)  # another node on this machine (not in B's channel)
    wait_until_connected(b, a)
    mounts = (b, c)

    def load(*args):
        return bounded([KACHERYFS, "load", *args], b.env, mounts)

    def python(how, uri, dest):
        return bounded([sys.executable, "-c", PYTHON_DEST, how, uri, str(dest)], b.env, mounts)

    def sha1_uri_of(path: Path) -> str:
        return os.getxattr(path, "user.kachery.uri").decode()

    # Into B's own store/ with the CLI: fetched by B's daemon, copied in by the client through
    # the mount; the file in store/ is the object.
    target = b.path("store", "loaded.bin")
    out = load(uris[0], "--dest", str(target))
    assert out.returncode == 0, out.stderr + b.read_log()
    assert target.read_bytes() == datas[0]
    assert hashlib.sha1(datas[0]).hexdigest() in sha1_uri_of(target)
    # held now: the same, from the store
    again = b.path("store", "again.bin")
    out = load(uris[0], "--dest", str(again))
    assert out.returncode == 0 and again.read_bytes() == datas[0], out.stderr
    # The Python call, for an object not held yet.
    py_target = b.path("store", "from_python.bin")
    out = python("api", uris[1], py_target)
    assert out.returncode == 0 and out.stdout.strip() == str(py_target), out.stdout + out.stderr
    assert py_target.read_bytes() == datas[1]

    # Elsewhere in B's mount nothing can be written: one line, nothing created.
    sha1_dest = b.path("sha1", hashlib.sha1(datas[2]).hexdigest())
    out = load(uris[2], "--dest", str(sha1_dest))
    assert out.returncode == 1 and "only store/" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr

    # A descriptor in B's own mount handed to B's daemon anyway (another client): refused, and
    # the daemon still serves its mount (closing that descriptor asked it for a flush).
    handed = b.path("store", "handed.bin")
    out = python("fd", uris[3], handed)
    assert out.returncode == 0 and out.stdout.startswith("BadDestination") and "own mount" in out.stdout, \
        out.stdout + out.stderr
    assert handed.stat().st_size == 0

    # Another node's mount is an ordinary destination: B's daemon writes into C's store/. A chunk
    # of the object read lazily through B's mount first: the chunks B holds when the load starts
    # are copied into dest from B's partial file, which is on another filesystem (no
    # copy_file_range between them: EXDEV).
    with open(b.path("sha1", hashlib.sha1(datas[4]).hexdigest()), "rb") as f:
        f.seek(2 * CHUNK_SIZE + 5)
        assert f.read(4096) == datas[4][2 * CHUNK_SIZE + 5:2 * CHUNK_SIZE + 5 + 4096]
    other = c.path("store", "from_b.bin")
    out = load(uris[4], "--dest", str(other))
    assert out.returncode == 0, out.stderr + b.read_log() + c.read_log()
    assert other.read_bytes() == datas[4]
    assert hashlib.sha1(datas[4]).hexdigest() in sha1_uri_of(other)
    assert {"again.bin", "from_python.bin", "handed.bin", "loaded.bin"} <= {p.name for p in b.path("store").iterdir()}
