"""Feeds on disk: entries in SQLite (WAL), private keys of owned feeds as files in the key dir.

- Durability: ``synchronous=FULL``, so a commit has reached the disk (the WAL is fsynced) before
  ``append`` returns; an acknowledged append survives ``kill -9`` and power loss. A crash mid-append
  leaves an uncommitted WAL tail that SQLite discards on the next open: all of that call or none.
- Integrity: every stored entry extends its subfeed's chain (checked in the same transaction that
  inserts it), so the stored log of a subfeed always verifies from entry 0.
- Keys: ``<key_dir>/<feed id>.key`` (mode 0600, dir 0700). The key file, not the database, says
  whether this node owns a feed; keys found there are registered at open.
- One connection per FeedStore, shared by threads under one lock; several processes may open the
  same file (WAL plus a busy timeout).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..crypto import FEED_KEY_SUFFIX, FeedKey
from ..errors import (
    FeedChainError,
    FeedError,
    FeedFork,
    FeedLabelTaken,
    FeedNotOwned,
    InvalidFeedLabel,
    InvalidSubfeedName,
    sqlite_errors,
)
from .entry import (
    ZERO_HASH,
    FeedEntry,
    canonical_json,
    check_feed_id,
    check_link,
    check_subfeed_name,
    decode_entry,
    encode_entry,
    entry_hash,
    is_feed_id,
    sign_entry,
    verify_entry,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS feeds (
    feed_id TEXT PRIMARY KEY,
    label TEXT UNIQUE,          -- local name, NULL if none
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    feed_id TEXT NOT NULL,
    subfeed TEXT NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,         -- entry_hash: the next entry's prev_hash
    entry BLOB NOT NULL,        -- encode_entry bytes
    PRIMARY KEY (feed_id, subfeed, idx)
) WITHOUT ROWID;
"""


def _db_errors():
    return sqlite_errors("feed database", FeedError)


