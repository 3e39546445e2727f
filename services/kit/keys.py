"""Typed keys of a service app's state and of its requests: everything the kit keeps, in one place."""
from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from services.kit.runtime import Runtime

RUNTIME_KEY: web.AppKey[Runtime] = web.AppKey("kadai_runtime")
REQUEST_ID_KEY: web.RequestKey[str] = web.RequestKey("kadai_request_id", str)
