from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from kacheryfs.store import LocalStore

from .mounting import KACHERYFS, LOOPBACK_ONLY, Mount, cli_env


def pytest_configure(config):
    if shutil.which("fusermount3") is None:
        raise pytest.UsageError("fusermount3 is missing: run bash scripts/setup.sh")
    # Nodes started by tests listen on 127.0.0.1 only (a free port), in this process and in the
    # commands it runs; tests in network namespaces they create listen where they say (cli_env).
    os.environ.setdefault(LOOPBACK_ONLY[0], LOOPBACK_ONLY[1])


@pytest.fixture
def store(tmp_path) -> LocalStore:
    s = LocalStore(tmp_path / "storage")
    yield s
    s.close()


@pytest.fixture
def mount(tmp_path):
    m = Mount(tmp_path)
    try:
        yield m.start()
    finally:
        m.stop()


@pytest.fixture
def make_mount(tmp_path):
    """Factory for tests that restart mounts or use a special storage dir."""
    mounts: list[Mount] = []

    def make(storage: Path | None = None, root: Path | None = None) -> Mount:
        m = Mount(root or tmp_path, storage)
        mounts.append(m)
        return m

    try:
        yield make
    finally:
        for m in mounts:
            m.stop()


@pytest.fixture
def cli(tmp_path):
    """Run the real console script with this test's storage and config dirs."""
    env = cli_env(tmp_path / "storage", tmp_path / "config")

    def run(*args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([KACHERYFS, *args], env=env, capture_output=True, input=input, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"kacheryfs {' '.join(args)} failed: {result.stderr.decode()}")
        return result

    run.env = env
    return run


@pytest.fixture
def storage_env(tmp_path, monkeypatch):
    """Point the Python API at a fresh storage dir."""
    monkeypatch.setenv("KACHERY_STORAGE_DIR", str(tmp_path / "storage"))
    monkeypatch.setenv("KACHERY_P2P_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "storage"


def random_bytes(n: int, seed: int = 0) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def write_random_file(path: Path, n: int, seed: int = 0, block: int = 64 << 20) -> str:
    """Write n pseudo-random bytes; returns their SHA-1."""
    import hashlib

    import numpy as np

    rng = np.random.default_rng(seed)
    h = hashlib.sha1()
    with open(path, "wb") as f:
        left = n
        while left:
            piece = rng.integers(0, 256, min(block, left), dtype=np.uint8).tobytes()
            h.update(piece)
            f.write(piece)
            left -= len(piece)
    return h.hexdigest()


def sha1_of_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@pytest.fixture
async def cluster(tmp_path, nursery):
    """In-process nodes on 127.0.0.1 (tests/test_net.py's Cluster), stopped after the test."""
    from .test_net import Cluster

    c = Cluster(tmp_path, nursery)
    yield c
    for node in c.nodes:
        node.stop()
    # A task mid-way through a handler (back from a worker thread, say) still touches its store
    # before it next checks for cancellation: close the stores only once every node has stopped.
    with trio.fail_after(10):
        for node in c.nodes:
            await node.stopped.wait()
    for node in c.nodes:
        if hasattr(node, "store"):  # the bootstrap has none
            node.store.close()
            node.feed_sync.feeds.close()


@pytest.fixture
def stack(tmp_path):
    """Factories for real mounts and daemons in subprocesses, all stopped after the test."""
    from .mounting import Daemon

    started = []

    def mount(name, *args):
        m = Mount(tmp_path / name)
        (tmp_path / name).mkdir(exist_ok=True)
        started.append(m)
        return m.start(*args)

    def daemon(name, *args, **kwargs):
        d = Daemon(tmp_path / name, *args, **kwargs)
        started.append(d)
        return d.start()

    try:
        yield mount, daemon
    finally:
        for thing in reversed(started):
            thing.stop()


