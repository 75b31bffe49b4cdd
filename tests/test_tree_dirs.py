"""Directories in the tree, handlers called directly: subdirectories of store/ (what `cp -r`
does), a directory's URI (its manifest, stored), and sha1dir/<hash>/... browsing it read-only."""

import errno
import hashlib
import os

import pytest

from kacheryfs.errors import (
    AlreadyExists, DirectoryNotEmpty, InvalidName, IsADirectory, NotADirectory, NotADirectoryManifest, NotFound,
    ReadOnly,
)
from kacheryfs.fs.inodes import SHA1DIR_DIR_INO, STORE_DIR_INO
from kacheryfs.fs.tree import URI_XATTR, VirtualTree
from kacheryfs.store import CHUNK_SIZE, Directory, parse_dir_uri, parse_uri

from .conftest import random_bytes
from .test_tree import names_in, read_all


@pytest.fixture
def tree(store):
    return VirtualTree(store)


async def put(tree, parent: int, name: str, data: bytes) -> int:
    fh, attr = tree.create(parent, name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    if data:
        await tree.write(fh, 0, data)
    await tree.flush(fh)
    await tree.release(fh)
    return attr.ino


async def make_project(tree) -> dict[str, bytes]:
    """store/proj/{a.txt, sub/b.bin (over one chunk), empty/} as `cp -r` makes it."""
    proj = tree.mkdir(STORE_DIR_INO, "proj").ino
    files = {"a.txt": b"alpha\n", "sub/b.bin": random_bytes(CHUNK_SIZE + 10, seed=3)}
    await put(tree, proj, "a.txt", files["a.txt"])
    sub = tree.mkdir(proj, "sub").ino
    await put(tree, sub, "b.bin", files["sub/b.bin"])
    tree.mkdir(proj, "empty")
    return files


async def test_cp_r_into_store_makes_directories(tree):
    files = await make_project(tree)
    assert names_in(tree, STORE_DIR_INO) == ["proj"]
    proj = tree.lookup(STORE_DIR_INO, "proj")
    assert proj.is_dir and proj.mode & 0o777 == 0o755
    assert names_in(tree, proj.ino) == ["empty", "sub", "a.txt"]
    sub = tree.lookup(proj.ino, "sub").ino
    b = tree.lookup(sub, "b.bin")
    got, fh = read_all(tree, b.ino)
    assert got == files["sub/b.bin"]
    await tree.release(fh)
    # a file's URI names the file by its own name
    uri = parse_uri(tree.getxattr(b.ino, URI_XATTR).decode())
    assert uri.sha1 == hashlib.sha1(files["sub/b.bin"]).hexdigest() and uri.name == "b.bin" and uri.manifest_sha1


async def test_directories_survive_restart_empty_ones_too(store):
    await make_project(VirtualTree(store))
    again = VirtualTree(store)
    proj = again.lookup(STORE_DIR_INO, "proj").ino
    assert names_in(again, proj) == ["empty", "sub", "a.txt"]
    assert names_in(again, again.lookup(proj, "empty").ino) == []


async def test_rm_r_and_refusals(tree):
    await make_project(tree)
    proj = tree.lookup(STORE_DIR_INO, "proj").ino
    for call, error, code in [
        (lambda: tree.rmdir(STORE_DIR_INO, "proj"), DirectoryNotEmpty, errno.ENOTEMPTY),
        (lambda: tree.mkdir(STORE_DIR_INO, "proj"), AlreadyExists, errno.EEXIST),
        (lambda: tree.mkdir(proj, "a.txt"), AlreadyExists, errno.EEXIST),
        (lambda: tree.create(proj, "sub", os.O_WRONLY), IsADirectory, errno.EISDIR),
        (lambda: tree.unlink(proj, "sub"), IsADirectory, errno.EISDIR),
        (lambda: tree.rmdir(proj, "a.txt"), NotADirectory, errno.ENOTDIR),
        (lambda: tree.rename(proj, "a.txt", proj, "sub"), IsADirectory, errno.EISDIR),
        (lambda: tree.rename(STORE_DIR_INO, "proj", proj, "inside"), InvalidName, errno.EINVAL),
        (lambda: tree.rename(proj, "empty", proj, "a.txt"), NotADirectory, errno.ENOTDIR),
        (lambda: tree.rename(proj, "empty", STORE_DIR_INO, "nowhere/x"), InvalidName, errno.EINVAL),
    ]:
        with pytest.raises(error) as info:
            call()
        assert info.value.errno == code
    # rm -r: files, then directories bottom up
    sub = tree.lookup(proj, "sub").ino
    tree.unlink(sub, "b.bin")
    tree.rmdir(proj, "sub")
    tree.unlink(proj, "a.txt")
    tree.rmdir(proj, "empty")
    tree.rmdir(STORE_DIR_INO, "proj")
    assert names_in(tree, STORE_DIR_INO) == []
    with pytest.raises(NotFound):
        tree.lookup(STORE_DIR_INO, "proj")


async def test_mv_a_directory_moves_what_is_in_it(tree):
    files = await make_project(tree)
    tree.mkdir(STORE_DIR_INO, "dest")
    dest = tree.lookup(STORE_DIR_INO, "dest").ino
    sub_before = tree.lookup(tree.lookup(STORE_DIR_INO, "proj").ino, "sub").ino
    # a file being written inside the directory while it moves lands under the new path
    fh, _ = tree.create(sub_before, "late.txt", os.O_WRONLY | os.O_CREAT)
    await tree.write(fh, 0, b"late")
    tree.rename(STORE_DIR_INO, "proj", dest, "moved")
    await tree.flush(fh)
    await tree.release(fh)
    assert names_in(tree, STORE_DIR_INO) == ["dest"]
    moved = tree.lookup(dest, "moved").ino
    sub = tree.lookup(moved, "sub").ino
    assert sub == sub_before  # same inode: a shell cd'd into it stays there
    assert names_in(tree, sub) == ["b.bin", "late.txt"]
    got, fh = read_all(tree, tree.lookup(sub, "b.bin").ino)
    assert got == files["sub/b.bin"]
    await tree.release(fh)
    # and in the index: a new tree sees the same
    again = VirtualTree(tree.store)
    sub2 = again.lookup(again.lookup(again.lookup(STORE_DIR_INO, "dest").ino, "moved").ino, "sub").ino
    assert names_in(again, sub2) == ["b.bin", "late.txt"]
    # over an empty directory: replaced; over a non-empty one: refused
    tree.mkdir(STORE_DIR_INO, "empty_target")
    tree.rename(dest, "moved", STORE_DIR_INO, "empty_target")
    assert "b.bin" in names_in(tree, tree.lookup(tree.lookup(STORE_DIR_INO, "empty_target").ino, "sub").ino)
    tree.mkdir(STORE_DIR_INO, "other")
    await put(tree, tree.lookup(STORE_DIR_INO, "other").ino, "x", b"x")
    with pytest.raises(DirectoryNotEmpty):
        tree.rename(STORE_DIR_INO, "empty_target", STORE_DIR_INO, "other")


async def test_directory_uri_is_its_stored_manifest_and_sha1dir_browses_it(tree):
    files = await make_project(tree)
    proj = tree.lookup(STORE_DIR_INO, "proj").ino
    assert URI_XATTR in tree.listxattr(proj)
    text = (await tree.agetxattr(proj, URI_XATTR)).decode()
    uri = parse_dir_uri(text)
    assert uri.label == "proj" and uri.path == ""
    directory = Directory.from_bytes(tree.store.read_bytes(uri.sha1))  # stored: peers can fetch it
    assert {p for p, _e in directory.walk()} == {"a.txt", "sub", "sub/b.bin", "empty"}
    assert directory.lookup("sub/b.bin").sha1 == hashlib.sha1(files["sub/b.bin"]).hexdigest()
    # the same content gives the same URI; a change gives another
    assert (await tree.agetxattr(proj, URI_XATTR)).decode() == text
    await put(tree, proj, "c.txt", b"c")
    assert parse_dir_uri((await tree.agetxattr(proj, URI_XATTR)).decode()).sha1 != uri.sha1

    # sha1dir/<hash>: the first version, read-only, under the hash and under hash.label
    for top in (uri.sha1, f"{uri.sha1}.proj"):
        root = tree.lookup(SHA1DIR_DIR_INO, top)
        assert root.is_dir and root.mode & 0o777 == 0o555
        assert names_in(tree, root.ino) == ["empty", "sub", "a.txt"]
        sub = tree.lookup(root.ino, "sub").ino
        b = tree.lookup(sub, "b.bin")
        assert b.size == len(files["sub/b.bin"]) and b.mode & 0o777 == 0o444
        got, fh = read_all(tree, b.ino)
        assert got == files["sub/b.bin"]
        await tree.release(fh)
        file_uri = parse_uri(tree.getxattr(b.ino, URI_XATTR).decode())
        assert file_uri.name == "b.bin" and file_uri.manifest_sha1 == directory.lookup("sub/b.bin").manifest_sha1
        assert parse_dir_uri(tree.getxattr(sub, URI_XATTR).decode()).path == "sub"
        with pytest.raises(NotFound):
            tree.lookup(root.ino, "c.txt")
        for call in (lambda: tree.create(sub, "new", os.O_WRONLY), lambda: tree.mkdir(sub, "d"),
                     lambda: tree.unlink(sub, "b.bin"), lambda: tree.open(b.ino, os.O_WRONLY),
                     lambda: tree.rename(sub, "b.bin", sub, "c")):
            with pytest.raises(ReadOnly) as info:
                call()
            assert info.value.errno == errno.EROFS


async def test_sha1dir_of_something_else(tree):
    ino = await put(tree, STORE_DIR_INO, "plain.txt", b"just a file")
    sha1 = parse_uri(tree.getxattr(ino, URI_XATTR).decode()).sha1
    with pytest.raises(NotADirectoryManifest) as info:
        tree.lookup(SHA1DIR_DIR_INO, sha1)
    assert info.value.errno == errno.ENOTDIR
    for name in ("0" * 40, "xyz", "0" * 40 + "x"):
        with pytest.raises(NotFound):
            tree.lookup(SHA1DIR_DIR_INO, name)
    assert names_in(tree, SHA1DIR_DIR_INO) == []


async def test_a_rotten_directory_manifest_is_refused_not_parsed(tree):
    """A stored manifest whose bytes changed on disk (bit rot) would list other files: it is
    checked against its hash and quarantined, never browsed."""
    from kacheryfs.errors import CorruptObject

    await make_project(tree)
    proj = tree.lookup(STORE_DIR_INO, "proj").ino
    sha1 = parse_dir_uri((await tree.agetxattr(proj, URI_XATTR)).decode()).sha1
    path = tree.store.object_path(sha1)
    data = bytearray(path.read_bytes())
    data[data.index(b'"size":') + 7] ^= 0x01  # a size digit changes: still JSON, still a directory
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptObject) as info:
        tree.lookup(SHA1DIR_DIR_INO, sha1)
    assert info.value.errno == errno.EIO
    assert not path.exists()  # quarantined
