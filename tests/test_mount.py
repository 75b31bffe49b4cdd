"""Real FUSE mounts: the daemon in a subprocess, ordinary tools (cp, cat, numpy) on the mount."""

import errno
import hashlib
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from kacheryfs.store import CHUNK_SIZE

from .conftest import random_bytes, sha1_of_file, write_random_file

URI_XATTR = "user.kachery.uri"


def uri_of(path) -> str:
    return os.getxattr(path, URI_XATTR).decode()


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1])
def test_cp_cat_roundtrip(mount, tmp_path, size):
    src = tmp_path / "src.bin"
    digest = write_random_file(src, size, seed=size)
    subprocess.run(["cp", str(src), str(mount.path("store"))], check=True, timeout=60)
    stored = mount.path("store", "src.bin")
    uri = uri_of(stored)
    assert uri.startswith(f"sha1://{digest}/src.bin")
    assert ("?manifest=" in uri) == (size > CHUNK_SIZE)
    by_hash = mount.path("sha1", digest)
    assert subprocess.run(["cat", str(by_hash)], capture_output=True, check=True).stdout == src.read_bytes()
    assert stored.read_bytes() == src.read_bytes()
    assert uri_of(by_hash).startswith(f"sha1://{digest}")
    assert digest in os.listdir(mount.path("sha1"))
    assert os.stat(by_hash).st_size == size


@pytest.mark.timeout(300)
def test_300mb_roundtrip_and_mmap_slicing(mount, tmp_path):
    src = tmp_path / "big.npy"
    n = 300_000_000 // 8
    arr = np.arange(n, dtype=np.float64)
    np.save(src, arr)
    digest = sha1_of_file(src)
    subprocess.run(["cp", str(src), str(mount.path("store"))], check=True, timeout=240)
    assert sha1_of_file(mount.path("sha1", digest)) == digest
    assert sha1_of_file(mount.path("store", "big.npy")) == digest
    mapped = np.load(mount.path("sha1", digest), mmap_mode="r")
    assert mapped.shape == (n,)
    assert np.array_equal(mapped[1_000_000:1_000_100], arr[1_000_000:1_000_100])
    assert mapped[-1] == n - 1
    del mapped
    os.unlink(src)


def test_numpy_save_directly_into_store(mount):
    arr = np.random.default_rng(1).standard_normal((300, 400))
    np.save(mount.path("store", "a.npy"), arr)
    uri = uri_of(mount.path("store", "a.npy"))
    sha1 = uri[len("sha1://"):][:40]
    assert np.array_equal(np.load(mount.path("sha1", sha1)), arr)
    assert np.array_equal(np.load(mount.path("sha1", sha1), mmap_mode="r")[10:20], arr[10:20])


def test_overwrite_append_rename_unlink(mount):
    p = mount.path("store", "notes.txt")
    p.write_text("first\n")
    first = uri_of(p)
    p.write_text("second\n")
    assert uri_of(p) != first and p.read_text() == "second\n"
    with open(p, "a") as f:
        f.write("more\n")
    assert p.read_text() == "second\nmore\n"
    assert uri_of(p).startswith("sha1://" + hashlib.sha1(b"second\nmore\n").hexdigest())
    os.rename(p, mount.path("store", "renamed.txt"))
    assert os.listdir(mount.path("store")) == ["renamed.txt"]
    os.unlink(mount.path("store", "renamed.txt"))
    assert os.listdir(mount.path("store")) == []
    # the content stays addressable by hash
    assert mount.path("sha1", hashlib.sha1(b"second\nmore\n").hexdigest()).read_text() == "second\nmore\n"


def test_mmap_write_into_store(mount):
    import mmap

    p = mount.path("store", "mapped.bin")
    with open(p, "wb") as f:
        f.write(b"\0" * 8192)
    with open(p, "r+b") as f:
        with mmap.mmap(f.fileno(), 0) as m:
            m[100:105] = b"HELLO"
            m.flush()
    expected = bytearray(8192)
    expected[100:105] = b"HELLO"
    assert p.read_bytes() == bytes(expected)
    assert uri_of(p).startswith("sha1://" + hashlib.sha1(bytes(expected)).hexdigest())


