"""Many at once: 50 readers of one remote 100 MB file through a mount (half whole, half random
1 MB ranges), and 50 concurrent `kacheryfs load` of distinct files. Real daemons on 127.0.0.1.
Everything must be correct, each batch within 2 minutes."""

import hashlib
import random
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import write_random_file
from .mounting import KACHERYFS, Daemon
from .test_bitrot import assert_store_consistent
from .test_mount_network import LOCAL, wait_until_connected

MB = 1_000_000


@pytest.mark.timeout(400)
def test_50_readers_and_50_loads(stack, tmp_path):
    mount, daemon = stack
    a_env = Daemon(tmp_path / "a").env
    big = tmp_path / "big.bin"
    big_sha1 = write_random_file(big, 100 * MB, seed=50)
    rng = random.Random(50)
    small = []
    for i in range(50):  # a few under one chunk (fetched whole), most several chunks
        path = tmp_path / f"f{i}.bin"
        sha1 = write_random_file(path, rng.choice([300_000, rng.randrange(1 * MB, 4 * MB)]), seed=100 + i)
        small.append((path, sha1))
    stored = subprocess.run([KACHERYFS, "store", str(big), *(str(p) for p, _ in small)], env=a_env,
                            capture_output=True, text=True, check=True)
    uris = stored.stdout.split()[1:]
    a = daemon("a", "daemon", "--channel", "x", *LOCAL)
    a.wait_log("listening on")
    b = mount("b", "--channel", "x", *LOCAL)
    wait_until_connected(b, a)
    expected = big.read_bytes()
    remote = b.path("sha1", big_sha1)

    def reader(i: int) -> str:
        if i % 2 == 0:  # whole, sequentially
            h = hashlib.sha1()
            with open(remote, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            return "ok" if h.hexdigest() == big_sha1 else f"reader {i}: wrong sha1"
        ranges = random.Random(i)
        with open(remote, "rb") as f:
            for _ in range(8):  # random 1 MB ranges
                offset = ranges.randrange(0, 100 * MB - MB)
                f.seek(offset)
                if f.read(MB) != expected[offset:offset + MB]:
                    return f"reader {i}: wrong bytes at {offset}"
        return "ok"

    started = time.monotonic()
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(reader, range(50), timeout=120))
    readers_s = time.monotonic() - started
    assert results == ["ok"] * 50, [r for r in results if r != "ok"]

    started = time.monotonic()
    loads = [subprocess.Popen([KACHERYFS, "load", uri, "--dest", str(tmp_path / f"out{i}.bin")], env=b.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, uri in enumerate(uris)]
    deadline = started + 120
    failures = []
    for i, proc in enumerate(loads):
        try:
            _out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in loads:
                p.kill()
            raise AssertionError(f"load {i} not done within 2 minutes")
        if proc.returncode != 0:
            failures.append(err)
    loads_s = time.monotonic() - started
    assert not failures, failures[:3]
    for i, (_path, sha1) in enumerate(small):
        assert hashlib.sha1((tmp_path / f"out{i}.bin").read_bytes()).hexdigest() == sha1
    print(f"50 readers of 100 MB: {readers_s:.1f} s; 50 loads: {loads_s:.1f} s")
    assert_store_consistent(b.storage)
    assert b.proc.poll() is None and a.proc.poll() is None
