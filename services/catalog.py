"""The platform's services in one place: name -> module and default port.

`kadai service NAME` and the service-to-service client both read it. A service's module exposes
`SERVICE`, a `services.kit.Service` declaration.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.kit.service import Service


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    name: str
    module: str
    port: int

    @property
    def url_variable(self) -> str:
        """Environment variable that overrides where other services reach it, e.g. USER_SERVICE_URL."""
        return self.name.upper().replace("-", "_") + "_URL"


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry("user-service", "services.user", 3001),
        CatalogEntry("product-service", "services.product", 3002),
        CatalogEntry("order-service", "services.order", 3003),
        CatalogEntry("payment-service", "services.payment", 3004),
        CatalogEntry("notification-service", "services.notification", 3005),
        CatalogEntry("broadcast-service", "services.broadcast", 3006),
        CatalogEntry("analytics-service", "services.analytics", 3007),
        CatalogEntry("ai-service", "services.ai", 8000),
    )
}


class UnknownService(LookupError):
    """A name that is not in the catalogue, or whose module does not exist (yet)."""


def entry(name: str) -> CatalogEntry:
    """The entry for "user-service" or its short form "user"."""
    found = CATALOG.get(name) or CATALOG.get(f"{name}-service")
    if found is None:
        known = ", ".join(CATALOG)
        raise UnknownService(f"unknown service {name!r}; known: {known}")
    return found


def load(name: str) -> Service:
    """Import the service's module and return its SERVICE declaration."""
    found = entry(name)
    try:
        module = importlib.import_module(found.module)
    except ModuleNotFoundError as exc:
        if exc.name == found.module:
            raise UnknownService(f"{found.name} is not implemented yet (no module {found.module})") from exc
        raise
    service: Service = module.SERVICE
    return service
