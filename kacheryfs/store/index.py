"""SQLite index (WAL) of what this store holds: objects, the names under store/, the channels
cached copies and replicated feeds came from, and a stat cache. Only LocalStore uses it.

Two connections per LocalStore, each shared by threads under its own lock: one for writes, one
for reads. In WAL mode a reader never waits for a writer, so a write blocked on another process
(a CLI writer holding the SQLite lock; writes wait up to the busy timeout) cannot hold up reads.
Several processes (a mount, the CLI, Python scripts) may use the same index at once.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreFailed, sqlite_errors

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    sha1 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    manifest_sha1 TEXT,
    pinned INTEGER NOT NULL DEFAULT 1,   -- 1: stored here; 0: a cached copy (evictable)
    last_access REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,
    sha1 TEXT NOT NULL,
    size INTEGER NOT NULL,
    manifest_sha1 TEXT,
    mtime_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS store_dirs (  -- directories under store/ (kept when empty); names hold paths
    path TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS object_channels (  -- the channels a cached copy came from
    sha1 TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    PRIMARY KEY (sha1, channel_id)
);
CREATE TABLE IF NOT EXISTS feed_channels (  -- the channels a replicated feed came from
    feed_id TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    PRIMARY KEY (feed_id, channel_id)
);
CREATE TABLE IF NOT EXISTS pins (  -- objects the user pinned (kacheryfs pin): never evicted
    sha1 TEXT PRIMARY KEY,
    pinned_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunk_sums (  -- xxh3-128 of each 1 MiB chunk: cheap checks against bit rot
    sha1 TEXT PRIMARY KEY,
    sums BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS stat_cache (
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    sha1 TEXT NOT NULL,
    manifest_sha1 TEXT,
    PRIMARY KEY (dev, ino)
);
"""

SCHEMA_VERSION = 1  # PRAGMA user_version
MIGRATIONS = {
    # 0 -> 1: feeds' channels moved out of object_channels, where they were kept as "feed:<id>" rows
    1: """INSERT OR IGNORE INTO feed_channels (feed_id, channel_id)
              SELECT substr(sha1, 6), channel_id FROM object_channels WHERE sha1 LIKE 'feed:%';
          DELETE FROM object_channels WHERE sha1 LIKE 'feed:%';""",
}
BUSY_TIMEOUT = 30  # seconds a write waits for another process's write to finish


def _index_errors():
    return sqlite_errors("index", StoreFailed)


@dataclass(frozen=True)
class ObjectRecord:
    sha1: str
    size: int
    manifest_sha1: str | None
    pinned: bool
    last_access: float


@dataclass(frozen=True)
class NameRecord:
    name: str
    sha1: str
    size: int
    manifest_sha1: str | None
    mtime_ns: int


