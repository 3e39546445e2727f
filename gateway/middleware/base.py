"""The middleware contract: a class with a NAME, a PRIORITY, a frozen Config and an async __call__.

A route's chain is built once when the registry is loaded, sorted by PRIORITY (highest first, so the
highest is outermost), and ends in the route's terminal handler (the upstream forwarder, or one of the
gateway's own endpoints).
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from gateway.exchange import Exchange, Reply
    from gateway.resources import Resources

Handler = Callable[["Exchange"], Awaitable["Reply"]]


class MiddlewareConfig(BaseModel):
    """Base of every middleware's config: frozen, and unknown fields are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a middleware may look at while it is built for one route."""

    service: str
    """Name of the service the route belongs to; "gateway" for the gateway's own endpoints."""
    prefix: str
    """The route's prefix; "" for the gateway's own endpoints and unrouted requests."""
    resources: Resources


class Middleware(ABC):
    """One link of a route's chain. Subclasses set NAME, PRIORITY and Config and implement __call__."""

    NAME: ClassVar[str]
    PRIORITY: ClassVar[int]
    Config: ClassVar[type[MiddlewareConfig]]
    ENABLED_BY_DEFAULT: ClassVar[bool] = False
    """Whether every route gets it unless the registry switches it off."""
    EDGE: ClassVar[bool] = False
    """Whether it also wraps the gateway's own endpoints and requests no route matches."""

    def __init__(self, config: MiddlewareConfig, context: BuildContext) -> None:
        self.config = config
        self.context = context

    @abstractmethod
    async def __call__(self, exchange: Exchange, call_next: Handler) -> Reply:
        """Do this middleware's work and (usually) await call_next(exchange)."""


def compile_chain(middlewares: Sequence[Middleware], terminal: Handler) -> Handler:
    """Nest the middlewares around the terminal handler; the first in the sequence is outermost.

    Each link is a partial of the middleware's __call__ with its call_next bound: calling it creates the
    middleware's own coroutine and nothing else (a wrapper coroutine per link would double the frames of
    every request)."""
    handler = terminal
    for middleware in reversed(middlewares):
        # Bound by name: a third-party middleware may call its second parameter anything.
        _exchange, next_name = list(inspect.signature(middleware.__call__).parameters)[:2]
        handler = partial(middleware.__call__, **{next_name: handler})
    return handler
