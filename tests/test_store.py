"""Pure tests of the local store (no mount)."""

import hashlib
import os

import pytest

from kacheryfs.errors import IsADirectory, NoSuchFile, ObjectNotFound
from kacheryfs.store import CHUNK_SIZE, LocalStore, Manifest

from .conftest import random_bytes


def test_layout_and_roundtrip(store):
    obj = store.put_bytes(b"hello")
    assert obj.sha1 == hashlib.sha1(b"hello").hexdigest()
    path = store.object_path(obj.sha1)
    assert path == store.root / "sha1" / obj.sha1[:2] / obj.sha1[2:4] / obj.sha1[4:6] / obj.sha1
    assert path.read_bytes() == b"hello"
    assert path.stat().st_mode & 0o777 == 0o444
    assert obj.manifest_sha1 is None
    assert obj.uri("x.txt") == f"sha1://{obj.sha1}/x.txt"
    assert store.info(obj.sha1).size == 5
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("size,has_manifest", [(0, False), (1, False), (CHUNK_SIZE, False), (CHUNK_SIZE + 1, True),
                                               (3 * CHUNK_SIZE + 5, True)])
def test_manifest_only_above_one_chunk(store, size, has_manifest):
    data = random_bytes(size)
    obj = store.put_bytes(data)
    assert (obj.manifest_sha1 is not None) == has_manifest
    if has_manifest:
        m = store.manifest_of(obj.sha1)
        assert m == Manifest.from_bytes(store.read_bytes(obj.manifest_sha1), obj.manifest_sha1)
        assert m.size == size and m.sha1 == obj.sha1
        for i, chunk_sha1 in enumerate(m.chunk_sha1s):
            a, b = m.chunk_range(i)
            assert hashlib.sha1(data[a:b]).hexdigest() == chunk_sha1
        assert f"?manifest={obj.manifest_sha1}" in obj.uri("f")


def test_same_content_twice_is_one_object(store):
    a = store.put_bytes(b"same")
    b = store.put_bytes(b"same")
    assert a == b
    assert store.index.object_totals() == (1, 4)


def test_out_of_order_writes_are_rehashed(store):
    data = random_bytes(3 * CHUNK_SIZE)
    with store.writer() as w:
        w.pwrite(CHUNK_SIZE, data[CHUNK_SIZE:])
        w.pwrite(0, data[:CHUNK_SIZE])
        obj = w.commit()
    assert obj.sha1 == hashlib.sha1(data).hexdigest()
    assert store.manifest_of(obj.sha1).chunk_sha1s[0] == hashlib.sha1(data[:CHUNK_SIZE]).hexdigest()


def test_truncate_then_commit(store):
    with store.writer() as w:
        w.write(b"abcdef")
        w.truncate(3)
        obj = w.commit()
    assert store.read_bytes(obj.sha1) == b"abc"


def test_abort_leaves_nothing(store):
    w = store.writer()
    w.write(b"partial")
    w.abort()
    assert list(store.tmp_dir.iterdir()) == []
    assert store.index.object_totals() == (0, 0)


def test_put_file_stat_cache_skips_rehash(store, tmp_path, monkeypatch):
    src = tmp_path / "data.bin"
    src.write_bytes(random_bytes(2 * CHUNK_SIZE + 3))
    first = store.put_file(src)

    def no_writer(*a, **k):
        raise AssertionError("an unchanged file was hashed again")

    monkeypatch.setattr(store, "writer", no_writer)
    assert store.put_file(src) == first
    monkeypatch.undo()

    # Same size and mtime but different head bytes: the fingerprint catches it.
    st = src.stat()
    data = bytearray(src.read_bytes())
    data[0] ^= 0xFF
    src.write_bytes(bytes(data))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = store.put_file(src)
    assert second.sha1 == hashlib.sha1(bytes(data)).hexdigest() != first.sha1


def test_put_file_errors(store, tmp_path):
    # a missing path is a missing file, not a missing object (the message once talked of hashes)
    with pytest.raises(NoSuchFile, match="No such file or directory: .*missing") as info:
        store.put_file(tmp_path / "missing")
    assert not isinstance(info.value, ObjectNotFound) and "hash" not in str(info.value)
    with pytest.raises(IsADirectory, match="store -r"):
        store.put_file(tmp_path)


def test_names_persist(tmp_path):
    s = LocalStore(tmp_path / "st")
    obj = s.put_bytes(b"x")
    s.set_name("a.txt", obj)
    s.close()
    s2 = LocalStore(tmp_path / "st")
    assert s2.get_name("a.txt").sha1 == obj.sha1
    assert s2.rename("a.txt", "b.txt")
    assert s2.get_name("a.txt") is None and s2.get_name("b.txt").sha1 == obj.sha1
    assert s2.remove_name("b.txt") and not s2.remove_name("b.txt")
    s2.close()


