"""Directory manifests: a whole directory tree named by one hash, as kachery-p2p's ``sha1dir://``.

A directory manifest is canonical JSON (sorted keys, no spaces), stored as an ordinary object:

    {"dirs": {"<name>": <directory>, ...},
     "files": {"<name>": {"sha1": "<40 hex>", "size": <bytes>[, "manifest": "<40 hex>"]}, ...}}

nested all the way down, so the hash of the top directory names every byte under it. This is the
seed's layout (its readers look up ``dirs``/``files`` and a file's ``sha1``), plus ``manifest`` for
files over one chunk: a reader of ``sha1dir://H/a/big.npy`` then verifies each chunk against a
manifest it trusts through ``H``, with no extra lookup.

``sha1dir://<hash>[.<label>][/path/in/dir]`` names a directory or a file inside it; the label (the
directory's name when it was stored) is informative, as a file URI's name is.

Pure: no I/O. Building from a local directory is LocalStore.put_dir.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterator
from urllib.parse import quote, unquote

from ..errors import InvalidURI, NotADirectoryManifest, NotFound
from .uri import format_uri, is_sha1_hex

DIR_SCHEME = "sha1dir://"
MAX_NAME_BYTES = 255
MAX_DEPTH = 256  # deeper trees are refused (JSON nesting; no real project is this deep)
MAX_MANIFEST_BYTES = 256 << 20  # a directory manifest larger than this is not loaded


@dataclass(frozen=True)
class FileEntry:
    sha1: str
    size: int
    manifest_sha1: str | None = None

    def uri(self, name: str = "") -> str:
        return format_uri(self.sha1, name, self.manifest_sha1)

    def to_doc(self) -> dict:
        doc: dict = {"sha1": self.sha1, "size": self.size}
        if self.manifest_sha1:
            doc["manifest"] = self.manifest_sha1
        return doc


@dataclass(frozen=True)
class Directory:
    dirs: dict[str, "Directory"] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)

    # ---- encoding ----------------------------------------------------------------------------
    def to_doc(self) -> dict:
        return {"dirs": {n: d.to_doc() for n, d in self.dirs.items()},
                "files": {n: f.to_doc() for n, f in self.files.items()}}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_doc(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Directory":
        """Decode and check a directory manifest; anything else raises NotADirectoryManifest."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise NotADirectoryManifest(f"{len(data)} bytes is too large for a directory manifest")
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise NotADirectoryManifest(f"not JSON: {str(exc)[:80]}") from None
        return cls.from_doc(doc)

    @classmethod
    def from_doc(cls, doc, depth: int = 0) -> "Directory":
        if depth > MAX_DEPTH:
            raise NotADirectoryManifest(f"nested deeper than {MAX_DEPTH} directories")
        if not isinstance(doc, dict) or "dirs" not in doc or "files" not in doc:
            raise NotADirectoryManifest()  # other keys are ignored: the seed's tools may add some
        dirs, files = doc["dirs"], doc["files"]
        if not isinstance(dirs, dict) or not isinstance(files, dict):
            raise NotADirectoryManifest()
        for name in (*dirs, *files):
            if not is_valid_name(name):
                raise NotADirectoryManifest(f"invalid entry name {name[:60]!r}")
        both = set(dirs) & set(files)
        if both:
            raise NotADirectoryManifest(f"{sorted(both)[0]!r} is both a file and a directory")
        return cls({n: cls.from_doc(d, depth + 1) for n, d in dirs.items()},
                   {n: _file_from_doc(n, f) for n, f in files.items()})

    # ---- reading -----------------------------------------------------------------------------
    def lookup(self, path: str) -> "Directory | FileEntry":
        """The entry at ``path`` ('' or '/' is this directory); NotFound if there is none."""
        node: Directory | FileEntry = self
        for part in split_path(path):
            if isinstance(node, FileEntry):
                raise NotFound(f"{path!r}: {part!r} is under a file, not a directory")
            if part in node.dirs:
                node = node.dirs[part]
            elif part in node.files:
                node = node.files[part]
            else:
                raise NotFound(f"no {path!r} in this directory")
        return node

    def walk(self, prefix: str = "") -> Iterator[tuple[str, "Directory | FileEntry"]]:
        """(relative path, entry) of every file and directory below, parents before children."""
        for name in sorted(self.dirs):
            path = f"{prefix}{name}"
            yield path, self.dirs[name]
            yield from self.dirs[name].walk(path + "/")
        for name in sorted(self.files):
            yield f"{prefix}{name}", self.files[name]

    def total(self) -> tuple[int, int]:
        """(number of files, bytes) below."""
        files = [e for _p, e in self.walk() if isinstance(e, FileEntry)]
        return len(files), sum(f.size for f in files)

    def listing(self, recursive: bool = True) -> dict:
        """kachery's read_dir shape: {"files": {name: {"size", "sha1"[, "manifest"]}}, "dirs":
        {name: <same, or {} when not recursive>}}."""
        return {"files": {n: f.to_doc() for n, f in sorted(self.files.items())},
                "dirs": {n: (d.listing(True) if recursive else {}) for n, d in sorted(self.dirs.items())}}


