"""The Python-facing side of kacheryfs: the synchronous calls scripts use (``objects``, ``feeds``),
and both ends of the local API through which they, and the CLI, reach a running daemon
(``client``, ``server``, and their shared ``messages``).

``import kacheryfs as kfs`` exports the calls below; ``server`` is imported only by the daemon.
"""

from ..errors import InvalidURI
from .feeds import Feed, Subfeed, create_feed, load_feed
from .objects import (
    load_bytes, load_dir, load_file, load_npy, load_object, load_text, read_dir, resolve_file_uri,
    store_dir, store_file, store_npy, store_object, store_text,
)

__all__ = [
    "store_file", "store_text", "store_object", "store_npy", "store_dir",
    "load_file", "load_bytes", "load_text", "load_object", "load_npy", "read_dir", "load_dir",
    "resolve_file_uri", "InvalidURI",
    "create_feed", "load_feed", "Feed", "Subfeed",
]
