"""What `kadai up` starts: every service of the registry that the services catalogue knows, listening on the
host and port of each of its instance URLs, and where the services reach one another."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from yarl import URL

from gateway.config.schema import RegistryConfig
from services import catalog

if TYPE_CHECKING:
    from services.kit.service import Service


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PlannedService:
    name: str
    instances: tuple[str, ...]
    """The registry's instance URLs: where the gateway sends this service's requests."""
    listeners: tuple[Listener, ...] = ()
    skipped: str | None = None
    """Why it is not started (not in the catalogue, no instances, not written yet); None when it is."""
    declaration: Service | None = field(default=None, compare=False)


class PlanError(ValueError):
    """An instance URL this process cannot listen on (https, a path, no port ...)."""


def listener(service: str, instance: str) -> Listener:
    try:
        url = URL(instance)
        port = url.port
    except ValueError as exc:
        raise PlanError(f"{service}: instance {instance!r} is not a valid URL ({exc})") from None
    if url.scheme != "http" or not url.host or port is None:
        raise PlanError(f"{service}: instance {instance} must be http://HOST:PORT to be served by `kadai up`")
    if url.path not in ("", "/"):
        raise PlanError(f"{service}: instance {instance} has a path; a service is served at its root")
    return Listener(url.host, port)


def plan(config: RegistryConfig) -> list[PlannedService]:
    """The registry's services in its order, each either with its listeners or with why it is skipped.

    Only the catalogue is consulted here; whether a service's module exists is found out by load()."""
    planned = []
    for name, spec in config.services.items():
        if name not in catalog.CATALOG:
            reason = "not in the services catalogue (services/catalog.py); the gateway still routes to it"
            planned.append(PlannedService(name, spec.instances, skipped=reason))
        elif not spec.instances:
            planned.append(PlannedService(name, spec.instances, skipped="no instances in the registry"))
        else:
            listeners = tuple(dict.fromkeys(listener(name, url) for url in spec.instances))
            planned.append(PlannedService(name, spec.instances, listeners))
    return planned


def load(planned: PlannedService) -> PlannedService:
    """The same entry with its service declaration imported, or skipped when the module is not written yet."""
    if planned.skipped is not None:
        return planned
    entry = catalog.entry(planned.name)
    try:
        declaration = catalog.load(planned.name)
    except catalog.UnknownService as exc:
        return PlannedService(planned.name, planned.instances, skipped=str(exc))
    except AttributeError:
        module = sys.modules.get(entry.module)
        if module is None or hasattr(module, "SERVICE"):
            raise
        # A package directory without its SERVICE yet (a service being written) imports as a namespace.
        reason = f"{planned.name} is not implemented yet ({entry.module} declares no SERVICE)"
        return PlannedService(planned.name, planned.instances, skipped=reason)
    return PlannedService(planned.name, planned.instances, planned.listeners, declaration=declaration)


def service_urls(config: RegistryConfig) -> dict[str, str]:
    """<NAME>_URL for every catalogued service of the registry: the services call one another where the
    gateway sends their requests (the first instance), not on the catalogue's default ports."""
    urls = {}
    for name, spec in config.services.items():
        entry = catalog.CATALOG.get(name)
        if entry is not None and spec.instances:
            urls[entry.url_variable] = spec.instances[0].rstrip("/")
    return urls
