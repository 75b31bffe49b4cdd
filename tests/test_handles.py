"""Open files as handle objects: the one protocol every kind follows, and a remote reader that
becomes a plain mmap reader once its download completes (nodes over loopback, no mount)."""

import os

import pytest

from kacheryfs.errors import NotADirectory, NotOpenForReading, NotOpenForWriting
from kacheryfs.fs.inodes import SHA1_DIR_INO, STORE_DIR_INO
from kacheryfs.fs.remote import RemoteHandle
from kacheryfs.fs.tree import VirtualTree
from kacheryfs.net.fetcher import NetworkFetcher
from kacheryfs.store import CHUNK_SIZE

from .conftest import random_bytes
from .test_net import addr_of, chans


async def test_every_kind_refuses_what_it_cannot_do(store):
    tree = VirtualTree(store)
    fh, attr = tree.create(STORE_DIR_INO, "f", os.O_WRONLY | os.O_CREAT)
    await tree.write(fh, 0, b"content")
    await tree.flush(fh)
    await tree.release(fh)
    obj = tree.lookup(SHA1_DIR_INO, store.list_objects()[0].sha1)
    fh, keep_cache = tree.open(obj.ino, os.O_RDONLY)
    assert keep_cache
    with pytest.raises(NotOpenForWriting):
        await tree.write(fh, 0, b"x")
    with pytest.raises(NotADirectory):
        tree.readdir(fh, 0)
    await tree.flush(fh)  # nothing to commit: a no-op, never an error
    await tree.release(fh)
    fh, _ = tree.open(attr.ino, os.O_RDONLY)  # a store/ name read with no draft open: the object
    assert bytes(await tree.aread(fh, 0, 100)) == b"content"
    await tree.release(fh)
    dh = tree.opendir(STORE_DIR_INO)
    with pytest.raises(NotOpenForReading):
        await tree.aread(dh, 0, 10)
    tree.releasedir(dh)


async def test_a_remote_handle_becomes_an_mmap_reader_when_the_download_completes(cluster):
    data = random_bytes(6 * CHUNK_SIZE + 11, seed=21)
    seeder = await cluster.node("seeder", chans("x"))
    reader = await cluster.node("reader", chans("x"))
    obj = seeder.store.put_bytes(data)
    await reader.connect(*addr_of(seeder))
    fetcher = NetworkFetcher(reader)
    tree = VirtualTree(reader.store, fetcher)
    attr = await tree.lookup_or_locate(SHA1_DIR_INO, obj.sha1)
    fh, keep_cache = await tree.open_or_fetch(attr.ino, os.O_RDONLY)
    handle = tree.handles[fh]
    assert isinstance(handle, RemoteHandle) and keep_cache
    assert bytes(await tree.aread(fh, 3 * CHUNK_SIZE, 100)) == data[3 * CHUNK_SIZE:3 * CHUNK_SIZE + 100]
    assert handle.local is None  # lazy: only that chunk was waited for
    with pytest.raises(NotOpenForReading):
        tree.read(fh, 0, 10)  # remote bytes may need waiting for
    await fetcher.fetch(obj.sha1)  # the rest arrives; the object is installed
    got = await tree.aread(fh, 0, len(data))
    assert isinstance(got, memoryview) and bytes(got) == data  # a view of the object's map
    assert handle.local is not None
    assert fetcher._downloads == {}  # and it let the download go
    del got
    await tree.release(fh)