def test_reconcile_repairs_index_and_temp_files(store):
    kept = store.put_bytes(b"kept")
    gone = store.put_bytes(b"gone")
    os.chmod(store.object_path(gone.sha1), 0o644)
    os.unlink(store.object_path(gone.sha1))
    # An object that reached disk without an index row (crash between rename and index update).
    orphan_sha1 = hashlib.sha1(b"orphan").hexdigest()
    p = store.object_path(orphan_sha1)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"orphan")
    (store.tmp_dir / "999999999-dead.part").write_bytes(b"junk")  # a dead writer's temp file
    live = store.writer()  # our own live temp file must survive
    report = store.reconcile()
    assert report == {"tmp_removed": 1, "index_dropped": 1, "index_added": 1}
    assert {r.sha1 for r in store.list_objects()} == {kept.sha1, orphan_sha1}
    assert live.path.exists()
    live.abort()


def test_an_object_being_installed_is_not_adopted_meanwhile(store, monkeypatch):
    """A lookup between an object's rename into place and its index row (a peer asking for a
    download that is being installed) must not adopt it as stored here: that would share a cached
    copy on every channel and lose its manifest."""
    from kacheryfs.store import local

    data = random_bytes(2 * CHUNK_SIZE + 3, seed=11)
    sha1 = hashlib.sha1(data).hexdigest()
    seen = []
    real = local.fsync_dir
    monkeypatch.setattr(local, "fsync_dir", lambda path: (seen.append(store.info(sha1)), real(path)))
    with store.writer(pinned=False) as w:
        w.write(data)
        obj = w.commit()
    assert seen[0] is None  # the rename had happened, the index row not yet
    record = store.info(obj.sha1)
    assert record.pinned is False and record.manifest_sha1 == obj.manifest_sha1


def test_missing_object(store):
    with pytest.raises(ObjectNotFound):
        store.require("0" * 40)
    assert store.info("0" * 40) is None


def test_config_channels_and_secret_files(tmp_path):
    from kacheryfs.config import Config, ConfigError
    from kacheryfs.crypto import channel_id, channel_key

    secret = tmp_path / "lab.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    one = Config.from_env(channels=["lab"], channel_secret_files=[str(secret)], environ={})
    assert list(one.channel_keys()) == [channel_id(channel_key("lab", b"s3cret"))]
    two = Config.from_env(channels=["lab", "open"], channel_secret_files=[f"lab={secret}"], environ={})
    assert set(two.channel_keys()) == {channel_id(channel_key("lab", b"s3cret")), channel_id(channel_key("open"))}
    with pytest.raises(ConfigError, match="NAME=FILE"):
        Config.from_env(channels=["a", "b"], channel_secret_files=[str(secret)], environ={})
    with pytest.raises(ConfigError, match="not joined"):
        Config.from_env(channels=["a"], channel_secret_files=[f"b={secret}"], environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        Config.from_env(channels=["a"], channel_secret_files=[str(tmp_path / "missing")], environ={}).channel_keys()
    assert Config.from_env(listen="none", environ={}).listen is None
    # kachery-p2p's HTTP API port is the HTTP gateway's default loopback port; --http wins over it,
    # and a bad value is an error only where a daemon starts (http_for_daemon)
    assert Config.from_env(environ={}).http_for_daemon() == (None, False)
    assert Config.from_env(environ={"KACHERY_P2P_API_PORT": "20431"}).http_for_daemon() == (("127.0.0.1", 20431), False)
    assert Config.from_env(http="8080", environ={"KACHERY_P2P_API_PORT": "20431"}).http_for_daemon() == \
        (("127.0.0.1", 8080), True)
    for bad in ("http", "0", "70000"):
        with pytest.raises(ConfigError, match="KACHERY_P2P_API_PORT"):
            Config.from_env(environ={"KACHERY_P2P_API_PORT": bad}).http_for_daemon()


def test_evict_cached_least_recently_used_first(store):
    import time as _time

    pinned = store.put_bytes(random_bytes(3000, seed=1))
    old = store.put_bytes(random_bytes(2 * CHUNK_SIZE + 1, seed=2), pinned=False)  # has a cached manifest
    _time.sleep(0.01)
    new = store.put_bytes(random_bytes(1000, seed=3), pinned=False)
    store.index.touch(new.sha1)
    evicted = store.evict_cached(limit_bytes=5000)
    assert set(evicted) == {old.sha1, old.manifest_sha1}
    assert store.info(old.sha1) is None and not store.object_path(old.sha1).exists()
    assert store.info(new.sha1) is not None and store.info(pinned.sha1) is not None
    assert store.evict_cached(limit_bytes=0) == [new.sha1]
    assert store.info(pinned.sha1) is not None  # stored-here objects are never evicted
