"""The console script and the Python API, end to end."""

import hashlib
import os

import numpy as np
import pytest

import kacheryfs as kfs
from kacheryfs.errors import InvalidURI, ObjectNotFound
from kacheryfs.store import CHUNK_SIZE

from .conftest import write_random_file


def test_cli_store_load_cat_uri(cli, tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("alpha\n")
    big = tmp_path / "big.bin"
    digest = write_random_file(big, 2 * CHUNK_SIZE + 1)
    out = cli("store", str(a), str(big)).stdout.decode().splitlines()
    assert out[0] == "sha1://" + hashlib.sha1(b"alpha\n").hexdigest() + "/a.txt"
    assert out[1].startswith(f"sha1://{digest}/big.bin?manifest=")
    # `uri` of a local file hashes it (nothing stored) and agrees with `store`
    assert cli("uri", str(big)).stdout.decode().strip() == out[1]
    local_path = cli("load", out[0]).stdout.decode().strip()
    assert open(local_path).read() == "alpha\n"
    dest = tmp_path / "copy.bin"
    cli("load", out[1], "--dest", str(dest))
    assert dest.read_bytes() == big.read_bytes()
    assert cli("cat", out[0]).stdout == b"alpha\n"
    assert cli("cat", hashlib.sha1(b"alpha\n").hexdigest()).stdout == b"alpha\n"  # a bare hash works
    status = cli("status").stdout.decode()
    assert "objects:  2 files" in status and "mounts:   none" in status  # the chunk manifest is no file


@pytest.mark.parametrize("args,message", [
    (("load", "sha1://nothex/x"), "Not a valid kachery URI"),
    (("cat", "http://example.org/x"), "neither a sha1:// URI nor a bare 40-hex hash"),
    (("load", "sha1://" + "0" * 40 + "/x"), "not in the local store"),
    (("store", "/nonexistent/file"), "No such file or directory: /nonexistent/file"),
    (("uri", "/nonexistent/file"), "No such file or directory: /nonexistent/file"),
    (("unmount", "/tmp"), "not mounted"),
])
def test_cli_errors_are_one_clear_line(cli, args, message):
    result = cli(*args, check=False)
    assert result.returncode != 0
    err = result.stderr.decode()
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_uri_and_status_with_mount(cli, mount):
    (mount.path("store") / "m.txt").write_text("mounted\n")
    uri = cli("uri", str(mount.path("store", "m.txt")), check=True).stdout.decode().strip()
    assert uri == "sha1://" + hashlib.sha1(b"mounted\n").hexdigest() + "/m.txt"
    status = cli("status").stdout.decode()
    assert f"mount:    {mount.mountpoint}" in status
    # the CLI and the mount share one store: what the mount stored, the CLI loads
    assert cli("cat", uri).stdout == b"mounted\n"


def test_api_roundtrips(storage_env, tmp_path):
    uri = kfs.store_text("hello")
    assert uri.endswith("/file.txt") and kfs.load_text(uri) == "hello"
    obj = {"a": [1, 2, 3], "b": {"c": None}}
    assert kfs.load_object(kfs.store_object(obj)) == obj
    arr = np.random.default_rng(0).standard_normal((1000, 300))  # 2.4 MB: has a manifest
    uri = kfs.store_npy(arr)
    assert "?manifest=" in uri
    assert np.array_equal(kfs.load_npy(uri), arr)
    mapped = kfs.load_npy(uri, mmap_mode="r")
    assert np.array_equal(mapped[500:510], arr[500:510])
    f = tmp_path / "data.bin"
    f.write_bytes(b"\x00\x01" * 1000)
    uri = kfs.store_file(f)
    assert uri.endswith("/data.bin")
    assert open(kfs.load_file(uri), "rb").read() == f.read_bytes()
    assert kfs.load_file(uri).startswith(str(storage_env))


def test_api_errors(storage_env):
    with pytest.raises(InvalidURI):
        kfs.load_text("not a uri")
    with pytest.raises(ObjectNotFound):
        kfs.load_text("sha1://" + "1" * 40 + "/x.txt")
    with pytest.raises(kfs.KacheryError, match="JSON"):
        kfs.store_object({"x": object()})
    with pytest.raises(kfs.KacheryError, match="not JSON"):
        kfs.load_object(kfs.store_text("{not json"))


def test_api_sees_what_the_mount_stored(mount, monkeypatch):
    monkeypatch.setenv("KACHERY_STORAGE_DIR", str(mount.storage))
    arr = np.arange(10_000, dtype=np.int32)
    np.save(mount.path("store", "a.npy"), arr)
    uri = os.getxattr(mount.path("store", "a.npy"), "user.kachery.uri").decode()
    assert np.array_equal(kfs.load_npy(uri), arr)