def test_names_survive_restart(make_mount):
    m = make_mount().start()
    m.path("store", "kept.txt").write_text("still here")
    uri = uri_of(m.path("store", "kept.txt"))
    m.stop()
    m2 = make_mount().start()
    assert m2.path("store", "kept.txt").read_text() == "still here"
    assert uri_of(m2.path("store", "kept.txt")) == uri


@pytest.mark.timeout(240)
def test_16_writers_and_16_readers(mount):
    existing = {}
    for i in range(16):
        data = random_bytes(3 * CHUNK_SIZE + i, seed=100 + i)
        mount.path("store", f"pre{i}").write_bytes(data)
        existing[hashlib.sha1(data).hexdigest()] = data

    def writer(i: int) -> tuple[str, str]:
        data = random_bytes(2 * CHUNK_SIZE + 17 * i, seed=i)
        with open(mount.path("store", f"w{i}.bin"), "wb") as f:
            for off in range(0, len(data), 200_000):  # odd-sized writes, interleaved with others
                f.write(data[off:off + 200_000])
        return hashlib.sha1(data).hexdigest(), uri_of(mount.path("store", f"w{i}.bin"))

    def reader(sha1: str) -> bool:
        for _ in range(3):
            with open(mount.path("sha1", sha1), "rb") as f:
                if f.read() != existing[sha1]:
                    return False
        return True

    with ThreadPoolExecutor(32) as pool:
        writes = [pool.submit(writer, i) for i in range(16)]
        reads = [pool.submit(reader, sha1) for sha1 in existing]
        results = [w.result(timeout=180) for w in writes]
        assert all(r.result(timeout=180) for r in reads)
    for i, (sha1, uri) in enumerate(results):
        assert uri.startswith(f"sha1://{sha1}/w{i}.bin")
        assert sha1_of_file(mount.path("sha1", sha1)) == sha1
    assert len(os.listdir(mount.path("store"))) == 32


def test_bad_input_errnos(mount):
    store_dir = mount.path("store")
    mount.path("store", "ok").write_bytes(b"committed")
    sha1 = hashlib.sha1(b"committed").hexdigest()

    def expect(err, fn, *args):
        with pytest.raises(OSError) as info:
            fn(*args)
        assert info.value.errno in err, f"{fn.__name__}{args}: {info.value}"

    expect({errno.ENAMETOOLONG}, open, store_dir / ("x" * 256), "wb")
    expect({errno.ENOENT}, open, mount.path("sha1", "not-a-hash"), "rb")
    expect({errno.ENOENT}, open, mount.path("sha1", "0" * 40), "rb")
    expect({errno.ENOENT}, open, mount.path("sha1", sha1.upper()), "rb")
    expect({errno.EROFS, errno.EACCES}, open, mount.path("sha1", sha1), "r+b")
    expect({errno.EROFS, errno.EACCES}, open, mount.path("sha1", "1" * 40), "wb")
    expect({errno.EROFS, errno.EACCES}, os.unlink, mount.path("sha1", sha1))
    expect({errno.EACCES, errno.EPERM}, open, mount.path("feeds", "x"), "wb")
    expect({errno.EACCES, errno.EPERM}, open, mount.path("newfile"), "wb")
    expect({errno.EACCES, errno.EPERM}, os.mkdir, mount.path("sub"))
    expect({errno.EROFS}, os.mkdir, mount.path("sha1", "sub"))
    expect({errno.ENOENT}, os.unlink, store_dir / "missing")
    # nothing committed was lost
    assert mount.path("store", "ok").read_bytes() == b"committed"
    assert mount.path("sha1", sha1).read_bytes() == b"committed"
    assert mount.proc.poll() is None


