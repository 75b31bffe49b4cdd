"""Inode numbers for the dynamic entries of the tree, with the kernel's lookup counts.

An entry is known by a key: ("sha1", hash), ("store", path), ("storedir", path),
("sha1dir", "<hash>/path"), ("feed", id) or ("subfeed", "id/name"). The kernel holds a lookup count per
inode (raised by lookup/create, lowered by forget); an inode is dropped when its count reaches zero
and no handle is open on it.
"""

from __future__ import annotations

from collections import Counter
ROOT_INO = 1
SHA1_DIR_INO = 2
STORE_DIR_INO = 3
FEEDS_DIR_INO = 4
SHA1DIR_DIR_INO = 5
FIRST_DYNAMIC_INO = 16

Key = tuple[str, str]


class InodeTable:
    def __init__(self) -> None:
        self._by_key: dict[Key, int] = {}
        self._by_ino: dict[int, Key | None] = {}  # None: the entry's name was unlinked or replaced
        self._lookups: Counter[int] = Counter()
        self._open: Counter[int] = Counter()
        self._next = FIRST_DYNAMIC_INO

    def __len__(self) -> int:
        return len(self._by_ino)

    def ino_for(self, key: Key) -> int:
        """The inode of ``key``, allocated on first use."""
        ino = self._by_key.get(key)
        if ino is None:
            ino = self._next
            self._next += 1
            self._by_key[key] = ino
            self._by_ino[ino] = key
        return ino

    def ino_of(self, key: Key) -> int | None:
        """The inode of ``key`` if it has one (no allocation)."""
        return self._by_key.get(key)

    def key_of(self, ino: int) -> Key | None:
        return self._by_ino.get(ino)

    def keys(self) -> list[Key]:
        return list(self._by_key)

    def known(self, ino: int) -> bool:
        return ino in self._by_ino

    def remember(self, ino: int) -> None:
        """The kernel looked the inode up (lookup, create, mkdir, or a readdirplus entry)."""
        if ino >= FIRST_DYNAMIC_INO:  # the fixed directories are never dropped
            self._lookups[ino] += 1

    def forget(self, ino: int, count: int) -> None:
        self._lookups[ino] -= count
        if self._lookups[ino] <= 0:
            del self._lookups[ino]
            self._maybe_drop(ino)

    def opened(self, ino: int) -> None:
        self._open[ino] += 1

    def closed(self, ino: int) -> None:
        self._open[ino] -= 1
        if self._open[ino] <= 0:
            del self._open[ino]
            self._maybe_drop(ino)

    def detach(self, key: Key) -> int | None:
        """The name ``key`` is gone (unlink): its inode lives on until forgotten, nameless."""
        ino = self._by_key.pop(key, None)
        if ino is not None:
            self._by_ino[ino] = None
            self._maybe_drop(ino)
        return ino

    def rekey(self, old: Key, new: Key) -> int | None:
        """Rename: the inode of ``old`` now answers to ``new``; whatever ``new`` was is detached."""
        self.detach(new)
        ino = self._by_key.pop(old, None)
        if ino is not None:
            self._by_key[new] = ino
            self._by_ino[ino] = new
        return ino

    def _maybe_drop(self, ino: int) -> None:
        if self._lookups.get(ino, 0) > 0 or self._open.get(ino, 0) > 0:
            return
        key = self._by_ino.pop(ino, None)
        if key is not None and self._by_key.get(key) == ino:
            del self._by_key[key]


__all__ = ["InodeTable", "ROOT_INO", "SHA1_DIR_INO", "STORE_DIR_INO", "FEEDS_DIR_INO", "SHA1DIR_DIR_INO"]
