"""``sha1://<hash>/<name>?manifest=<hash>`` URIs, as kachery-p2p wrote them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote

from ..errors import InvalidURI

_HEX40 = re.compile(r"[0-9a-f]{40}")


def is_sha1_hex(text: str) -> bool:
    return bool(_HEX40.fullmatch(text))


@dataclass(frozen=True)
class KacheryURI:
    sha1: str
    name: str = ""
    manifest_sha1: str | None = None

    def __str__(self) -> str:
        text = f"sha1://{self.sha1}"
        if self.name:
            text += "/" + quote(self.name, safe="/")
        if self.manifest_sha1:
            text += f"?manifest={self.manifest_sha1}"
        return text


def format_uri(sha1: str, name: str = "", manifest_sha1: str | None = None) -> str:
    return str(KacheryURI(sha1, name, manifest_sha1))


def parse_uri(text: str) -> KacheryURI:
    """Parse a URI; a bare 40-hex hash is accepted too, and the scheme and hashes in any case
    (hex digits name the same bytes in either case; they are kept lower-case). Raises InvalidURI
    saying what is wrong."""
    if not isinstance(text, str):
        raise InvalidURI(repr(text))
    raw = text.strip()
    if is_sha1_hex(raw.lower()):
        return KacheryURI(raw.lower())
    if raw[:len("sha1dir://")].lower() == "sha1dir://":
        raise InvalidURI(f"{text!r} names a directory: give a file inside it (sha1dir://<hash>/path/to/file)")
    if raw[:len("sha1://")].lower() != "sha1://":
        raise InvalidURI(f"{text!r} is neither a sha1:// URI nor a bare 40-hex hash")
    rest, _, query = raw[len("sha1://"):].partition("?")
    sha1, _, name = rest.partition("/")
    sha1 = sha1.lower()
    if not is_sha1_hex(sha1):
        raise InvalidURI(f"{text!r}: {sha1!r} is not 40 hex digits")
    manifest = None
    if query:
        params = parse_qs(query, keep_blank_values=True)
        unknown = set(params) - {"manifest"}
        if unknown:
            raise InvalidURI(f"{text!r}: unknown parameter {sorted(unknown)[0]!r}")
        values = [v.lower() for v in params.get("manifest", [])]
        if len(values) != 1 or not is_sha1_hex(values[0]):
            raise InvalidURI(f"{text!r}: manifest must be 40 hex digits")
        manifest = values[0]
    return KacheryURI(sha1, unquote(name), manifest)
