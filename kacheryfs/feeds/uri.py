"""``feed://<feed id>[/<subfeed name>]`` URIs."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from ..errors import InvalidFeedURI, InvalidSubfeedName
from .entry import check_subfeed_name, is_feed_id

FEED_URI_SCHEME = "feed://"


@dataclass(frozen=True)
class FeedURI:
    feed_id: str
    subfeed: str | None = None

    def __str__(self) -> str:
        text = FEED_URI_SCHEME + self.feed_id
        if self.subfeed is not None:
            text += "/" + quote(self.subfeed, safe="")  # names may hold '?', '#', '%', spaces
        return text


def feed_uri(feed_id: str, subfeed: str | None = None) -> str:
    return str(FeedURI(feed_id, subfeed))


def parse_feed_uri(text: str) -> FeedURI:
    if not isinstance(text, str):
        raise InvalidFeedURI(repr(text)[:80])
    raw = text.strip()
    if not raw.startswith(FEED_URI_SCHEME):
        raise InvalidFeedURI(f"{text!r} does not start with {FEED_URI_SCHEME}")
    feed_id, slash, name = raw[len(FEED_URI_SCHEME):].partition("/")
    if not is_feed_id(feed_id):
        raise InvalidFeedURI(f"{text!r}: {feed_id!r} is not 64 lowercase hex digits")
    if not slash:
        return FeedURI(feed_id)
    try:
        subfeed = unquote(name, errors="strict")
        check_subfeed_name(subfeed)
    except (InvalidSubfeedName, UnicodeDecodeError):
        raise InvalidFeedURI(f"{text!r}: invalid subfeed name") from None
    return FeedURI(feed_id, subfeed)
