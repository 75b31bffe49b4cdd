"""Sharing directories, end to end: `cp -r` into a real mount's store/, the directory's
sha1dir:// URI, a peer browsing MOUNT/sha1dir/<hash>/... lazily, `kacheryfs store -r` / `load
--dest` / `cat`, and the Python store_dir / read_dir / load_dir; real daemons over 127.0.0.1."""

from __future__ import annotations

import errno
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import write_random_file
from .mounting import KACHERYFS
from .test_mount_network import LOCAL, wait_until_connected


def make_project(root) -> None:
    """proj/{a.txt, sub/b.bin (several chunks), sub/deeper/c.json, empty/}"""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.txt").write_text("alpha\n")
    write_random_file(root / "sub" / "b.bin", (5 << 20) + 123, seed=7)
    (root / "sub" / "deeper" / "c.json").write_text('{"c": 3}')


def same_tree(left, right) -> bool:
    walk = lambda top: sorted((os.path.relpath(d, top), sorted(ds), sorted(fs)) for d, ds, fs in os.walk(top))
    if walk(left) != walk(right):
        return False
    for d, _ds, fs in os.walk(left):
        for f in fs:
            if not filecmp.cmp(os.path.join(d, f), os.path.join(right, os.path.relpath(d, left), f), shallow=False):
                return False
    return True


