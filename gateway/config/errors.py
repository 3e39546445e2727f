"""Configuration errors that name the source, the path of the bad field and the reason."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import ValidationError


def field_path(parts: Iterable[str | int]) -> str:
    """("services", "user-service", "routes", 0, "prefix") -> services.user-service.routes[0].prefix"""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class ConfigError(Exception):
    """One or more problems in a configuration source (a file or the environment)."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(self.render())

    def render(self) -> str:
        if len(self.problems) == 1:
            return f"{self.source}: {self.problems[0]}"
        lines = [f"{self.source}: {len(self.problems)} problems"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def describe_validation_error(
    error: ValidationError,
    prefix: Sequence[str | int] = (),
    only_under: tuple[str | None, frozenset[str] | None] | None = None,
) -> list[str]:
    """Turn pydantic's errors into 'path: reason' lines.

    only_under=(key, names) keeps only errors below `key` (None: at the top) whose next part is in names
    (None: any), so a merged mapping reports only what one level wrote.
    """
    problems = []
    for item in error.errors(include_url=False):
        loc = [part for part in item["loc"] if not (isinstance(part, str) and part.startswith("function-"))]
        if only_under is not None and not _is_under(loc, *only_under):
            continue
        path = field_path([*prefix, *loc]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        problems.append(f"{path}: {message}")
    return problems


def _is_under(loc: Sequence[str | int], key: str | None, names: frozenset[str] | None) -> bool:
    if key is not None:
        if not loc or loc[0] != key:
            return False
        loc = loc[1:]
    return names is None or not loc or loc[0] in names
