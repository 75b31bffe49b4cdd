"""Feeds: signed append-only logs.

- ``entry``: pure core: the exact signed bytes, the wire codec, chain verification.
- ``uri``: ``feed://<feed id>/<subfeed>`` URIs.
- ``store``: entries in SQLite (WAL, durable appends), owned feeds' keys as files in the config dir.
"""

from .entry import (
    FeedEntry,
    decode_entry,
    encode_entry,
    entry_hash,
    make_entry,
    verify_chain,
    verify_entry,
)
from .store import FeedStore
from .uri import FeedURI, feed_uri, parse_feed_uri

__all__ = [
    "FeedEntry", "FeedStore", "FeedURI", "decode_entry", "encode_entry", "entry_hash", "feed_uri", "make_entry",
    "parse_feed_uri", "verify_chain", "verify_entry",
]
