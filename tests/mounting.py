"""Real mounts for tests: the daemon always runs in a subprocess (never a thread of the test
process: a close() here could wait on a flush the daemon cannot serve), and is always unmounted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

KACHERYFS = str(Path(sys.executable).parent / "kacheryfs")


def fuse_mounted(mountpoint: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(mountpoint) and line.split()[2].startswith("fuse") for line in f)


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


LOOPBACK_ONLY = ("KACHERYFS_LISTEN", "127.0.0.1:0")  # a test's nodes outside its own namespaces


def cli_env(storage: Path, config: Path, netns: bool = False) -> dict[str, str]:
    """The environment of a test's kacheryfs commands. Outside a namespace the test made (``netns``),
    nodes listen on 127.0.0.1 only, on a free port, unless a flag says otherwise; inside one, on the
    default address (all of the namespace's interfaces)."""
    env = dict(os.environ)
    if netns:
        env.pop(LOOPBACK_ONLY[0], None)
    else:
        env.setdefault(*LOOPBACK_ONLY)
    env["KACHERY_STORAGE_DIR"] = str(storage)
    env["KACHERY_P2P_CONFIG_DIR"] = str(config)
    # same-machine discovery stays inside the test: nodes of one test share <test tmp>/discovery
    env.setdefault("KACHERYFS_DISCOVERY_DIR", str(storage.parent.parent / "discovery"))
    # and so does the registry of running daemons (kacheryfs/running.py), out of the real home
    env.setdefault("KACHERYFS_RUNTIME_DIR", str(storage.parent.parent / "running"))
    return env


class Mount:
    def __init__(self, root: Path, storage: Path | None = None, prefix: list[str] = ()):
        self.prefix = list(prefix)  # e.g. nsenter into a network namespace (tests/nat_topology.py)
        self.root = root
        self.mountpoint = root / "mnt"
        self.storage = storage or root / "storage"
        self.config = root / "config"
        self.log_path = root / "mount.log"
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return cli_env(self.storage, self.config, netns=bool(self.prefix))

    def start(self, *args: str, timeout: float = 20.0) -> "Mount":
        """Mount; ``args`` are extra flags (channels, --listen, --bootstrap...)."""
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, KACHERYFS, "mount", str(self.mountpoint), *args], env=self.env,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                # This daemon's registration, not just a mount: after a kill -9 the stale mount is
                # still listed, and the kernel may answer a stat of store/ from its cache.
                registered = (self.config / "mounts" / f"{self.proc.pid}.json").exists()
                if registered and fuse_mounted(self.mountpoint) and (self.mountpoint / "store").is_dir():
                    return self
            except OSError:  # a stale mount the new daemon has not cleaned up yet
                pass
            time.sleep(0.05)
        raise RuntimeError(f"mount not ready after {timeout}s:\n{self.read_log()}")

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)

    def kill9(self) -> None:
        """Kill the daemon and its auto_unmount helper: leaves a stale (ENOTCONN) mount."""
        assert self.proc is not None
        # The auto_unmount helper (fusermount3, in a session of its own) goes first: killed after the
        # daemon, it could see the daemon's end and unmount cleanly before its own SIGKILL arrived.
        for pid in children_of(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                subprocess.run([KACHERYFS, "unmount", str(self.mountpoint)], env=self.env,
                               capture_output=True, timeout=30)
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
        finally:
            if fuse_mounted(self.mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
            if self.proc is not None and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            if hasattr(self, "log"):
                self.log.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """`kacheryfs bootstrap` or `kacheryfs daemon` in a subprocess, always stopped."""

    def __init__(self, root: Path, *args: str, program: str = KACHERYFS, prefix: list[str] = ()):
        root.mkdir(parents=True, exist_ok=True)
        self.prefix = list(prefix)
        self.root = root
        self.args = args
        self.command = [program]
        self.log_path = root / "daemon.log"
        self.env = cli_env(root / "storage", root / "config", netns=bool(self.prefix))
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Daemon":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.prefix, *self.command, *self.args], env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.read_log():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited:\n{self.read_log()}")
            time.sleep(0.05)
        raise RuntimeError(f"{text!r} not in the log after {timeout}s:\n{self.read_log()}")

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if hasattr(self, "log"):
            self.log.close()
