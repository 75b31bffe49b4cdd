"""The local content-addressed store."""

from .directory import (
    MAX_MANIFEST_BYTES, DirURI, Directory, FileEntry, build_directory, format_dir_uri, is_dir_uri, parse_dir_uri,
)
from .hashing import CHUNK_SIZE, ContentHasher, Digest, hash_bytes
from .index import NameRecord, ObjectRecord
from .local import LocalStore, ObjectWriter, StoredObject, open_mmap
from .manifest import Manifest
from .uri import KacheryURI, format_uri, is_sha1_hex, parse_uri

__all__ = [
    "CHUNK_SIZE", "ContentHasher", "Digest", "hash_bytes", "LocalStore", "ObjectWriter",
    "StoredObject", "open_mmap", "NameRecord", "ObjectRecord", "Manifest", "KacheryURI", "format_uri", "is_sha1_hex", "parse_uri",
    "MAX_MANIFEST_BYTES", "DirURI", "Directory", "FileEntry", "build_directory", "format_dir_uri", "is_dir_uri", "parse_dir_uri",
]
