"""Every environment variable the deployment files give the Kadai image is one the code reads, and every
command they run is one `kadai` has: a renamed setting or subcommand cannot leave a deploy file behind."""
from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import _parser
from tests.support import REPO

OPS = REPO / "ops"
SOURCES = [*sorted((REPO / "gateway").rglob("*.py")), *sorted((REPO / "services").rglob("*.py"))]
IMAGE_ONLY = {"KADAI_HEALTHCHECK_URL"}
"""Read by the image's own health probe (written by the Dockerfile), not by the Python code."""


@cache
def source_text() -> str:
    return "\n".join(path.read_text() for path in SOURCES)


def read_by_code(name: str) -> bool:
    if name in IMAGE_ONLY:
        return name in (REPO / "Dockerfile").read_text()
    # Settings name their variable as a string literal; <NAME>_URL of the catalogue is built from names.
    if re.search(rf"[\"']{re.escape(name)}[\"']", source_text()):
        return True
    service_url = re.fullmatch(r"([A-Z]+)_SERVICE_URL", name)
    return bool(service_url) and f"{service_url.group(1).lower()}-service" in source_text()


def _kadai_containers_compose() -> list[tuple[str, dict[str, Any]]]:
    compose = yaml.safe_load((OPS / "docker-compose.yml").read_text())
    return [
        (name, spec)
        for name, spec in compose["services"].items()
        if str(spec.get("image", "")).startswith("${KADAI_IMAGE")
    ]


def _kadai_containers_k8s() -> list[tuple[str, dict[str, Any]]]:
    containers = []
    for path in sorted((OPS / "k8s").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            spec = (document or {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                if "kadai" in str(container.get("image", "")) or "kadai" in " ".join(container.get("command", [])):
                    containers.append((f"{path.name}:{container['name']}", container))
    return containers


COMPOSE = _kadai_containers_compose()
K8S = _kadai_containers_k8s()


def test_there_are_kadai_containers_to_check() -> None:
    assert len(COMPOSE) == 9 and len(K8S) == 9, (len(COMPOSE), len(K8S))


@pytest.mark.parametrize(("name", "spec"), COMPOSE, ids=[name for name, _ in COMPOSE])
def test_compose_env_is_read_by_the_code(name: str, spec: dict[str, Any]) -> None:
    environment = spec.get("environment", {})
    names = list(environment) if isinstance(environment, dict) else [item.split("=")[0] for item in environment]
    unknown = [variable for variable in names if not read_by_code(variable)]
    assert names and not unknown, f"{name}: {unknown} not read anywhere in gateway/ or services/"


@pytest.mark.parametrize(("name", "container"), K8S, ids=[name for name, _ in K8S])
def test_k8s_env_is_read_by_the_code(name: str, container: dict[str, Any]) -> None:
    env = container.get("env", [])
    names = [item["name"] for item in env]
    # A variable only spliced into another one's value ($(NAME), Kubernetes' dependent variables) is
    # read by Kubernetes, not by the code.
    spliced = {name for item in env for name in re.findall(r"\$\(([A-Z0-9_]+)\)", str(item.get("value", "")))}
    unknown = [variable for variable in names if variable not in spliced and not read_by_code(variable)]
    assert not unknown, f"{name}: {unknown} not read anywhere in gateway/ or services/"


def _kadai_command(command: Any) -> list[str]:
    words = command.split() if isinstance(command, str) else [str(word) for word in command]
    # Compose fills ${VAR:-default} in; the default is what the file runs with.
    words = [re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", word) for word in words]
    return words[1:] if words and words[0] == "kadai" else words


@pytest.mark.parametrize(
    ("name", "command"),
    [(name, spec.get("command")) for name, spec in COMPOSE] + [(name, c.get("args") or c.get("command")) for name, c in K8S],
    ids=[name for name, _ in COMPOSE] + [name for name, _ in K8S],
)
def test_commands_are_kadai_subcommands_that_parse(name: str, command: Any) -> None:
    if command is None:
        return  # the image's default: kadai gateway (tests/ops/test_deploy_files.py checks it)
    words = _kadai_command(command)
    _parser().parse_args(words)  # SystemExit on an unknown subcommand or option