def _check_label(label: object) -> str:
    try:
        check_subfeed_name(label)  # a label may become a directory name in the mount: same rules
    except InvalidSubfeedName:
        raise InvalidFeedLabel(repr(label)[:80]) from None
    if is_feed_id(label):  # so "id or label" lookups are never ambiguous
        raise InvalidFeedLabel(f"{label!r} looks like a feed id")
    return label  # type: ignore[return-value]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class FeedStore:
    def __init__(self, path: Path | str, key_dir: Path | str):
        self._key_dir = Path(key_dir)
        self._keys: dict[str, FeedKey] = {}
        self._lock = threading.Lock()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with _db_errors():
            self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        self._adopt_key_files()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> FeedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing ----------------------------------------------------------------------------
    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock, _db_errors():
            return self._db.execute(sql, args).fetchall()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; BEGIN IMMEDIATE so the tip read inside it cannot
        be changed by another process before we commit."""
        with self._lock, _db_errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may already have ended it
                    self._db.execute("ROLLBACK")
                raise

    def _adopt_key_files(self) -> None:
        # A crash between writing a key file and recording the feed must not lose the feed.
        if not self._key_dir.is_dir():
            return
        ids = [p.name[: -len(FEED_KEY_SUFFIX)] for p in self._key_dir.iterdir() if p.name.endswith(FEED_KEY_SUFFIX)]
        ids = [i for i in ids if is_feed_id(i)]
        if ids:
            with self._write() as db:
                db.executemany("INSERT OR IGNORE INTO feeds (feed_id, added) VALUES (?, ?)",
                               [(i, time.time()) for i in ids])

    def _key_path(self, feed_id: str) -> Path:
        return self._key_dir / (check_feed_id(feed_id) + FEED_KEY_SUFFIX)

    def _key(self, feed_id: str) -> FeedKey:
        key = self._keys.get(feed_id)
        if key is None:
            path = self._key_path(feed_id)
            if not path.exists():
                raise FeedNotOwned(feed_id)
            key = self._keys[feed_id] = FeedKey.load(path)
        return key

    @staticmethod
    def _tip_in(db: sqlite3.Connection, feed_id: str, subfeed: str) -> tuple[int, bytes]:
        row = db.execute("SELECT idx, hash FROM entries WHERE feed_id=? AND subfeed=? ORDER BY idx DESC LIMIT 1",
                         (feed_id, subfeed)).fetchone()
        return (row[0] + 1, row[1]) if row else (0, ZERO_HASH)

    # ---- feeds and labels ----------------------------------------------------------------------
    def create_feed(self, label: str | None = None) -> str:
        """A new feed owned by this node; returns its id. The key file is durable before the feed
        is recorded."""
        if label is not None:
            _check_label(label)
        with self._write() as db:
            if label is not None and db.execute("SELECT 1 FROM feeds WHERE label=?", (label,)).fetchone():
                raise FeedLabelTaken(label)
            key = FeedKey.generate()
            key.save(self._key_dir)
            db.execute("INSERT INTO feeds (feed_id, label, added) VALUES (?, ?, ?)", (key.feed_id, label, time.time()))
        self._keys[key.feed_id] = key
        return key.feed_id

    def add_feed(self, feed_id: str, label: str | None = None) -> None:
        """Record a feed this node follows (idempotent); entries arrive through add_entries."""
        check_feed_id(feed_id)
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO feeds (feed_id, added) VALUES (?, ?)", (feed_id, time.time()))
        if label is not None:
            self.set_label(feed_id, label)

    def set_label(self, feed_id: str, label: str | None) -> None:
        """Give a known feed a local label (None removes it)."""
        check_feed_id(feed_id)
        if label is not None:
            _check_label(label)
        with self._write() as db:
            holder = db.execute("SELECT feed_id FROM feeds WHERE label=?", (label,)).fetchone()
            if holder and holder[0] != feed_id:
                raise FeedLabelTaken(label)
            db.execute("INSERT OR IGNORE INTO feeds (feed_id, added) VALUES (?, ?)", (feed_id, time.time()))
            db.execute("UPDATE feeds SET label=? WHERE feed_id=?", (label, feed_id))

    def feed_ids(self) -> list[str]:
        return [r[0] for r in self._run("SELECT feed_id FROM feeds ORDER BY feed_id")]

    def has_feed(self, feed_id: str) -> bool:
        return bool(self._run("SELECT 1 FROM feeds WHERE feed_id=?", (feed_id,)))

    def label_of(self, feed_id: str) -> str | None:
        rows = self._run("SELECT label FROM feeds WHERE feed_id=?", (feed_id,))
        return rows[0][0] if rows else None

    def find_by_label(self, label: str) -> str | None:
        rows = self._run("SELECT feed_id FROM feeds WHERE label=?", (label,))
        return rows[0][0] if rows else None

    def owns(self, feed_id: str) -> bool:
        return is_feed_id(feed_id) and (feed_id in self._keys or self._key_path(feed_id).exists())

    # ---- writing -------------------------------------------------------------------------------
    def append(self, feed_id: str, subfeed: str, messages: Iterable[Any]) -> list[int]:
        """Append messages (JSON values) to a subfeed of a feed this node owns; all or none, durable
        on return. Returns their indices."""
        key = self._key(check_feed_id(feed_id))
        check_subfeed_name(subfeed)
        payloads = [canonical_json(m) for m in messages]  # every message checked before anything is written
        if not payloads:
            return []
        with self._write() as db:
            count, prev = self._tip_in(db, feed_id, subfeed)
            now = _now_ms()
            rows = []
            for i, payload in enumerate(payloads):
                entry = sign_entry(key, subfeed, count + i, prev, payload, now)
                prev = entry_hash(entry)
                rows.append((feed_id, subfeed, entry.index, prev, encode_entry(entry)))
            db.executemany("INSERT INTO entries (feed_id, subfeed, idx, hash, entry) VALUES (?,?,?,?,?)", rows)
        return [r[2] for r in rows]

    def add_entries(self, entries: Iterable[FeedEntry]) -> int:
        """Store entries received from a peer (any feeds, any subfeeds), each checked against its
        subfeed's stored tip. Entries already held are skipped. At the first entry that is badly
        signed, leaves a gap, or conflicts with the stored log (fork), the valid entries before it
        are committed and that error is raised with ``.added`` set; the stored log is never altered.
        Returns the number of entries added."""
        entries = list(entries)
        rejected: FeedChainError | None = None
        # Signatures first, outside the lock: the CPU-heavy part, independent of what is stored.
        for pos, entry in enumerate(entries):
            try:
                verify_entry(entry)
            except FeedChainError as exc:
                rejected, entries = exc, entries[:pos]
                break
        added = 0
        with self._write() as db:
            tips: dict[tuple[str, str], tuple[int, bytes]] = {}
            try:
                for entry in entries:
                    where = (entry.feed_id, entry.subfeed)
                    if where not in tips:
                        tips[where] = self._tip_in(db, *where)
                    count, prev = tips[where]
                    this_hash = entry_hash(entry)
                    if entry.index < count:
                        held = db.execute("SELECT hash FROM entries WHERE feed_id=? AND subfeed=? AND idx=?",
                                          (*where, entry.index)).fetchone()
                        if held and held[0] == this_hash:
                            continue  # already held: replication overlaps are normal
                        raise FeedFork(f"entry {entry.index} differs from the one held")
                    check_link(entry, count, prev)
                    db.execute("INSERT OR IGNORE INTO feeds (feed_id, added) VALUES (?, ?)", (entry.feed_id, time.time()))
                    db.execute("INSERT INTO entries (feed_id, subfeed, idx, hash, entry) VALUES (?,?,?,?,?)",
                               (*where, entry.index, this_hash, encode_entry(entry)))
                    tips[where] = (count + 1, this_hash)
                    added += 1
            except FeedChainError as exc:
                rejected = exc  # earlier in the list than any signature failure
        if rejected is not None:
            rejected.added = added
            raise rejected
        return added

    # ---- reading -------------------------------------------------------------------------------
    def get_entries(self, feed_id: str, subfeed: str, start: int = 0, limit: int | None = None) -> list[FeedEntry]:
        rows = self._run(
            "SELECT entry FROM entries WHERE feed_id=? AND subfeed=? AND idx>=? ORDER BY idx LIMIT ?",
            (feed_id, subfeed, max(start, 0), -1 if limit is None else max(limit, 0)),
        )
        return [decode_entry(r[0]) for r in rows]

    def num_messages(self, feed_id: str, subfeed: str) -> int:
        return self.tip(feed_id, subfeed)[0]

    def tip(self, feed_id: str, subfeed: str) -> tuple[int, bytes]:
        """(number of entries, hash of the last one or ZERO_HASH): what the next entry links to."""
        with self._lock, _db_errors():
            return self._tip_in(self._db, feed_id, subfeed)

    def subfeeds(self, feed_id: str) -> list[str]:
        # A skip-scan over the primary key: one index seek per subfeed, not a scan of every entry.
        rows = self._run(
            """WITH RECURSIVE s(name) AS (
                   SELECT min(subfeed) FROM entries WHERE feed_id=?1
                   UNION ALL
                   SELECT (SELECT min(subfeed) FROM entries WHERE feed_id=?1 AND subfeed > s.name)
                   FROM s WHERE s.name IS NOT NULL)
               SELECT name FROM s WHERE name IS NOT NULL""",
            (feed_id,),
        )
        return [r[0] for r in rows]
