"""Read registry.yaml into a validated RegistryConfig.

Options cascade from the code defaults to `defaults:`, then the service, then the route. A mapping value
(timeouts, a middleware's config) is merged key by key with what it inherits; anything else replaces it.
A middleware key takes a mapping (enable, with settings), true (enable) or false (switch off).
"""
from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from yarl import URL

from gateway.config.errors import ConfigError, describe_validation_error, field_path
from gateway.config.schema import (
    RESERVED_PREFIXES,
    SERVICE_NAME,
    Balancer,
    GatewayOptions,
    HealthCheck,
    PathPrefix,
    RegistryConfig,
    RouteConfig,
    RouteOptions,
    ServiceConfig,
)
from gateway.middleware import Middleware, MiddlewareConfig, PluginError, load_catalogue
from gateway.middleware.jwt_auth import NAME as JWT

_CORE_KEYS = frozenset(RouteOptions.model_fields)

_Level = tuple[tuple[str | int, ...], Mapping[str, Any]]
"""Where a cascade level sits in the file, and the options written there."""


class _RouteDoc(BaseModel):
    model_config = ConfigDict(extra="allow")
    prefix: PathPrefix = Field(description="Path prefix this route owns; the longest matching prefix wins.")


class _ServiceDoc(BaseModel):
    model_config = ConfigDict(extra="allow")
    instances: list[str] = Field(default_factory=list, description="Base URLs of the service's instances.")
    health: HealthCheck = Field(default_factory=HealthCheck)
    balancer: Balancer = Field("round_robin", description="round_robin, or least_requests (fewest in flight).")
    routes: list[_RouteDoc] = Field(min_length=1)


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(description="Format version of the file; 1.")
    gateway: GatewayOptions = Field(default_factory=GatewayOptions)
    plugins: list[str] = Field(default_factory=list, description="Extra middleware classes, as module:Class.")
    defaults: dict[str, Any] = Field(default_factory=dict)
    services: dict[str, _ServiceDoc] = Field(min_length=1)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys instead of silently keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                raise yaml.constructor.ConstructorError(
                    None, None, f"a mapping key must be a plain value, not {type(key).__name__}", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_registry(path: str | Path) -> RegistryConfig:
    """Read and validate a registry file; raise ConfigError naming the file, the field and the reason."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror or exc}"]) from exc
    return parse_registry(data, source)


def parse_registry(data: bytes, source: str = "registry.yaml") -> RegistryConfig:
    try:
        raw = yaml.load(data, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}invalid YAML: {problem}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError(source, ["(top level): expected a mapping with version, defaults and services"])
    try:
        document = _Document.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, describe_validation_error(exc)) from exc
    if document.version != 1:
        raise ConfigError(source, [f"version: unsupported version {document.version}; this gateway reads 1"])
    try:
        catalogue = load_catalogue(document.plugins)
    except PluginError as exc:
        raise ConfigError(source, [f"plugins: {exc}"]) from exc
    return _Resolver(source, catalogue).resolve(document, hashlib.sha256(data).hexdigest())


class _Resolver:
    def __init__(self, source: str, catalogue: Mapping[str, type[Middleware]]) -> None:
        self.source = source
        self.catalogue = catalogue
        self.problems: list[str] = []

    def resolve(self, document: _Document, digest: str) -> RegistryConfig:
        code_defaults: dict[str, Any] = {
            name: {} for name, cls in self.catalogue.items() if cls.ENABLED_BY_DEFAULT
        }
        defaults = self._cascade(code_defaults, document.defaults, ("defaults",))
        services: dict[str, ServiceConfig] = {}
        owners: dict[str, str] = {}
        for name, service_doc in document.services.items():
            where: tuple[str | int, ...] = ("services", name)
            if not SERVICE_NAME.match(name):
                self._problem(where, "a service name is lowercase letters, digits and dashes")
            service_options = self._cascade(defaults, service_doc.model_extra or {}, where)
            routes = []
            for index, route_doc in enumerate(service_doc.routes):
                route_where = (*where, "routes", index)
                options = self._cascade(service_options, route_doc.model_extra or {}, route_where)
                self._check_prefix(route_doc.prefix, name, owners, (*route_where, "prefix"))
                route = self._route(name, route_doc.prefix, options, route_where)
                if route is not None:
                    routes.append(route)
                    levels = (
                        (("defaults",), document.defaults),
                        (where, service_doc.model_extra or {}),
                        (route_where, route_doc.model_extra or {}),
                    )
                    self._check_auth_is_enforced(route, options, levels)
            instances = self._instances(service_doc.instances, (*where, "instances"))
            services[name] = ServiceConfig(
                name, instances, service_doc.health, tuple(routes), balancer=service_doc.balancer
            )
        edge = self._enabled_middleware(defaults, ("defaults",), edge_only=True)
        if self.problems:
            raise ConfigError(self.source, list(dict.fromkeys(self.problems)))
        return RegistryConfig(
            source=self.source,
            digest=digest,
            gateway=document.gateway,
            services=services,
            edge_middleware=edge,
            middleware_classes=dict(self.catalogue),
            plugins=tuple(document.plugins),
            routes=tuple(route for service in services.values() for route in service.routes),
        )

    def _inherited_problem(self, error: ValidationError, where: tuple[str | int, ...]) -> None:
        """A merged value failed: the level that wrote it has reported it already, unless none did."""
        if not self.problems:
            self.problems.extend(describe_validation_error(error, where))

    def _problem(self, where: tuple[str | int, ...], message: str) -> None:
        self.problems.append(f"{field_path(where)}: {message}")

    def _cascade(
        self, inherited: Mapping[str, Any], level: Mapping[str, Any], where: tuple[str | int, ...]
    ) -> dict[str, Any]:
        """Apply one level's options over what it inherits, checking only the keys this level sets."""
        merged = dict(inherited)
        for key, value in level.items():
            if key not in _CORE_KEYS and key not in self.catalogue:
                known = ", ".join(sorted(_CORE_KEYS | self.catalogue.keys()))
                self._problem((*where, key), f"unknown option (known: {known})")
                continue
            if key in self.catalogue and isinstance(value, bool):
                merged[key] = {} if value else False
                if value and isinstance(inherited.get(key), dict):
                    merged[key] = inherited[key]
                continue
            previous = inherited.get(key)
            if isinstance(value, dict) and isinstance(previous, dict):
                merged[key] = {**previous, **value}
            elif value is None:
                self._problem((*where, key), "needs a value")
                continue
            else:
                merged[key] = value
            written = frozenset(value) if isinstance(value, dict) else None
            self._check_option(key, merged[key], written, (*where, key))
        return merged

    def _check_option(
        self, key: str, value: Any, written: frozenset[str] | None, where: tuple[str | int, ...]
    ) -> None:
        """Validate a merged option, reporting only problems in what this level wrote itself
        (inherited sub-keys were checked, and reported, where they were written)."""
        if key in _CORE_KEYS:
            try:
                RouteOptions.model_validate({key: value})
            except ValidationError as exc:
                self.problems.extend(describe_validation_error(exc, where[:-1], only_under=(key, written)))
            return
        if not isinstance(value, dict):
            self._problem(where, "expected a mapping of settings, true or false")
            return
        try:
            self.catalogue[key].Config.model_validate(value)
        except ValidationError as exc:
            self.problems.extend(describe_validation_error(exc, where, only_under=(None, written)))

    def _enabled_middleware(
        self, options: Mapping[str, Any], where: tuple[str | int, ...], edge_only: bool = False
    ) -> dict[str, MiddlewareConfig]:
        enabled: dict[str, MiddlewareConfig] = {}
        for name, cls in self.catalogue.items():
            settings = options.get(name, False)
            if settings is False or (edge_only and not cls.EDGE) or not isinstance(settings, dict):
                continue
            try:
                enabled[name] = cls.Config.model_validate(settings)
            except ValidationError as exc:
                self._inherited_problem(exc, (*where, name))
        return enabled

    def _route(
        self, service: str, prefix: str, options: Mapping[str, Any], where: tuple[str | int, ...]
    ) -> RouteConfig | None:
        try:
            core = RouteOptions.model_validate({k: v for k, v in options.items() if k in _CORE_KEYS})
        except ValidationError as exc:
            self._inherited_problem(exc, where)
            return None
        if core.strip_prefix and not (prefix == core.strip_prefix or prefix.startswith(core.strip_prefix + "/")):
            self._problem((*where, "strip_prefix"), f"{core.strip_prefix!r} is not a leading part of prefix {prefix!r}")
        middleware = self._enabled_middleware(options, where)
        return RouteConfig(service=service, prefix=prefix, options=core, middleware=middleware)

    def _check_auth_is_enforced(
        self, route: RouteConfig, options: Mapping[str, Any], levels: tuple[_Level, _Level, _Level]
    ) -> None:
        """`jwt: false` takes the token check off a scope: a route there that still says auth: true would be
        open to anyone while the file claims it is protected. Refused, at the `jwt: false` that did it.

        levels: defaults, the service and the route, in that order."""
        if not route.options.auth or options.get(JWT) is not False:
            return
        route_where = levels[-1][0]
        written = next(where for where, level in reversed(levels) if level.get(JWT) is False)
        subject = "this route" if written == route_where else f"{field_path(route_where)} ({route.prefix})"
        self._problem(
            (*written, JWT),
            f"false switches off the token check, but {subject} has auth: true and would be open to anyone; "
            "write auth: false to make a route public",
        )

    def _check_prefix(
        self, prefix: str, service: str, owners: dict[str, str], where: tuple[str | int, ...]
    ) -> None:
        if not prefix:
            self._problem(where, "a route needs a prefix below /")
            return
        for reserved in RESERVED_PREFIXES:
            if prefix == reserved or prefix.startswith(reserved + "/"):
                self._problem(where, f"{prefix!r} is reserved for the gateway's own endpoints")
                return
        owner = owners.get(prefix)
        if owner is not None:
            self._problem(where, f"{prefix!r} is already routed to {owner}")
        owners.setdefault(prefix, service)

    def _instances(self, urls: list[str], where: tuple[str | int, ...]) -> tuple[str, ...]:
        seen: list[str] = []
        for index, text in enumerate(urls):
            try:
                url = URL(text)
            except (ValueError, TypeError) as exc:
                self._problem((*where, index), f"not a URL: {exc}")
                continue
            if url.scheme not in ("http", "https") or not url.host:
                self._problem((*where, index), f"expected http(s)://host:port, got {text!r}")
                continue
            if url.query_string or url.fragment or url.user:
                self._problem((*where, index), "an instance URL carries no query, fragment or credentials")
                continue
            base = str(url.with_path(url.raw_path.rstrip("/"), encoded=True))
            if base in seen:
                self._problem((*where, index), f"duplicate instance {base}")
                continue
            seen.append(base)
        return tuple(seen)
