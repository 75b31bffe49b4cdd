"""The HTTP gateway (``--http``): objects and feeds for browsers and web tools, served by hypercorn
inside the daemon's trio nursery (see app.py for the routes, docs/architecture.md for the choice)."""

from __future__ import annotations

import ipaddress
import logging

import trio

from ..errors import GatewayError
from .app import GatewayApp

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Gateway:
    """Runs the ASGI app on ``host:port`` until cancelled or ``stop()``; ``url`` once started."""

    def __init__(self, store, fetcher, feed_sync, host: str, port: int, *, required: bool = True):
        self.host = host
        self.port = port
        self.required = required  # False: a port that cannot be bound is a warning, not the daemon's end
        self.stopping = trio.Event()
        self.app = GatewayApp(store, fetcher, feed_sync, self.stopping)
        self.url: str | None = None

    def stop(self) -> None:
        self.stopping.set()

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from hypercorn.config import Config as HypercornConfig
        from hypercorn.trio import serve

        config = HypercornConfig()
        config.bind = [f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("kacheryfs.gateway.hypercorn")
        config.graceful_timeout = 1.0  # live feeds never end by themselves
        config.include_server_header = False

        gateway = self

        class _Started:  # hypercorn reports its bound addresses (port 0 resolved) through task_status
            def started(self, binds=None) -> None:
                gateway._on_bound(binds[0])
                task_status.started(gateway.url)

        try:
            await serve(self.app, config, shutdown_trigger=self.stopping.wait, task_status=_Started())
        except (OSError, BaseExceptionGroup) as exc:  # binding fails inside hypercorn's nurseries
            bind_error = exc if isinstance(exc, OSError) else (exc.subgroup(OSError) or None)
            while isinstance(bind_error, BaseExceptionGroup):
                bind_error = bind_error.exceptions[0]
            if bind_error is None:
                raise
            message = f"cannot serve HTTP on {self.host}:{self.port}: {bind_error.strerror or bind_error}"
            if self.required or self.url is not None:
                raise GatewayError(message) from None
            log.warning("%s (KACHERY_P2P_API_PORT); running without the HTTP gateway", message)
            task_status.started(None)

    def _on_bound(self, url: str) -> None:
        self.url = url
        port = int(url.rpartition(":")[2])
        if is_loopback(self.host):
            names = ("127.0.0.1", "localhost", "[::1]", f"[{self.host}]" if ":" in self.host else self.host)
            self.app.allowed_hosts = {f"{h}:{port}" for h in names} | (set(names) if port == 80 else set())
        else:
            log.warning("HTTP gateway on %s: anyone who can reach it reads what this node can read", url)
        log.info("HTTP gateway on %s", url)


def make_gateway(config, store, fetcher, feed_sync) -> Gateway | None:
    """The gateway ``--http`` or KACHERY_P2P_API_PORT asks for (None without either); run it with
    ``nursery.start(g.serve)``."""
    address, required = config.http_for_daemon()
    if address is None:
        return None
    return Gateway(store, fetcher, feed_sync, *address, required=required)


__all__ = ["Gateway", "GatewayError", "make_gateway"]
