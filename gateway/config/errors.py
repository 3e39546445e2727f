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


def describe_validation_error(error: ValidationError, prefix: Sequence[str | int] = ()) -> list[str]:
    """Turn pydantic's errors into 'path: reason' lines."""
    problems = []
    for item in error.errors(include_url=False):
        loc = [part for part in item["loc"] if not (isinstance(part, str) and part.startswith("function-"))]
        path = field_path([*prefix, *loc]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        problems.append(f"{path}: {message}")
    return problems
