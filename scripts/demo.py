"""The kacheryfs demo: a real mount in a temporary directory, ordinary tools on it.

One node for now: copy a file and a numpy array into store/, read them back by hash through sha1/
with `cat` and `np.load`, print the URIs and timings, unmount. Exits 0 on success.
"""

from __future__ import annotations

import hashlib
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


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="kacheryfs-demo-") as tmp:
        root = Path(tmp)
        env = dict(os.environ, KACHERY_STORAGE_DIR=str(root / "storage"),
                   KACHERY_P2P_CONFIG_DIR=str(root / "config"))
        mnt = root / "kachery"
        log = root / "mount.log"
        print(f"kacheryfs demo in {root}")
        t0 = time.perf_counter()
        proc = subprocess.Popen([KACHERYFS, "-v", "mount", str(mnt), "--channel", "demo"], env=env,
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_mounted(mnt, proc, log)
            step("kacheryfs mount", time.perf_counter() - t0, str(mnt))

            text = root / "hello.txt"
            text.write_text("Hello from kacheryfs: shared by content hash.\n")
            t = time.perf_counter()
            subprocess.run(["cp", str(text), str(mnt / "store")], check=True)
            step("cp hello.txt store/", time.perf_counter() - t)
            uri = os.getxattr(mnt / "store" / "hello.txt", "user.kachery.uri").decode()
            sha1 = uri[7:47]
            t = time.perf_counter()
            out = subprocess.run(["cat", str(mnt / "sha1" / sha1)], check=True, capture_output=True).stdout
            step("cat sha1/<hash>", time.perf_counter() - t, uri)
            assert out == text.read_bytes(), "bytes read by hash differ"

            arr = np.random.default_rng(0).standard_normal((2000, 5000))  # 80 MB of float64
            npy = root / "array.npy"
            np.save(npy, arr)
            t = time.perf_counter()
            subprocess.run(["cp", str(npy), str(mnt / "store")], check=True)
            dt = time.perf_counter() - t
            step("cp array.npy store/ (80 MB)", dt, f"{npy.stat().st_size / dt / 1e6:.0f} MB/s")
            uri = subprocess.run([KACHERYFS, "uri", str(mnt / "store" / "array.npy")], env=env,
                                 check=True, capture_output=True, text=True).stdout.strip()
            sha1 = uri[7:47]
            t = time.perf_counter()
            loaded = np.load(mnt / "sha1" / sha1)
            dt = time.perf_counter() - t
            step("np.load(sha1/<hash>)", dt, f"{arr.nbytes / dt / 1e6:.0f} MB/s")
            assert np.array_equal(loaded, arr), "array read by hash differs"
            t = time.perf_counter()
            part = np.load(mnt / "sha1" / sha1, mmap_mode="r")[1000:1010]
            step("np.load(mmap_mode='r')[1000:1010]", time.perf_counter() - t)
            assert np.array_equal(part, arr[1000:1010])
            del part
            assert hashlib.sha1(npy.read_bytes()).hexdigest() == sha1
            print(f"  URI of the array: {uri}")
            print("\n" + subprocess.run([KACHERYFS, "status"], env=env, capture_output=True, text=True).stdout)
        finally:
            t = time.perf_counter()
            subprocess.run([KACHERYFS, "unmount", str(mnt)], env=env, capture_output=True)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            step("kacheryfs unmount", time.perf_counter() - t)
        print("demo: OK")
        return 0


if __name__ == "__main__":
    sys.exit(main())
