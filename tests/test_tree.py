"""The virtual tree's handlers called directly, without a mount (trio tests)."""

import errno
import hashlib
import os

import pytest

from kacheryfs.errors import InvalidName, KacheryError, NameTooLong, NotFound, NotPermitted, ReadOnly
from kacheryfs.fs.inodes import FEEDS_DIR_INO, ROOT_INO, SHA1_DIR_INO, STORE_DIR_INO, InodeTable
from kacheryfs.fs.tree import URI_XATTR, VirtualTree, validate_name
from kacheryfs.store import CHUNK_SIZE

from .conftest import random_bytes


@pytest.fixture
def tree(store):
    return VirtualTree(store)


async def write_file(tree, name: str, data: bytes, piece: int = 128 << 10) -> int:
    fh, attr = tree.create(STORE_DIR_INO, name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    for off in range(0, len(data), piece):
        assert await tree.write(fh, off, data[off:off + piece]) == len(data[off:off + piece])
    await tree.flush(fh)
    await tree.release(fh)
    return attr.ino


def read_all(tree, ino: int) -> bytes:
    fh, _ = tree.open(ino, os.O_RDONLY)
    size = tree.getattr(ino).size
    data = bytes(tree.read(fh, 0, size + 10))
    return data, fh


def names_in(tree, ino) -> list[str]:
    fh = tree.opendir(ino)
    out = [name for name, _attr, _next in tree.readdir(fh, 0)]
    tree.releasedir(fh)
    return out


async def test_top_level(tree):
    assert names_in(tree, ROOT_INO) == ["sha1", "sha1dir", "store", "feeds"]
    assert tree.lookup(ROOT_INO, "store").ino == STORE_DIR_INO
    assert names_in(tree, FEEDS_DIR_INO) == []
    with pytest.raises(NotFound):
        tree.lookup(ROOT_INO, "other")


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1])
async def test_store_then_read_by_hash(tree, size):
    data = random_bytes(size, seed=size)
    ino = await write_file(tree, "f.bin", data)
    sha1 = hashlib.sha1(data).hexdigest()
    uri = tree.getxattr(ino, URI_XATTR).decode()
    assert uri.startswith(f"sha1://{sha1}/f.bin")
    assert ("?manifest=" in uri) == (size > CHUNK_SIZE)
    obj = tree.lookup(SHA1_DIR_INO, sha1)
    assert obj.size == size and obj.mode & 0o777 == 0o444
    got, fh = read_all(tree, obj.ino)
    assert got == data
    await tree.release(fh)
    assert sha1 in names_in(tree, SHA1_DIR_INO)
    assert names_in(tree, STORE_DIR_INO) == ["f.bin"]
    got, fh = read_all(tree, ino)
    assert got == data
    await tree.release(fh)


async def test_overwrite_repoints_and_append_extends(tree):
    ino = await write_file(tree, "a", b"one")
    await write_file(tree, "a", b"two!")
    assert tree.lookup(STORE_DIR_INO, "a").size == 4
    fh, _ = tree.open(ino, os.O_WRONLY | os.O_APPEND)
    await tree.write(fh, 4, b"+more")
    await tree.flush(fh)
    await tree.release(fh)
    got, fh = read_all(tree, ino)
    assert got == b"two!+more"
    await tree.release(fh)
    assert tree.getxattr(ino, URI_XATTR).decode().startswith(f"sha1://{hashlib.sha1(b'two!+more').hexdigest()}/a")


async def test_names_survive_restart(store):
    tree = VirtualTree(store)
    await write_file(tree, "keep.txt", b"persist")
    again = VirtualTree(store)
    attr = again.lookup(STORE_DIR_INO, "keep.txt")
    got, fh = read_all(again, attr.ino)
    assert got == b"persist"
    await again.release(fh)


