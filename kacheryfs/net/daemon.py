"""Running a node without FUSE: `kacheryfs daemon` and `kacheryfs bootstrap`."""

from __future__ import annotations

import logging
import signal

import trio

from ..config import Config
from ..store import LocalStore
from .node import build_node

log = logging.getLogger(__name__)


async def _run(node, config: Config) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        if not node.bootstrap_mode:
            from .api_server import ApiServer
            from .fetcher import NetworkFetcher

            from ..gateway import start_gateway

            fetcher = NetworkFetcher(node)
            gateway = await start_gateway(nursery, config, store=node.store, fetcher=fetcher,
                                          feed_sync=node.feed_sync)
            await nursery.start(ApiServer(node, fetcher, config.config_dir,
                                          lambda: {"http": gateway and gateway.url}).serve)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s, stopping", signal.Signals(signum).name)
                break
        nursery.cancel_scope.cancel()


def run_daemon(config: Config, bootstrap_mode: bool = False) -> None:
    store = LocalStore(config.storage_dir)
    store.reconcile()
    try:
        trio.run(_run, build_node(config, store, bootstrap_mode=bootstrap_mode), config)
    finally:
        store.close()
