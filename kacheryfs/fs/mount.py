"""Running a mount: stale-mount cleanup, the pyfuse3 session under trio, signals, registration."""

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
from ..errors import MountError
from ..store import LocalStore
from .operations import KacheryOperations
from .tree import VirtualTree

log = logging.getLogger(__name__)

READ_AHEAD_KB = 1024  # 1 MiB read requests instead of 128 KiB (see docs/architecture.md)


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
        raise MountError("fusermount3 not found (install the fuse3 package)")
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


async def _serve(tree: VirtualTree, node, config: Config, mountpoint: Path) -> None:
    async with trio.open_nursery() as nursery:
        if node is not None:
            from ..net.api_server import ApiServer
            from ..net.fetcher import NetworkFetcher

            await nursery.start(node.run)
            tree.fetcher = NetworkFetcher(node)
            if node.feed_sync is not None:
                from .feeds_view import FeedsView

                tree.feeds_view = FeedsView(node.feed_sync)
            from ..gateway import start_gateway

            gateway = await start_gateway(nursery, config, store=tree.store, fetcher=tree.fetcher,
                                          feed_sync=node.feed_sync)
            api = ApiServer(node, tree.fetcher, config.config_dir,
                            lambda: {"mountpoint": str(mountpoint), "http": gateway and gateway.url})
            await nursery.start(api.serve)

        async def on_signals():
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                async for signum in signals:
                    log.info("received %s, unmounting", signal.Signals(signum).name)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signals)
        nursery.start_soon(_tune_read_ahead_when_served, mountpoint)
        await pyfuse3.main()
        await tree.close_all()
        nursery.cancel_scope.cancel()


def run_mount(config: Config, mountpoint: str | os.PathLike, debug: bool = False,
              ready_message: bool = True, network: bool = True) -> None:
    """Mount and serve in the foreground until a signal or `kacheryfs unmount`; always unmounts."""
    mountpoint = Path(mountpoint).expanduser().absolute()
    clean_stale_mount(mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    if any(mountpoint.iterdir()):
        raise MountError(f"{mountpoint} is not empty")
    store = LocalStore(config.storage_dir)
    store.reconcile()
    tree = VirtualTree(store)
    node = None
    if network:
        from ..net.api_server import _claim, socket_path
        from ..net.node import build_node

        _claim(socket_path(config.config_dir))  # one daemon per config dir, checked before mounting
        node = build_node(config, store)
    options = set(pyfuse3.default_options)
    options |= {"fsname=kacheryfs", "subtype=kacheryfs", "auto_unmount"}
    if debug:
        options.add("debug")
    try:
        pyfuse3.init(KacheryOperations(tree), str(mountpoint), options)
    except RuntimeError as exc:
        raise MountError(f"{mountpoint}: {exc}") from None
    registration = None
    try:
        registration = MountRegistration(config, mountpoint)
        if ready_message:
            log.info("mounted %s (storage %s)", mountpoint, config.storage_dir)
        trio.run(_serve, tree, node, config, mountpoint)
    finally:
        if registration is not None:
            registration.remove()
        pyfuse3.close(unmount=True)
        store.close()
