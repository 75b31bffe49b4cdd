"""What ``store/`` holds: committed files by path ('proj/data/x.npy') and directories.

Pure and in memory: the tree (tree.py) keeps it in step with the index, writing the index first.
A directory exists from its ``mkdir`` until its ``rmdir`` (kept when empty, as in any filesystem);
the directories of names loaded from an older index are implied by the names.
"""

from __future__ import annotations

from typing import Iterable

from ..store import NameRecord


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def is_under(path: str, top: str) -> bool:
    """``path`` is ``top`` or below it."""
    return path == top or path.startswith(top + "/")


def moved(path: str, old: str, new: str) -> str:
    """``path`` (at or under ``old``) after ``old`` moved to ``new``."""
    return new + path[len(old):]


class StoreNames:
    def __init__(self, records: Iterable[NameRecord] = (), dirs: Iterable[str] = ()):
        self.files: dict[str, NameRecord] = {r.name: r for r in records}
        self.dirs: set[str] = set(dirs)
        for path in list(self.files) + list(self.dirs):
            parent = parent_of(path)
            while parent and parent not in self.dirs:
                self.dirs.add(parent)
                parent = parent_of(parent)

    def is_dir(self, path: str) -> bool:
        return path == "" or path in self.dirs

    def children(self, path: str, pending: Iterable[str] = ()) -> tuple[list[str], list[str]]:
        """Names of the (directories, files) directly in directory ``path``; ``pending``: paths of
        files being written, not committed yet."""
        dirs = sorted(d.rpartition("/")[2] for d in self.dirs if parent_of(d) == path)
        files = {f.rpartition("/")[2] for f in (*self.files, *pending) if parent_of(f) == path}
        return dirs, sorted(files)

    def is_empty(self, path: str, pending: Iterable[str] = ()) -> bool:
        return not any(parent_of(p) == path for p in (*self.files, *self.dirs, *pending))

    def below(self, path: str) -> tuple[dict[str, NameRecord], list[str]]:
        """The files (by path relative to ``path``) and directories under directory ``path``."""
        prefix = path + "/" if path else ""
        files = {p[len(prefix):]: r for p, r in self.files.items() if p.startswith(prefix)}
        dirs = [d[len(prefix):] for d in self.dirs if d.startswith(prefix)]
        return files, dirs

    def rename_dir(self, old: str, new: str) -> None:
        """Directory ``old`` (and everything below) is now ``new``; an empty ``new`` is replaced."""
        self.dirs.discard(new)
        self.files = {(moved(p, old, new) if is_under(p, old) else p): (
            NameRecord(moved(p, old, new), r.sha1, r.size, r.manifest_sha1, r.mtime_ns) if is_under(p, old) else r)
            for p, r in self.files.items()}
        self.dirs = {moved(d, old, new) if is_under(d, old) else d for d in self.dirs}
