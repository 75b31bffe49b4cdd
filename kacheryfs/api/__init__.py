"""The Python-facing side of kacheryfs: the synchronous calls scripts use (``objects``, ``feeds``),
and both ends of the local API through which they, and the CLI, reach a running daemon
(``client``, ``server``, and their shared ``messages``).

``import kacheryfs as kfs`` exports the calls below; ``server`` is imported only by the daemon.
"""

from ..errors import InvalidURI

__all__ = [
    "store_file", "store_text", "store_object", "store_npy", "store_dir",
    "load_file", "load_bytes", "load_text", "load_object", "load_npy", "read_dir", "load_dir",
    "resolve_file_uri", "InvalidURI",
    "create_feed", "load_feed", "Feed", "Subfeed",
]
_FEEDS = ("Feed", "Subfeed", "create_feed", "load_feed")


def __getattr__(name: str):
    """``objects`` and ``feeds`` on first use: the CLI reaches the daemon through ``client`` alone
    (50 `kacheryfs load` commands starting at once on one machine pay for every import 50 times)."""
    if name in __all__:
        from . import feeds, objects

        return getattr(feeds if name in _FEEDS else objects, name)
    raise AttributeError(f"module 'kacheryfs.api' has no attribute {name!r}")