def run(env, *args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([KACHERYFS, *args], env=env, capture_output=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


def test_listed_entries_stay_usable_after_their_file_is_closed(mount, cli, tmp_path):
    """readdir(plus) entries are lookups for the kernel: an inode first seen in a listing, then
    opened and closed, must still answer (it was dropped: `ls; cat x; kacheryfs uri x` gave ENODATA)."""
    (tmp_path / "x.txt").write_text("x\n")
    sha1 = cli("store", str(tmp_path / "x.txt")).stdout.decode()[7:47]  # same storage, not through the mount
    assert sha1 in os.listdir(mount.path("sha1"))
    for _ in range(2):
        assert mount.path("sha1", sha1).read_text() == "x\n"
        assert os.getxattr(mount.path("sha1", sha1), "user.kachery.uri").decode() == f"sha1://{sha1}"
        assert os.stat(mount.path("sha1", sha1)).st_size == 2


@pytest.mark.timeout(180)
def test_cp_r_into_the_mount_then_peers_browse_load_and_read_it(stack, tmp_path):
    mount, daemon = stack
    proj = tmp_path / "proj"
    make_project(proj)
    a = mount("a", "--channel", "lab", *LOCAL)
    subprocess.run(["cp", "-r", str(proj), str(a.path("store"))], check=True, timeout=60)
    assert same_tree(proj, a.path("store", "proj"))
    uri = run(a.env, "uri", str(a.path("store", "proj"))).stdout.decode().strip()
    assert uri.startswith("sha1dir://") and uri.endswith(".proj")
    # the same bytes hashed outside the mount give the same URI (nothing stored)
    assert run(a.env, "uri", str(proj)).stdout.decode().strip() == uri
    sha1 = uri[len("sha1dir://"):][:40]

    # B browses it through its own mount: listed, read lazily, verified
    b = mount("b", "--channel", "lab", *LOCAL)
    wait_until_connected(b, a)
    assert same_tree(proj, b.path("sha1dir", sha1))
    assert os.getxattr(b.path("sha1dir", sha1, "sub", "b.bin"), "user.kachery.uri").decode().startswith("sha1://")
    with pytest.raises(OSError) as info:
        open(b.path("sha1dir", sha1, "new.txt"), "w")
    assert info.value.errno in (errno.EROFS, errno.EACCES)

    # C, a daemon without a mount: the CLI loads the tree, a subdirectory, and one file
    c = daemon("c", "daemon", "--channel", "lab", *LOCAL)
    c.wait_log("listening on")
    wait_until_connected(c, a)
    linked = tmp_path / "linked"  # --link: every file fetched, then a hard link to C's store's copy
    result = run(c.env, "load", uri, "--dest", str(linked), "--link")
    assert result.stdout.decode().strip() == str(linked) and result.stderr == b""
    assert same_tree(proj, linked)
    files = [p for p in linked.rglob("*") if p.is_file()]
    assert len(files) >= 3
    for path in files:
        rel = path.relative_to(linked).as_posix()
        held = Path(run(c.env, "load", f"{uri}/{rel}").stdout.decode().strip())  # the store's copy
        assert os.stat(path).st_ino == os.stat(held).st_ino and os.stat(path).st_mode & 0o777 == 0o444
    out = tmp_path / "out"  # held now: a copy of the user's own
    run(c.env, "load", uri, "--dest", str(out))
    assert same_tree(proj, out)
    assert all(p.stat().st_nlink == 1 for p in out.rglob("*") if p.is_file())
    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        other_fs = shm / f"kacheryfs-test-dir-{os.getpid()}"
        try:
            result = run(c.env, "load", uri, "--dest", str(other_fs), "--link")
            assert b"copied, not linked" in result.stderr and same_tree(proj, other_fs)
        finally:
            shutil.rmtree(other_fs, ignore_errors=True)
    run(c.env, "load", f"{uri}/sub", "--dest", str(tmp_path / "out_sub"))
    assert same_tree(proj / "sub", tmp_path / "out_sub")
    assert run(c.env, "cat", f"{uri}/sub/deeper/c.json").stdout == b'{"c": 3}'
    assert run(c.env, "cat", f"sha1dir://{sha1}/a.txt").stdout == b"alpha\n"  # without the label too
    bad = run(c.env, "load", uri, check=False)  # a directory needs --dest
    assert bad.returncode == 1 and "--dest" in bad.stderr.decode() and len(bad.stderr.splitlines()) == 1

    # and Python on C
    code = f"""
import kacheryfs as kfs, json
print(json.dumps(kfs.read_dir({uri!r})))
print(json.dumps(kfs.read_dir({uri!r} + "/sub", recursive=False)))
print(kfs.load_text({uri!r} + "/a.txt"), end="")
import kachery_p2p as kp  # the seed's module reads directories too
assert kp.load_text({uri!r} + "/a.txt") == "alpha\\n"
assert kp.read_dir({uri!r})["dirs"]["sub"]["files"]["b.bin"]["size"] == {(5 << 20) + 123}
assert kp.load_file({uri!r} + "/no/such/file") is None
"""
    result = subprocess.run([sys.executable, "-c", code], env=c.env, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    import json

    full, sub, text = result.stdout.decode().split("\n", 2)
    full, sub = json.loads(full), json.loads(sub)
    assert set(full["files"]) == {"a.txt"} and set(full["dirs"]) == {"empty", "sub"}
    assert full["dirs"]["sub"]["dirs"]["deeper"]["files"]["c.json"]["size"] == 8
    assert sub["dirs"] == {"deeper": {}} and sub["files"]["b.bin"]["size"] == (5 << 20) + 123
    assert text == "alpha\n"

    # a node of another channel gets nothing
    d = mount("d", "--channel", "other", *LOCAL, "--find-timeout", "1")
    with pytest.raises(OSError) as info:
        os.listdir(d.path("sha1dir", sha1))
    assert info.value.errno == errno.ENOENT


def test_store_r_and_python_store_dir_agree(cli, tmp_path):
    proj = tmp_path / "proj"
    make_project(proj)
    refused = cli("store", str(proj), check=False)
    assert refused.returncode == 1 and "store -r" in refused.stderr.decode()
    assert len(refused.stderr.splitlines()) == 1
    uri = cli("store", "-r", str(proj)).stdout.decode().strip()
    assert uri == cli("uri", str(proj)).stdout.decode().strip()
    code = f"import kacheryfs as kfs; print(kfs.store_dir({str(proj)!r}))"
    result = subprocess.run([sys.executable, "-c", code], env=cli.env, capture_output=True, timeout=60)
    assert result.stdout.decode().strip() == uri, result.stderr.decode()
    # everything is held here now: load --dest needs no daemon
    cli("load", uri, "--dest", str(tmp_path / "copy"))
    assert same_tree(proj, tmp_path / "copy")
    exists = cli("load", uri, "--dest", str(tmp_path / "copy"), check=False)
    assert exists.returncode == 1 and "already exists" in exists.stderr.decode()


def test_store_r_refuses_what_it_cannot_store_before_storing_anything(cli, tmp_path):
    proj = tmp_path / "proj"
    make_project(proj)
    os.mkfifo(proj / "sub" / "pipe")
    result = cli("store", "-r", str(proj), check=False)
    assert result.returncode == 1 and "pipe is not a regular file" in result.stderr.decode()
    assert "objects:  0 files" in cli("status").stdout.decode()
