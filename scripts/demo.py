"""The kacheryfs demo: three nodes with real mounts on this machine, talking over loopback.

alice and bob join channel 'lab', carol joins 'other'; they find each other with no server.
alice copies a file and a numpy array into store/; bob reads them by hash through sha1/ with `cat`
and `np.load` (a lazy mmap slice first, then the whole array); carol gets ENOENT. Prints URIs and
timings, unmounts, exits 0 on success.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KACHERYFS = str(Path(sys.executable).parent / "kacheryfs")


def step(label: str, seconds: float, detail: str = "") -> None:
    print(f"  {label:<44} {seconds * 1000:8.1f} ms  {detail}")


def wait_mounted(mountpoint: Path, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"demo: the mount exited early:\n{log.read_text()}")
        try:
            if (mountpoint / "store").is_dir():
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("demo: the mount did not come up within 20 s")


class Node:
    """One scientist's machine: a storage dir, a config dir (node key) and a mount."""

    def __init__(self, root: Path, name: str, discovery: Path):
        self.name = name
        self.dir = root / name
        self.env = dict(os.environ, KACHERY_STORAGE_DIR=str(self.dir / "storage"),
                        KACHERY_P2P_CONFIG_DIR=str(self.dir / "config"), KACHERYFS_DISCOVERY_DIR=str(discovery))
        self.mnt = self.dir / "kachery"
        self.log = self.dir / "mount.log"
        self.proc = None

    def mount(self, channel: str) -> None:
        self.dir.mkdir(parents=True)
        self.proc = subprocess.Popen(
            [KACHERYFS, "-v", "mount", str(self.mnt), "--channel", channel, "--listen", "127.0.0.1:0"],
            env=self.env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_mounted(self.mnt, self.proc, self.log)

    def kacheryfs(self, *args: str) -> str:
        return subprocess.run([KACHERYFS, *args], env=self.env, check=True, capture_output=True, text=True).stdout

    def unmount(self) -> None:
        if self.proc is None:
            return
        subprocess.run([KACHERYFS, "unmount", str(self.mnt)], env=self.env, capture_output=True)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="kacheryfs-demo-") as tmp:
        root = Path(tmp)
        discovery = root / "discovery"  # same-machine discovery, kept inside the demo
        alice, bob, carol = (Node(root, n, discovery) for n in ("alice", "bob", "carol"))
        print(f"kacheryfs demo in {root}: alice and bob share channel 'lab', carol is in 'other'")
        try:
            t = time.perf_counter()
            alice.mount("lab")
            bob.mount("lab")
            carol.mount("other")
            step("three mounts up (no server)", time.perf_counter() - t)

            text = root / "hello.txt"
            text.write_text("Hello from alice, shared by content hash.\n")
            t = time.perf_counter()
            subprocess.run(["cp", str(text), str(alice.mnt / "store")], check=True)
            step("alice: cp hello.txt store/", time.perf_counter() - t)
            uri = alice.kacheryfs("uri", str(alice.mnt / "store" / "hello.txt")).strip()
            sha1 = uri[7:47]
            print(f"  URI: {uri}")

            arr = np.random.default_rng(0).standard_normal((4000, 5000))  # 160 MB of float64
            npy = root / "array.npy"
            np.save(npy, arr)
            t = time.perf_counter()
            subprocess.run(["cp", str(npy), str(alice.mnt / "store")], check=True)
            dt = time.perf_counter() - t
            step("alice: cp array.npy store/ (160 MB)", dt, f"{npy.stat().st_size / dt / 1e6:.0f} MB/s")
            arr_uri = alice.kacheryfs("uri", str(alice.mnt / "store" / "array.npy")).strip()
            arr_sha1 = arr_uri[7:47]
            print(f"  URI: {arr_uri}")

            deadline = time.monotonic() + 20  # until bob's node has found alice's
            while True:
                try:
                    t = time.perf_counter()
                    out = subprocess.run(["cat", str(bob.mnt / "sha1" / sha1)], capture_output=True, check=True).stdout
                    break
                except subprocess.CalledProcessError:
                    if time.monotonic() > deadline:
                        sys.exit("demo: bob never found alice's file")
                    time.sleep(0.2)
            step("bob: cat sha1/<hash> (from alice)", time.perf_counter() - t)
            assert out == text.read_bytes(), "bytes differ"

            t = time.perf_counter()
            part = np.load(bob.mnt / "sha1" / arr_sha1, mmap_mode="r")[3000:3010]
            assert np.array_equal(part, arr[3000:3010])
            stats = json.loads(os.getxattr(bob.mnt, "user.kachery.stats"))
            step("bob: np.load(mmap_mode='r')[3000:3010]", time.perf_counter() - t,
                 f"fetched {stats['fetched_bytes'] / 1e6:.1f} MB of 160 MB (lazy)")
            del part
            t = time.perf_counter()
            loaded = np.load(bob.mnt / "sha1" / arr_sha1)
            dt = time.perf_counter() - t
            step("bob: np.load(sha1/<hash>) (whole array)", dt, f"{arr.nbytes / dt / 1e6:.0f} MB/s")
            assert np.array_equal(loaded, arr), "array differs"
            assert hashlib.sha1(npy.read_bytes()).hexdigest() == arr_sha1

            t = time.perf_counter()
            try:
                open(carol.mnt / "sha1" / sha1, "rb")
                sys.exit("demo: carol (another channel) could read alice's file")
            except FileNotFoundError:
                step("carol: open sha1/<hash> -> ENOENT (not in 'lab')", time.perf_counter() - t)
            print("\nbob's status:\n" + bob.kacheryfs("status"))
        finally:
            t = time.perf_counter()
            for node in (carol, bob, alice):
                node.unmount()
            step("unmount all", time.perf_counter() - t)
        print("demo: OK")
        return 0


if __name__ == "__main__":
    sys.exit(main())
