"""kacheryfs: a peer-to-peer, content-addressed file store exposed as a FUSE filesystem."""

from .errors import KacheryError

__version__ = "0.1.0"

__all__ = [
    "store_file", "store_text", "store_object", "store_npy", "store_dir",
    "load_file", "load_bytes", "load_text", "load_object", "load_npy", "read_dir", "load_dir", "KacheryError",
    "create_feed", "load_feed", "Feed", "Subfeed",
]


def __getattr__(name: str):
    """The Python API (kacheryfs.api) is imported on first use: every `kacheryfs` command imports
    this package, and 50 of them starting at once on one machine pay for each import 50 times."""
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'kacheryfs' has no attribute {name!r}")
