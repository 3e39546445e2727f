"""Static files of the pages: the pages' own scripts and styles, and Swagger UI from its Python package.

Only the files present at start-up are served, by bare name (no sub-folders, so no path can climb
out of a folder). A file is read once, off the event loop, and kept in memory with its ETag and, for
text, a gzip copy; conditional requests get 304. Swagger UI's files change only with its package and
may be cached for an hour; the pages' own files are revalidated on every use, so an upgraded gateway is
never hidden behind a stale script.
"""
from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from multidict import CIMultiDict

from gateway.errors import NotFound
from gateway.exchange import SERVER, Exchange, Reply

_SUFFIXES = frozenset({".js", ".css", ".png", ".svg", ".ico", ".map"})
_TEXT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".map": "application/json; charset=utf-8",
}
_COMPRESSIBLE = frozenset({".js", ".css", ".svg", ".map"})
_GZIP_MIN_BYTES = 1024

LONG_CACHE = "public, max-age=3600"
REVALIDATE = "no-cache"


@dataclass(frozen=True, slots=True)
class Source:
    path: Path
    content_type: str
    cache_control: str


@dataclass(frozen=True, slots=True)
class Loaded:
    body: bytes
    etag: str
    gzipped: bytes | None


def _content_type(path: Path) -> str:
    known = _TEXT_TYPES.get(path.suffix)
    if known is not None:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


@functools.cache
def index_folder(folder: Path, cache_control: str) -> dict[str, Source]:
    """The servable files of a folder, by name (looked up once per process; do not modify)."""
    return {
        path.name: Source(path, _content_type(path), cache_control)
        for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix in _SUFFIXES and not path.name.startswith(".")
    }


_LOADED: dict[Path, Loaded] = {}
"""Files read so far, shared by every gateway of the process: they change only with the installed package."""


def _load(source: Source) -> Loaded:
    body = source.path.read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    gzipped = None
    if source.path.suffix in _COMPRESSIBLE and len(body) >= _GZIP_MIN_BYTES:
        gzipped = gzip.compress(body, compresslevel=6, mtime=0)
    return Loaded(body, etag, gzipped)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names this entity tag (weak comparison, as RFC 9110 says for GET)."""
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether Accept-Encoding lists gzip (or *) with a q-value above 0."""
    for part in (accept_encoding or "").split(","):
        coding, _, params = part.partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        q = params.strip().lower()
        if q.startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False


def cached_reply(exchange: Exchange, body: bytes, content_type: str, etag: str, cache_control: str) -> Reply:
    """A 200 with the body, or a 304 when the client already holds this version."""
    headers = CIMultiDict(
        {
            "Content-Type": content_type,
            "Cache-Control": cache_control,
            "ETag": etag,
            "X-Content-Type-Options": "nosniff",
            "Server": SERVER,
        }
    )
    if etag_matches(exchange.request.headers.get("If-None-Match"), etag):
        del headers["Content-Type"]
        return Reply(304, headers)
    return Reply(200, headers, body)


class StaticFiles:
    """Files served by name (see index_folder), each read on first use."""

    def __init__(self, sources: dict[str, Source]) -> None:
        self.sources = sources

    def __contains__(self, name: str) -> bool:
        return name in self.sources

    async def reply(self, exchange: Exchange, name: str) -> Reply:
        source = self.sources.get(name)
        if source is None:
            raise NotFound(f"No such file: {name}")
        loaded = _LOADED.get(source.path)
        if loaded is None:
            loaded = _LOADED[source.path] = await asyncio.to_thread(_load, source)
        headers = exchange.request.headers
        if loaded.gzipped is not None and accepts_gzip(headers.get("Accept-Encoding")):
            # The compressed copy is another representation: it gets its own entity tag.
            etag = loaded.etag[:-1] + '-gz"'
            reply = cached_reply(exchange, loaded.gzipped, source.content_type, etag, source.cache_control)
            if reply.status == 200:
                reply.headers["Content-Encoding"] = "gzip"
        else:
            reply = cached_reply(exchange, loaded.body, source.content_type, loaded.etag, source.cache_control)
        if loaded.gzipped is not None:
            reply.headers["Vary"] = "Accept-Encoding"
        return reply
