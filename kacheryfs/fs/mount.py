"""Serving a tree at a mountpoint: stale-mount cleanup, the pyfuse3 session under trio, signals,
registration. What is mounted is assembled in kacheryfs/daemon.py."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pyfuse3
import trio

from ..config import Config
from ..errors import MountError, UnmountError
from .operations import KacheryOperations
from .tree import VirtualTree

log = logging.getLogger(__name__)

READ_AHEAD_KB = 1024  # 1 MiB read requests instead of 128 KiB (see docs/architecture.md)
FUSE_DEVICE = "/dev/fuse"
FUSE_CONF = "/etc/fuse.conf"


def fuse_device_problem(device: str = FUSE_DEVICE) -> str | None:
    """Why a mount cannot open the FUSE device, as advice; None if it can."""
    try:
        os.close(os.open(device, os.O_RDWR))
        return None
    except FileNotFoundError:
        return (f"{device} does not exist: load the FUSE module (sudo modprobe fuse); in a container, "
                "pass the device in (docker run --device /dev/fuse --cap-add SYS_ADMIN ...)")
    except PermissionError:
        return (f"cannot open {device} (permission denied): it must be readable and writable by you "
                f"(usually mode 0666; ask an administrator: sudo chmod 0666 {device})")
    except OSError as exc:
        return f"cannot open {device}: {exc.strerror}"


def allow_other_problem(uid: int, fuse_conf: str = FUSE_CONF) -> str | None:
    """Why --allow-other would be refused (fusermount3 allows it to root, or to anyone once
    /etc/fuse.conf says user_allow_other), as advice; None if it is allowed."""
    if uid == 0:
        return None
    try:
        lines = Path(fuse_conf).read_text().splitlines()
    except OSError:
        lines = []
    if any(line.strip() == "user_allow_other" for line in lines):
        return None
    return (f"--allow-other needs the line 'user_allow_other' in {fuse_conf} (an administrator adds it: "
            f"echo user_allow_other | sudo tee -a {fuse_conf})")


def _fuse_mounts() -> dict[str, str]:
    """Mountpoint -> filesystem type of every FUSE mount in /proc/mounts."""
    out = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2].startswith("fuse") and parts[2] != "fusectl":
                out[parts[1].replace("\\040", " ")] = parts[2]
    return out


def is_mounted(mountpoint: str | os.PathLike) -> bool:
    return os.path.realpath(mountpoint) in _fuse_mounts()


def fusermount_unmount(mountpoint: str | os.PathLike, lazy: bool = False) -> subprocess.CompletedProcess:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise UnmountError("fusermount3 not found (install the fuse3 package)")
    args = [tool, "-u"] + (["-z"] if lazy else []) + [os.fspath(mountpoint)]
    return subprocess.run(args, capture_output=True, text=True)


def clean_stale_mount(mountpoint: Path) -> bool:
    """A mount whose daemon died leaves ENOTCONN behind: unmount it. Refuse a live mount."""
    if str(mountpoint) not in _fuse_mounts():
        return False
    try:
        os.listdir(mountpoint)  # not stat(): the kernel may answer that from its attribute cache
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO):
            log.warning("cleaning up stale mount at %s", mountpoint)
            fusermount_unmount(mountpoint, lazy=True)
            return True
        raise
    raise MountError(f"{mountpoint} is already mounted (kacheryfs unmount {mountpoint} first)")


def _tune_read_ahead(mountpoint: Path) -> None:
    """Ask the kernel for 1 MiB read requests (root only; harmless to fail)."""
    # The device number comes from mountinfo: a stat() of the mountpoint would wait for this
    # very daemon, which is not serving requests yet.
    device = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4] == str(mountpoint):
                device = fields[2]
    if device is None:
        return
    path = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
    try:
        path.write_text(str(READ_AHEAD_KB))
    except OSError as exc:
        log.debug("could not raise read_ahead_kb: %s", exc)


async def _tune_read_ahead_when_served(mountpoint: Path) -> None:
    """The kernel resets read_ahead_kb when the daemon answers FUSE INIT; a stat() returns only
    after that answer, so set it then."""
    try:
        await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    except OSError:
        return
    _tune_read_ahead(mountpoint)


class MountRegistration:
    """A JSON file in the config dir naming this mount, so `status` and the Python API find it."""

    def __init__(self, config: Config, mountpoint: Path):
        self.path = config.mounts_dir / f"{os.getpid()}.json"
        config.mounts_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(config.config_dir, 0o700)
        self.path.write_text(json.dumps({
            "pid": os.getpid(), "mountpoint": str(mountpoint), "storage_dir": str(config.storage_dir),
            "channels": list(config.channels),
        }))

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def live_mounts(config: Config) -> list[dict]:
    """Registered mounts whose daemon is alive and whose mountpoint is mounted."""
    out = []
    if not config.mounts_dir.is_dir():
        return out
    mounted = _fuse_mounts()
    for entry in config.mounts_dir.glob("*.json"):
        try:
            info = json.loads(entry.read_text())
            os.kill(int(info["pid"]), 0)
        except (ValueError, KeyError, OSError):
            entry.unlink(missing_ok=True)
            continue
        if info["mountpoint"] in mounted:
            out.append(info)
    return out


def prepare_mountpoint(mountpoint: str | os.PathLike) -> Path:
    """The absolute mountpoint, created if need be: a stale mount there is cleaned up first; a live
    mount or a non-empty directory is refused."""
    mountpoint = Path(mountpoint).expanduser().absolute()
    clean_stale_mount(mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    if any(mountpoint.iterdir()):
        raise MountError(f"{mountpoint} is not empty")
    return mountpoint


class FuseMount:
    """The tree served at a mountpoint through pyfuse3, registered for `status` while mounted.

    ``with FuseMount(...) as mount:`` mounts (the kernel queues requests until ``serve`` runs) and
    always unmounts on the way out."""

    def __init__(self, tree: VirtualTree, mountpoint: Path, config: Config, debug: bool = False):
        self.tree = tree
        self.mountpoint = mountpoint
        self.config = config
        self.debug = debug
        self.registration: MountRegistration | None = None

    def __enter__(self) -> "FuseMount":
        options = set(pyfuse3.default_options)
        options |= {"fsname=kacheryfs", "subtype=kacheryfs", "auto_unmount"}
        if self.config.allow_other:
            # others may enter; the kernel then checks the modes the tree reports (read-only for them)
            options |= {"allow_other", "default_permissions"}
        if self.debug:
            options.add("debug")
        problem = fuse_device_problem() or (allow_other_problem(os.getuid()) if self.config.allow_other else None)
        if problem is not None:
            raise MountError(f"{self.mountpoint}: {problem}")
        try:
            pyfuse3.init(KacheryOperations(self.tree), str(self.mountpoint), options)
        except RuntimeError as exc:
            raise MountError(f"{self.mountpoint}: {exc} (fusermount3 printed the reason above)") from None
        try:
            self.registration = MountRegistration(self.config, self.mountpoint)
        except BaseException:
            pyfuse3.close(unmount=True)
            raise
        log.info("mounted %s (storage %s%s); Ctrl-C or `kacheryfs unmount %s` to stop", self.mountpoint,
                 self.config.storage_dir, ", other users may read it" if self.config.allow_other else "",
                 self.mountpoint)
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if self.registration is not None:
                self.registration.remove()
        finally:
            pyfuse3.close(unmount=True)

    async def serve(self) -> None:
        """Answer FUSE requests until unmounted or signalled; then commit what is pending."""
        async with trio.open_nursery() as nursery:
            async def on_signals():
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                    async for signum in signals:
                        log.info("received %s, unmounting", signal.Signals(signum).name)
                        pyfuse3.terminate()
                        return

            nursery.start_soon(on_signals)
            nursery.start_soon(_tune_read_ahead_when_served, self.mountpoint)
            self.tree.run_tasks_in(nursery)
            await pyfuse3.main()
            await self.tree.close_all()
            nursery.cancel_scope.cancel()
