"""Tokens already verified, by their exact text, until they expire: the hot path skips the crypto."""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.auth.verifier import Claims


class VerifiedTokenCache:
    """A bounded LRU of raw token -> Claims. An entry is served only while now < its exp."""

    __slots__ = ("capacity", "_entries", "hits", "misses")

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity cannot be negative")
        self.capacity = capacity
        self._entries: OrderedDict[str, Claims] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float) -> Claims | None:
        entries = self._entries
        claims = entries.get(token)
        if claims is None:
            self.misses += 1
            return None
        if claims.exp <= now:
            # Expired: the caller verifies again, and the leeway decides.
            del entries[token]
            self.misses += 1
            return None
        entries.move_to_end(token)
        self.hits += 1
        return claims

    def put(self, token: str, claims: Claims) -> None:
        if self.capacity == 0:
            return
        entries = self._entries
        entries[token] = claims
        entries.move_to_end(token)
        while len(entries) > self.capacity:
            entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (the keys changed, so earlier verdicts may no longer hold)."""
        self._entries.clear()

    def describe(self) -> dict[str, int]:
        return {"entries": len(self._entries), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}
