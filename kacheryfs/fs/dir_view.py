"""``sha1dir/<hash>[.<label>]/path``: directory manifests (store/directory.py) browsed read-only.

A directory is looked up by the hash of its manifest, which comes from the store or, once, from
channel peers; entries below it are then answered from the parsed manifest in memory, and files
read like ``sha1/`` objects (lazily from peers, each chunk checked against the manifest the
directory names). Inode keys are ``("sha1dir", "<name as looked up>/<path>")``: a directory
looked up as ``<hash>`` and as ``<hash>.proj`` gets two inodes, because the kernel refuses one
directory under two names.
"""

from __future__ import annotations

from ..errors import NotFound
from ..store import Directory, FileEntry, format_dir_uri, is_sha1_hex


def root_sha1(name: str) -> str | None:
    """The manifest hash of a top entry of sha1dir/ ('<40 hex>' or '<40 hex>.<label>'), or None."""
    sha1 = name[:40]
    if is_sha1_hex(sha1) and (len(name) == 40 or name[40] == "."):
        return sha1
    return None


class DirectoryViews:
    def __init__(self) -> None:
        self.manifests: dict[str, Directory] = {}  # manifest sha1 -> the parsed directory

    def add(self, sha1: str, directory: Directory) -> None:
        self.manifests[sha1] = directory

    def entry(self, key_path: str) -> Directory | FileEntry:
        """The entry at an inode key's path: '<root name>[/path/in/dir]'."""
        root, _, rest = key_path.partition("/")
        sha1 = root_sha1(root)
        directory = self.manifests.get(sha1) if sha1 else None
        if directory is None:
            raise NotFound(key_path)
        return directory.lookup(rest)

    def uri(self, key_path: str) -> str:
        root, _, rest = key_path.partition("/")
        entry = self.entry(key_path)
        if isinstance(entry, FileEntry):
            return entry.uri(rest.rpartition("/")[2])
        return format_dir_uri(root[:40], root[41:], rest)
