"""The composition root: the one place that assembles a running kacheryfs from its configuration.

`kacheryfs mount` and `kacheryfs daemon` both run ``run``: the store, the feed store, the node,
the fetcher, the local API server and, with a mountpoint, the virtual tree and its FUSE session,
all under one trio nursery until a signal or an unmount. `kacheryfs bootstrap` runs
``run_bootstrap``: the bootstrap node alone. Parts are built here and handed to the parts that use
them; no part builds another.
"""

from __future__ import annotations

import logging
import os
import signal

import trio

from .api.server import ApiServer, claim_socket
from .config import Config
from .feeds import FeedStore
from .gateway import make_gateway
from .net.bootstrap import BootstrapNode, build_bootstrap
from .net.fetcher import NetworkFetcher
from .net.node import Node, build_node
from .running import Registration
from .store import LocalStore

log = logging.getLogger(__name__)

CACHE_CHECK_SECONDS = 30.0


def run(config: Config, mountpoint: str | os.PathLike | None = None, *, debug: bool = False) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (or, with a mountpoint, an unmount)."""
    log.debug("starting with %s", config)
    tune_malloc()
    config.http_for_daemon()  # a bad KACHERY_P2P_API_PORT is a clear error before anything starts
    if mountpoint is not None:
        from .fs.mount import prepare_mountpoint

        mountpoint = prepare_mountpoint(mountpoint)
    store = LocalStore(config.storage_dir)
    feeds = registration = None
    try:
        if config.storage_dir.stat().st_mode & 0o077:  # made 0700 when kacheryfs creates it
            log.warning("storage directory %s can be read by other users (chmod 700 it)", config.storage_dir)
        store.reconcile()
        claim_socket(config.config_dir)  # one daemon per config dir, checked before mounting
        # the CLI and Python find this daemon, and its storage dir, whatever flags they are given
        registration = Registration(config, mountpoint)
        feeds = FeedStore(config.feeds_db, config.feed_keys_dir)
        node = build_node(config, store, feeds)
        fetcher = NetworkFetcher(node)
        gateway = make_gateway(config, store, fetcher, node.feed_sync)  # None without --http

        def status() -> dict:
            return {"http": gateway and gateway.url, "cache_size": config.cache_size,
                    "storage_dir": str(config.storage_dir), "config_dir": str(config.config_dir)}

        if mountpoint is None:
            trio.run(_serve, node, ApiServer(node, fetcher, config.config_dir, status), store, config, None, gateway,
                     fetcher)
            return
        from .fs.feeds_view import FeedsView
        from .fs.mount import FuseMount
        from .fs.tree import VirtualTree

        tree = VirtualTree(store, fetcher, FeedsView(node.feed_sync))
        api = ApiServer(node, fetcher, config.config_dir, lambda: {"mountpoint": str(mountpoint), **status()},
                        mountpoint=mountpoint)
        with FuseMount(tree, mountpoint, config, debug) as mount:
            trio.run(_serve, node, api, store, config, mount, gateway, fetcher)
    finally:
        if registration is not None:
            registration.remove()
        if feeds is not None:
            feeds.close()
        store.close()


async def _serve(node: Node, api: ApiServer, store: LocalStore, config: Config, mount, gateway,
                 fetcher: NetworkFetcher) -> None:
    store.integrity.on_rotten = fetcher.rot_handler()  # rotten objects are fetched again from peers
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        if gateway is not None:
            await nursery.start(gateway.serve)
        await nursery.start(api.serve)
        nursery.start_soon(_keep_cache_under, store, config.cache_size)
        if mount is not None:
            await mount.serve()  # until unmounted, or a signal unmounts it
        else:
            await _until_signal()
        nursery.cancel_scope.cancel()


def run_bootstrap(config: Config) -> None:
    """The bootstrap node, until SIGINT/SIGTERM. Its local API answers `kacheryfs status` (relay
    and punch counters) for its config dir."""
    log.debug("starting the bootstrap with %s", config)
    tune_malloc()
    claim_socket(config.config_dir)
    node = build_bootstrap(config)
    trio.run(_serve_bootstrap, node, ApiServer(node, None, config.config_dir))


async def _serve_bootstrap(node: BootstrapNode, api: ApiServer) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await nursery.start(api.serve)
        await _until_signal()
        nursery.cancel_scope.cancel()


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, stopping", signal.Signals(signum).name)
            return


async def _keep_cache_under(store: LocalStore, limit_bytes: int) -> None:
    """Evict least recently used cached copies beyond the cache size, now and then."""
    limiter = trio.CapacityLimiter(1)
    while True:
        await trio.to_thread.run_sync(store.evict_cached, limit_bytes, limiter=limiter)
        await trio.sleep(CACHE_CHECK_SECONDS)


def tune_malloc() -> None:
    """Keep freed chunk-sized buffers in the heap for reuse (glibc only; harmless elsewhere).

    By default glibc mmaps blocks of 128 KiB and more (raised to the largest freed one) and trims
    free heap tops above 128 KiB, and a buffer from a worker thread belongs to that thread's arena.
    So every 1 MiB chunk buffer lands on fresh pages: ~256 page faults each, and in these VMs a
    fresh page costs a host fault too. Measured on the serving node: ~580k faults per GiB served.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 8 << 20)  # frames up to MAX_FRAME come from the heap
        libc.mallopt(M_TRIM_THRESHOLD, 128 << 20)  # keep up to 128 MiB of freed heap for reuse
    except (OSError, AttributeError):
        pass
