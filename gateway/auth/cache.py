"""Tokens already verified, by their exact text, until they expire: the hot path skips the crypto."""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.auth.verifier import Claims


IDLE_SECONDS = 300.0
"""An entry not used for this long is dropped: a verification again costs one signature check."""


class VerifiedTokenCache:
    """A bounded LRU of raw token -> Claims. An entry is served only while now < its exp.

    It holds the tokens in use, not every token seen: each put() drops, from the least recently used end,
    entries that expired or sat idle for IDLE_SECONDS. Without that, every login's new token stayed until
    the capacity pushed it out, and the process grew by about a KiB per login for hours (the soak's
    platform memory trend).
    """

    __slots__ = ("capacity", "idle", "_entries", "hits", "misses")

    def __init__(self, capacity: int, idle: float = IDLE_SECONDS) -> None:
        if capacity < 0:
            raise ValueError("capacity cannot be negative")
        self.capacity = capacity
        self.idle = idle
        self._entries: OrderedDict[str, list[Any]] = OrderedDict()
        """token -> [claims, time of the last use]"""
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float) -> Claims | None:
        entries = self._entries
        entry = entries.get(token)
        if entry is None:
            self.misses += 1
            return None
        claims: Claims = entry[0]
        if claims.exp <= now:
            # Expired: the caller verifies again, and the leeway decides.
            del entries[token]
            self.misses += 1
            return None
        entry[1] = now
        entries.move_to_end(token)
        self.hits += 1
        return claims

    def put(self, token: str, claims: Claims, now: float | None = None) -> None:
        if self.capacity == 0:
            return
        now = time.time() if now is None else now
        entries = self._entries
        entries[token] = [claims, now]
        entries.move_to_end(token)
        idle_since = now - self.idle
        while entries:
            oldest_claims, last_used = next(iter(entries.values()))
            if last_used > idle_since and oldest_claims.exp > now:
                break
            entries.popitem(last=False)
        while len(entries) > self.capacity:
            entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (the keys changed, so earlier verdicts may no longer hold)."""
        self._entries.clear()

    def describe(self) -> dict[str, int]:
        return {"entries": len(self._entries), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}