def _storage_files_agree_with_index(storage):
    from kacheryfs.store import LocalStore

    s = LocalStore(storage)
    try:
        on_disk = {}
        for dirpath, _d, files in os.walk(storage / "sha1"):
            for name in files:
                on_disk[name] = os.path.join(dirpath, name)
        indexed = {r.sha1 for r in s.list_objects()}
        assert indexed == set(on_disk)
        for sha1, path in on_disk.items():
            assert sha1_of_file(path) == sha1, f"partial or corrupt object {sha1}"
        assert list((storage / "tmp").iterdir()) == []
    finally:
        s.close()


@pytest.mark.timeout(240)
def test_kill9_mid_write_leaves_no_partial_object(make_mount):
    import time

    m = make_mount().start()
    m.path("store", "before.txt").write_text("committed before the crash")
    writer = subprocess.Popen(["dd", "if=/dev/urandom", f"of={m.path('store', 'huge.bin')}", "bs=1M",
                               "count=4000"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            parts = list((m.storage / "tmp").glob("*.part"))
            if parts and parts[0].stat().st_size > 50 * CHUNK_SIZE:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the large write never started")
        m.kill9()  # daemon and its auto_unmount helper: the mount goes stale
    finally:
        writer.kill()
        writer.wait(timeout=30)
    with pytest.raises(OSError) as info:
        os.listdir(m.mountpoint)
    assert info.value.errno == errno.ENOTCONN  # stale mount left behind

    m2 = make_mount().start()  # the next mount cleans the stale mountpoint up
    assert m2.path("store", "before.txt").read_text() == "committed before the crash"
    # dd dup2()s its output and closes the first fd before writing, which commits an empty file;
    # nothing of the interrupted write may be visible.
    if "huge.bin" in os.listdir(m2.path("store")):
        assert os.stat(m2.path("store", "huge.bin")).st_size == 0
    m2.stop()
    _storage_files_agree_with_index(m.storage)


@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as a full disk needs root")
    where = tmp_path / "tmpfs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_disk_full(make_mount, small_tmpfs, tmp_path):
    m = make_mount(storage=small_tmpfs / "storage").start()
    keep = random_bytes(4 * CHUNK_SIZE, seed=7)
    m.path("store", "keep.bin").write_bytes(keep)
    src = tmp_path / "too-big.bin"
    write_random_file(src, 40 * CHUNK_SIZE, seed=8)
    result = subprocess.run(["cp", str(src), str(m.path("store"))], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "No space left on device" in result.stderr
    with pytest.raises(OSError) as info:  # Python's writer sees it too, at write or at close
        with open(m.path("store", "too-big-2.bin"), "wb") as f:
            f.write(src.read_bytes())
    assert info.value.errno == errno.ENOSPC
    assert sorted(os.listdir(m.path("store"))) == ["keep.bin"]
    assert m.path("store", "keep.bin").read_bytes() == keep
    assert list((m.storage / "tmp").iterdir()) == []  # no partial object left behind
    assert "No space left" in m.read_log() or "storage" in m.read_log().lower()
    m.path("store", "small-after.txt").write_text("there is room again")  # still works
    m.stop()
    _storage_files_agree_with_index(m.storage)


def test_statfs_and_blocksize(mount):
    st = os.statvfs(mount.mountpoint)
    assert st.f_bavail > 0 and st.f_namemax == 255
    mount.path("store", "x").write_bytes(b"1")
    assert os.stat(mount.path("store", "x")).st_blksize == 1 << 20


def test_read_ahead_is_raised_to_1mib(mount):
    if os.geteuid() != 0:
        pytest.skip("read_ahead_kb is writable by root only")
    device = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mount.mountpoint):
                device = fields[2]
    import time

    path = f"/sys/class/bdi/{device}/read_ahead_kb"
    deadline = time.monotonic() + 10
    while open(path).read().strip() != "1024":
        assert time.monotonic() < deadline, open(path).read()
        time.sleep(0.05)