async def test_dup_flush_and_writes_after_flush(tree):
    """The shell's `>` flushes once before any write (dup2 + close); a later flush commits again."""
    fh, attr = tree.create(STORE_DIR_INO, "s", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    await tree.flush(fh)
    assert tree.lookup(STORE_DIR_INO, "s").size == 0
    await tree.write(fh, 0, b"hi\n")
    await tree.flush(fh)
    await tree.release(fh)
    expected = hashlib.sha1(b"hi\n").hexdigest()
    assert tree.getxattr(attr.ino, URI_XATTR).decode().startswith(f"sha1://{expected}")


async def test_writes_after_last_flush_commit_on_release(tree):
    fh, attr = tree.create(STORE_DIR_INO, "m", os.O_RDWR | os.O_CREAT)
    await tree.write(fh, 0, b"abc")
    await tree.flush(fh)
    await tree.write(fh, 1, b"X")  # like an mmap store written back after close()
    await tree.release(fh)
    got, fh = read_all(tree, attr.ino)
    assert got == b"aXc"
    await tree.release(fh)


async def test_truncate_closed_file(tree):
    ino = await write_file(tree, "t", b"0123456789")
    assert (await tree.truncate(ino, 4, None)).size == 4
    got, fh = read_all(tree, ino)
    assert got == b"0123"
    await tree.release(fh)
    assert (await tree.truncate(ino, 6, None)).size == 6
    got, fh = read_all(tree, ino)
    assert got == b"0123\0\0"
    await tree.release(fh)


async def test_unlink_and_rename(tree):
    await write_file(tree, "a", b"A")
    await write_file(tree, "b", b"B")
    tree.rename(STORE_DIR_INO, "a", STORE_DIR_INO, "b")
    assert names_in(tree, STORE_DIR_INO) == ["b"]
    got, fh = read_all(tree, tree.lookup(STORE_DIR_INO, "b").ino)
    assert got == b"A"
    await tree.release(fh)
    tree.unlink(STORE_DIR_INO, "b")
    assert names_in(tree, STORE_DIR_INO) == []
    with pytest.raises(NotFound):
        tree.lookup(STORE_DIR_INO, "b")
    with pytest.raises(NotFound):
        tree.unlink(STORE_DIR_INO, "b")
    assert hashlib.sha1(b"A").hexdigest() in names_in(tree, SHA1_DIR_INO)  # the object stays


async def test_sha1_is_read_only(tree):
    await write_file(tree, "a", b"A")
    sha1 = hashlib.sha1(b"A").hexdigest()
    ino = tree.lookup(SHA1_DIR_INO, sha1).ino
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        with pytest.raises(ReadOnly) as info:
            tree.open(ino, flags)
        assert info.value.errno == errno.EROFS
    with pytest.raises(ReadOnly):
        tree.create(SHA1_DIR_INO, "x", os.O_WRONLY)
    with pytest.raises(ReadOnly):
        tree.unlink(SHA1_DIR_INO, sha1)
    with pytest.raises(ReadOnly):
        await tree.truncate(ino, 0, None)
    with pytest.raises(ReadOnly):
        tree.rename(STORE_DIR_INO, "a", SHA1_DIR_INO, "x")
    with pytest.raises(NotPermitted):
        tree.create(ROOT_INO, "x", os.O_WRONLY)
    with pytest.raises(NotPermitted):
        tree.mkdir(ROOT_INO, "sub")
    with pytest.raises(ReadOnly):
        tree.mkdir(SHA1_DIR_INO, "sub")


@pytest.mark.parametrize("name", ["0" * 40, "A" * 40, "abc", "g" * 40, "a" * 41])
async def test_sha1_lookup_misses_are_enoent(tree, name):
    with pytest.raises(NotFound) as info:
        tree.lookup(SHA1_DIR_INO, name)
    assert info.value.errno == errno.ENOENT


@pytest.mark.parametrize("name,error", [("", InvalidName), (".", InvalidName), ("..", InvalidName),
                                        ("a/b", InvalidName), ("a\0b", InvalidName), ("x" * 256, NameTooLong),
                                        ("é" * 128, NameTooLong)])
async def test_bad_names(tree, name, error):
    with pytest.raises(error) as info:
        validate_name(name)
    assert info.value.errno == (errno.ENAMETOOLONG if error is NameTooLong else errno.EINVAL)
    with pytest.raises(error):
        tree.create(STORE_DIR_INO, name, os.O_WRONLY)
    validate_name("x" * 255)


async def test_failed_commit_leaves_nothing(tree, store, monkeypatch):
    from kacheryfs.errors import StorageFull

    def full(*a, **k):
        raise StorageFull("test")

    fh, attr = tree.create(STORE_DIR_INO, "big", os.O_WRONLY | os.O_CREAT)
    await tree.write(fh, 0, b"data")
    monkeypatch.setattr(store, "_install", full)
    with pytest.raises(StorageFull):
        await tree.flush(fh)
    with pytest.raises(StorageFull):  # every close() of the file reports it
        await tree.flush(fh)
    await tree.release(fh)
    assert names_in(tree, STORE_DIR_INO) == []
    assert list(store.tmp_dir.iterdir()) == []
    with pytest.raises(KacheryError):
        tree.getxattr(attr.ino, URI_XATTR)


def test_inode_table_lookup_counts():
    t = InodeTable()
    a = t.ino_for(("store", "a"))
    assert t.ino_for(("store", "a")) == a
    t.remember(a)
    t.opened(a)
    t.forget(a, 1)
    assert t.key_of(a) == ("store", "a")  # still open
    t.closed(a)
    assert not t.known(a)
    b = t.ino_for(("store", "b"))
    t.remember(b)
    t.detach(("store", "b"))
    assert t.key_of(b) is None and t.known(b)
    t.forget(b, 1)
    assert not t.known(b) and len(t) == 0
