"""What each part of the network layer calls on the node it belongs to ("from below").

A part gets the node typed by the protocol it needs here, never the whole node, so what it may
reach is written down and nothing reaches into private state (the way magic-wormhole declares its
components' interfaces). ``net.node.Node`` satisfies all of them; a test can hand a part anything
that does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Protocol

if TYPE_CHECKING:
    from ..protocol.messages import Message
    from ..store import LocalStore
    from .dispatch import Handler
    from .finding import Provider
    from .session import PeerSession

PeerHint = Mapping[str, Any]  # {"node": id, "addrs": ["host:port", ...]}, from any discovery source


class Routes(Protocol):
    """Registering for messages and session events (every part that handles messages)."""

    def register(self, msg_type: "type[Message]", handler: "Handler", *, inline: bool = False) -> None: ...

    def watch_sessions(self, *, opened: "Callable[[PeerSession], Awaitable[None]] | None" = None,
                       closed: "Callable[[PeerSession], None] | None" = None) -> None: ...


class Tasks(Protocol):
    """Background work in the node's nursery; raises RuntimeError when the node is not running."""

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None: ...

    async def start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any: ...


class Peers(Protocol):
    """The live sessions with channel members."""

    def channel_peers(self) -> "list[PeerSession]": ...

    async def wait_peers_changed(self) -> None: ...


class Dials(Protocol):
    """What a discovery source needs: who we are, our channels, and a way to dial what it finds."""

    @property
    def node_id(self) -> str: ...

    @property
    def channel_keys(self) -> Mapping[str, bytes]: ...

    def maybe_dial(self, hint: PeerHint, via: "PeerSession | None" = None) -> None: ...


class DiscoveryHost(Dials, Routes, Protocol):
    """What the discovery clients need (net/discovery.py)."""

    @property
    def listen_addrs(self) -> list[str]: ...

    async def connect(self, host: str, port: int, expected_peer: str | None = None) -> "PeerSession": ...

    def trust_relay(self, session: "PeerSession") -> None: ...

    async def connect_bootstrap(self, host: str, port: int) -> "PeerSession":
        """A session to a bootstrap, dialled from the listening port (protocol.md §5b)."""

    def local_addrs(self, bootstrap: "PeerSession") -> list[str]:
        """The addresses to register with this bootstrap: where we listen, as seen from our side."""

    def observed_addrs(self) -> list[str]:
        """Where the bootstraps see us."""


class TransferHost(Protocol):
    """What a download needs (net/transfer.py)."""

    store: "LocalStore"

    async def find(self, sha1: str, timeout: float | None = None, *, whole: bool = False) -> "list[Provider]": ...

    def note_fetched(self, nbytes: int) -> None: ...

    def note_download(self, summary: dict) -> None:
        """A download completed: its summary (Download.summary) is kept for status."""

    def session_for(self, peer_id: str) -> "PeerSession | None":
        """The peer's current session (a punched one replaces a relayed one mid-download)."""


class FetcherHost(TransferHost, Tasks, Protocol):
    """What the fetcher the mount and the local API use needs (net/fetcher.py)."""

    swarm: Any  # net.swarm.Swarm: running downloads are registered there (served while partial)

    async def announce(self, sha1: str, size: int, manifest_sha1: str | None) -> None: ...

    def provide(self, sha1: str) -> None:
        """This node now holds ``sha1`` whole (announced in the DHT, when on)."""

    def status(self) -> dict: ...


class FeedSyncHost(Routes, Tasks, Peers, Protocol):
    """What feed replication needs (net/feed_sync.py)."""

    store: "LocalStore"


__all__ = ["PeerHint", "Routes", "Tasks", "Peers", "Dials", "DiscoveryHost", "TransferHost", "FetcherHost",
           "FeedSyncHost"]