class Index:
    def __init__(self, path: Path):
        self._lock = threading.Lock()  # the write connection
        self._read_lock = threading.Lock()
        self._db = _connect(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._migrate()
        self._reader = _connect(path)

    def _migrate(self) -> None:
        with _index_errors():
            if self._db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                return
            self._db.execute("BEGIN IMMEDIATE")  # another process may be migrating the same file
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[target].split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        """A write (or a read that must see this connection's own transaction)."""
        with self._lock, _index_errors():
            return self._db.execute(sql, args).fetchall()

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """A read: the last committed state, never waiting for a writer."""
        with self._read_lock, _index_errors():
            return self._reader.execute(sql, args).fetchall()

    # objects
    def add_object(self, sha1: str, size: int, manifest_sha1: str | None, pinned: bool = True) -> None:
        # A pinned record stays pinned when the same content arrives again as a cached copy.
        self._run(
            "INSERT INTO objects (sha1, size, manifest_sha1, pinned, last_access) VALUES (?,?,?,?,?) "
            "ON CONFLICT(sha1) DO UPDATE SET pinned = max(pinned, excluded.pinned), "
            "manifest_sha1 = coalesce(excluded.manifest_sha1, manifest_sha1), last_access = excluded.last_access",
            (sha1, size, manifest_sha1, int(pinned), time.time()),
        )

    def get_object(self, sha1: str) -> ObjectRecord | None:
        rows = self._query("SELECT sha1, size, manifest_sha1, pinned, last_access FROM objects WHERE sha1=?", (sha1,))
        return ObjectRecord(*rows[0][:3], bool(rows[0][3]), rows[0][4]) if rows else None

    def remove_object(self, sha1: str) -> None:
        """Forget an object, and the channels a cached copy came from (a later copy brings its own)."""
        with self._lock, _index_errors():
            self._db.execute("DELETE FROM objects WHERE sha1=?", (sha1,))
            self._db.execute("DELETE FROM object_channels WHERE sha1=?", (sha1,))
            self._db.execute("DELETE FROM chunk_sums WHERE sha1=?", (sha1,))

    def all_objects(self) -> list[ObjectRecord]:
        rows = self._query("SELECT sha1, size, manifest_sha1, pinned, last_access FROM objects ORDER BY sha1")
        return [ObjectRecord(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows]

    def object_totals(self, files_only: bool = False) -> tuple[int, int]:
        """(count, bytes) of every object, or of files only: not the chunk manifests of objects held."""
        where = (" WHERE sha1 NOT IN (SELECT manifest_sha1 FROM objects WHERE manifest_sha1 IS NOT NULL)"
                 if files_only else "")
        count, total = self._query(f"SELECT count(*), coalesce(sum(size), 0) FROM objects{where}")[0]
        return count, total

    def cached_by_age(self) -> list[tuple[str, int, str | None]]:
        """Evictable objects, least recently used first: (sha1, size, manifest sha1). Cached copies
        that nobody pinned; a manifest of an object held here goes with that object, never alone."""
        return self._query(
            "SELECT sha1, size, manifest_sha1 FROM objects WHERE pinned = 0 "
            "AND sha1 NOT IN (SELECT sha1 FROM pins) "
            "AND sha1 NOT IN (SELECT manifest_sha1 FROM objects WHERE manifest_sha1 IS NOT NULL) "
            "ORDER BY last_access")

    # pins: user-chosen objects kept whatever the cache size
    def pin(self, sha1s) -> None:
        with self._lock, _index_errors():
            self._db.executemany("INSERT OR IGNORE INTO pins VALUES (?, ?)", [(s, time.time()) for s in sha1s])

    def unpin(self, sha1s) -> int:
        with self._lock, _index_errors():
            return sum(self._db.execute("DELETE FROM pins WHERE sha1=?", (s,)).rowcount for s in sha1s)

    def pinned_sha1s(self) -> frozenset[str]:
        return frozenset(r[0] for r in self._query("SELECT sha1 FROM pins"))

    def manifest_sha1s(self) -> dict[str, str]:
        """manifest sha1 -> the sha1 of the object it describes, for every object held here."""
        return dict(self._query("SELECT manifest_sha1, sha1 FROM objects WHERE manifest_sha1 IS NOT NULL"))

    def cached_total(self) -> int:
        return self._query("SELECT coalesce(sum(size), 0) FROM objects WHERE pinned = 0")[0][0]

    def touch(self, sha1: str, when: float | None = None) -> None:
        self.touch_many({sha1: time.time() if when is None else when})

    def touch_many(self, last_access: dict[str, float]) -> None:
        with self._lock, _index_errors():
            self._db.executemany("UPDATE objects SET last_access = max(last_access, ?) WHERE sha1=?",
                                 [(t, sha1) for sha1, t in last_access.items()])

    # the channels a cached copy or a replicated feed came from
    def add_channels(self, sha1: str, channel_ids) -> None:
        self._add_channels("object_channels", sha1, channel_ids)

    def channels_of(self, sha1: str) -> frozenset[str]:
        return self._channels("object_channels WHERE sha1=?", sha1)

    def add_feed_channels(self, feed_id: str, channel_ids) -> None:
        self._add_channels("feed_channels", feed_id, channel_ids)

    def feed_channels_of(self, feed_id: str) -> frozenset[str]:
        return self._channels("feed_channels WHERE feed_id=?", feed_id)

    def _add_channels(self, table: str, key: str, channel_ids) -> None:
        with self._lock, _index_errors():
            self._db.executemany(f"INSERT OR IGNORE INTO {table} VALUES (?, ?)", [(key, c) for c in channel_ids])

    def _channels(self, where: str, key: str) -> frozenset[str]:
        return frozenset(r[0] for r in self._query(f"SELECT channel_id FROM {where}", (key,)))

    def put_chunk_sums(self, sha1: str, sums: bytes) -> None:
        self._run("INSERT OR REPLACE INTO chunk_sums (sha1, sums) VALUES (?, ?)", (sha1, sums))

    def remove_chunk_sums(self, sha1: str) -> None:
        self._run("DELETE FROM chunk_sums WHERE sha1=?", (sha1,))

    def chunk_sums(self, sha1: str) -> bytes | None:
        rows = self._query("SELECT sums FROM chunk_sums WHERE sha1=?", (sha1,))
        return bytes(rows[0][0]) if rows else None

    # names under store/
    def set_name(self, name: str, sha1: str, size: int, manifest_sha1: str | None, mtime_ns: int) -> None:
        self._run(
            "INSERT OR REPLACE INTO names (name, sha1, size, manifest_sha1, mtime_ns) VALUES (?,?,?,?,?)",
            (name, sha1, size, manifest_sha1, mtime_ns),
        )

    def get_name(self, name: str) -> NameRecord | None:
        rows = self._query("SELECT name, sha1, size, manifest_sha1, mtime_ns FROM names WHERE name=?", (name,))
        return NameRecord(*rows[0]) if rows else None

    def remove_name(self, name: str) -> bool:
        with self._lock, _index_errors():
            return self._db.execute("DELETE FROM names WHERE name=?", (name,)).rowcount > 0

    def rename(self, old: str, new: str) -> bool:
        with self._lock, _index_errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM names WHERE name=?", (new,))
                moved = self._db.execute("UPDATE names SET name=? WHERE name=?", (new, old)).rowcount > 0
                self._db.execute("COMMIT")
                return moved
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def rename_dir(self, old: str, new: str) -> None:
        """A directory of store/ and everything below it moves from ``old`` to ``new``."""
        with self._lock, _index_errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for table, column in (("names", "name"), ("store_dirs", "path")):
                    self._db.execute(f"DELETE FROM {table} WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                                     (new, len(new) + 1, new + "/"))
                    self._db.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                        (new, len(old) + 1, old, len(old) + 1, old + "/"))
                self._db.execute("INSERT OR IGNORE INTO store_dirs VALUES (?)", (new,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def add_dir(self, path: str) -> None:
        self._run("INSERT OR IGNORE INTO store_dirs VALUES (?)", (path,))

    def remove_dir(self, path: str) -> None:
        self._run("DELETE FROM store_dirs WHERE path=?", (path,))

    def all_dirs(self) -> list[str]:
        return [r[0] for r in self._query("SELECT path FROM store_dirs ORDER BY path")]

    def all_names(self) -> list[NameRecord]:
        return [NameRecord(*r) for r in self._query("SELECT name, sha1, size, manifest_sha1, mtime_ns FROM names ORDER BY name")]

    # stat cache: (device, inode, size, mtime_ns) + a fingerprint of head and tail -> content hash
    def get_stat(self, dev: int, ino: int, size: int, mtime_ns: int) -> tuple[str, str, str | None] | None:
        rows = self._query(
            "SELECT fingerprint, sha1, manifest_sha1 FROM stat_cache WHERE dev=? AND ino=? AND size=? AND mtime_ns=?",
            (dev, ino, size, mtime_ns),
        )
        return rows[0] if rows else None

    def put_stat(self, dev: int, ino: int, size: int, mtime_ns: int, fingerprint: str, sha1: str, manifest_sha1: str | None) -> None:
        self._run(
            "INSERT OR REPLACE INTO stat_cache VALUES (?,?,?,?,?,?,?)",
            (dev, ino, size, mtime_ns, fingerprint, sha1, manifest_sha1),
        )


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(path), timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None)
