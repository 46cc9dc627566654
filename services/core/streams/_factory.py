"""Choosing a backend from configuration."""

from __future__ import annotations

from urllib.parse import urlsplit

from ironflow.services.core.errors import invalid_argument

from ._base import Stream
from ._memory import MemoryStream
from ._redis import RedisStream


def open_stream(url: str) -> Stream:
    """`memory://` for an in-process store, `redis://` or `rediss://` for Redis.

    Each `memory://` call makes a new, empty store, so a process must open it once and share it.
    Redis clients connect lazily: call `ping()` to fail fast on a bad address.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryStream()
    if scheme in ("redis", "rediss"):
        return RedisStream.from_url(url)
    raise invalid_argument(
        "stream_url", f"unsupported scheme {scheme!r}; use memory://, redis:// or rediss://"
    )
