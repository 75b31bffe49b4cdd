"""kacheryfs: a peer-to-peer, content-addressed file store exposed as a FUSE filesystem."""

from .api import (
    Feed, Subfeed, create_feed, load_bytes, load_dir, load_feed, load_file, load_npy, load_object, load_text,
    read_dir, store_dir, store_file, store_npy, store_object, store_text,
)
from .errors import KacheryError

__version__ = "0.1.0"

__all__ = [
    "store_file", "store_text", "store_object", "store_npy", "store_dir",
    "load_file", "load_bytes", "load_text", "load_object", "load_npy", "read_dir", "load_dir", "KacheryError",
    "create_feed", "load_feed", "Feed", "Subfeed",
]
