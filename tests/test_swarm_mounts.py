"""A flash crowd through mounts: several nodes `cp` one file from `sha1/` at the same moment, while
its only seeder uploads at a capped rate. Each reader gets the right bytes, and the readers trade
chunks: the seeder sends far fewer than one copy per reader (read from its counters)."""

import hashlib
import json
import os
import subprocess

import pytest

from .mounting import KACHERYFS, Mount

LOCAL = ["--listen", "127.0.0.1:0"]
MB = 1_000_000
SIZE = 24 * 1024 * 1024  # 24 chunks
READERS = 5


@pytest.mark.timeout(180)
def test_readers_cp_from_their_mounts_at_once_and_trade_chunks(stack, tmp_path, monkeypatch):
    mount, _daemon = stack
    monkeypatch.setenv("KACHERYFS_TEST_SERVE_RATE", str(8 * MB))  # the seeder only: 3 s per copy
    seeder = mount("seeder", "--channel", "crowd", *LOCAL)
    monkeypatch.delenv("KACHERYFS_TEST_SERVE_RATE")
    data = os.urandom(SIZE)
    seeder.path("store", "data.bin").write_bytes(data)
    sha1 = hashlib.sha1(data).hexdigest()
    readers = [mount(f"r{i}", "--channel", "crowd", *LOCAL) for i in range(READERS)]

    copies = []
    for i, reader in enumerate(readers):  # all at once
        dest = tmp_path / f"copy{i}.bin"
        copies.append((dest, subprocess.Popen(["cp", str(reader.path("sha1", sha1)), str(dest)],
                                              stderr=subprocess.PIPE)))
    for dest, proc in copies:
        _, err = proc.communicate(timeout=150)
        assert proc.returncode == 0, err
        assert hashlib.sha1(dest.read_bytes()).hexdigest() == sha1

    status = json.loads(subprocess.run([KACHERYFS, "status", "--json"], env=seeder.env, capture_output=True,
                                       text=True, timeout=30, check=True).stdout)
    served = sum(status["daemon"]["served_bytes"].values())
    fetched = []
    for reader in readers:
        st = json.loads(subprocess.run([KACHERYFS, "status", "--json"], env=reader.env, capture_output=True,
                                       text=True, timeout=30, check=True).stdout)
        fetched.append(st["daemon"]["fetched_bytes"])
    print(f"seeder served {served / SIZE:.2f} copies to {READERS} readers; fetched {[f / SIZE for f in fetched]}")
    assert all(f >= SIZE for f in fetched)
    # the rest came from the other readers: 1.5-1.9 copies measured; without swarming (KACHERYFS_SWARM=0,
    # only whole copies re-served) 2.7, and one copy per reader without any re-serving
    assert served < 2.4 * SIZE, served / SIZE