def _file_from_doc(name: str, doc) -> FileEntry:
    if not isinstance(doc, dict):
        raise NotADirectoryManifest(f"file {name!r} is not an object")
    sha1, size, manifest = doc.get("sha1"), doc.get("size"), doc.get("manifest")
    if not (isinstance(sha1, str) and is_sha1_hex(sha1)):
        raise NotADirectoryManifest(f"file {name!r} has no valid sha1")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise NotADirectoryManifest(f"file {name!r} has no valid size")
    if manifest is not None and not (isinstance(manifest, str) and is_sha1_hex(manifest)):
        raise NotADirectoryManifest(f"file {name!r} has an invalid manifest hash")
    return FileEntry(sha1, size, manifest)


def is_valid_name(name) -> bool:
    """One path component: no '/', no NUL, not '.' or '..', 1 to 255 bytes."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name
            and len(os.fsencode(name)) <= MAX_NAME_BYTES)


def split_path(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    for part in parts:
        if not is_valid_name(part):
            raise NotFound(f"invalid path component {part!r}")
    return parts


def build_directory(files: dict[str, FileEntry], dirs=()) -> Directory:
    """A tree from relative paths of files ('a/b.txt') and of directories that may be empty."""
    root: dict = {"dirs": {}, "files": {}}

    def node_at(parts: list[str]) -> dict:
        node = root
        for part in parts:
            if part in node["files"]:
                raise NotADirectoryManifest(f"{part!r} is both a file and a directory")
            node = node["dirs"].setdefault(part, {"dirs": {}, "files": {}})
        return node

    for path in dirs:
        node_at(split_path(path))
    for path, entry in files.items():
        *parents, name = split_path(path)
        node = node_at(parents)
        if name in node["dirs"]:
            raise NotADirectoryManifest(f"{name!r} is both a file and a directory")
        node["files"][name] = entry

    def freeze(node: dict) -> Directory:
        return Directory({n: freeze(d) for n, d in node["dirs"].items()}, dict(node["files"]))

    return freeze(root)


# ---- sha1dir:// URIs --------------------------------------------------------------------------
@dataclass(frozen=True)
class DirURI:
    sha1: str  # of the top directory's manifest
    label: str = ""  # informative: the directory's name when stored
    path: str = ""  # inside the directory, '' for the directory itself

    def __str__(self) -> str:
        text = DIR_SCHEME + self.sha1
        if self.label:
            text += "." + quote(self.label, safe="")
        if self.path:
            text += "/" + quote(self.path, safe="/")
        return text

    def child(self, path: str) -> "DirURI":
        joined = "/".join(p for p in (self.path, path) if p)
        return DirURI(self.sha1, self.label, joined)


def is_dir_uri(text) -> bool:
    return isinstance(text, str) and text.strip()[:len(DIR_SCHEME)].lower() == DIR_SCHEME


def parse_dir_uri(text: str) -> DirURI:
    """``sha1dir://<40 hex>[.<label>][/path]`` (scheme and hash in any case)."""
    if not is_dir_uri(text):
        raise InvalidURI(f"{text!r} does not start with sha1dir://")
    rest = text.strip()[len(DIR_SCHEME):].partition("?")[0]
    head, _, path = rest.partition("/")
    sha1, _, label = head.partition(".")
    sha1 = sha1.lower()
    if not is_sha1_hex(sha1):
        raise InvalidURI(f"{text!r}: {sha1!r} is not 40 hex digits")
    path = unquote(path).strip("/")
    try:
        split_path(path)
    except NotFound:
        raise InvalidURI(f"{text!r}: invalid path in the directory") from None
    return DirURI(sha1, unquote(label), path)


def format_dir_uri(sha1: str, label: str = "", path: str = "") -> str:
    return str(DirURI(sha1, label, path))


__all__ = [
    "Directory", "FileEntry", "DirURI", "NotADirectoryManifest", "build_directory", "format_dir_uri",
    "is_dir_uri", "is_valid_name", "parse_dir_uri", "split_path", "MAX_MANIFEST_BYTES",
]
