"""compile_chain nests middlewares around the terminal handler, whatever they call their next handler."""
from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from gateway.middleware.base import Handler, Middleware, MiddlewareConfig, compile_chain


class _Tag(Middleware):
    NAME: ClassVar[str] = "tag"
    PRIORITY: ClassVar[int] = 1
    Config: ClassVar[type[MiddlewareConfig]] = MiddlewareConfig

    def __init__(self, label: str) -> None:
        self.label = label

    async def __call__(self, exchange: Any, call_next: Handler) -> Any:
        exchange.append(f"{self.label}>")
        reply = await call_next(exchange)
        exchange.append(f"<{self.label}")
        return reply


class _OddlyNamed(_Tag):
    async def __call__(self, exchange: Any, downstream: Handler) -> Any:  # type: ignore[override]
        exchange.append("odd>")
        return await downstream(exchange)


async def _terminal(exchange: Any) -> Any:
    exchange.append("terminal")
    return "reply"


def test_the_first_middleware_is_outermost_and_each_runs_once() -> None:
    trace: list[str] = []
    chain = compile_chain([_Tag("a"), _OddlyNamed("o"), _Tag("b")], _terminal)
    assert asyncio.run(chain(trace)) == "reply"  # type: ignore[arg-type]
    assert trace == ["a>", "odd>", "b>", "terminal", "<b", "<a"]


def test_no_middleware_is_the_terminal_itself() -> None:
    assert compile_chain([], _terminal) is _terminal
