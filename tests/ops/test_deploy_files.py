"""The deployment files (Dockerfile, compose, Prometheus, Grafana, Kubernetes) against the code they deploy.

No Docker engine or cluster is needed: the files are read and checked against the service catalogue, the
registry loader, the metrics the gateway and the services really export, and the drain settings.
"""
from __future__ import annotations

import asyncio
import configparser
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway import healthcheck
from gateway.config.loader import load_registry, parse_registry
from gateway.config.schema import RegistryConfig
from gateway.reload import RegistryWatcher
from gateway.telemetry import GatewayMetrics
from gateway.units import parse_duration
from services.catalog import CATALOG, CatalogEntry
from services.kit.metrics import ServiceMetrics
from tests.integration.helpers import StartUpstream
from tests.support import REPO, free_port

OPS = REPO / "ops"
K8S = OPS / "k8s"
COMPOSE = OPS / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
PROMETHEUS = OPS / "prometheus"
GRAFANA = OPS / "grafana"
ENTRIES = list(CATALOG.values())
ENTRY_IDS = [entry.name for entry in ENTRIES]
TARGET_LABELS = frozenset({"job", "instance"})
"""Labels Prometheus attaches to every scraped series."""
KADAI_UID = 10001
"""The image's user; Kubernetes pods of the image run as it."""


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file, comments and blank lines skipped."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


# --- every file parses ------------------------------------------------------------------------------

YAML_FILES = sorted(path for pattern in ("*.yml", "*.yaml") for path in OPS.rglob(pattern))


@pytest.mark.parametrize("path", YAML_FILES, ids=[str(p.relative_to(OPS)) for p in YAML_FILES])
def test_every_yaml_file_parses(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert documents and all(isinstance(doc, dict) for doc in documents)


def test_the_deployment_files_are_all_there() -> None:
    # The parametrized test above passes vacuously on an empty glob: make sure it has the files.
    names = {str(path.relative_to(OPS)) for path in YAML_FILES}
    assert {"docker-compose.yml", "registry.compose.yaml", "prometheus/prometheus.yml", "prometheus/alerts.yml",
            "k8s/kustomization.yaml", "k8s/registry.yaml", "k8s/gateway.yaml"} <= names


# --- Dockerfile -------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, heredoc bodies left out."""
    instructions: list[tuple[str, str]] = []
    lines = iter(DOCKERFILE.read_text().splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        keyword, _, arguments = line.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        if "<<'EOF'" in arguments:
            for body in lines:
                if body == "EOF":
                    break
    return instructions


def test_dockerfile_builds_in_two_stages_on_a_slim_base() -> None:
    instructions = dockerfile_instructions()
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]
    base = next(args for keyword, args in instructions if keyword == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.1[1-9]-slim(-\w+)?", base)
    runtime = instructions[instructions.index(("FROM", "${PYTHON_IMAGE} AS runtime")) + 1 :]
    # The runtime installs from the build stage's wheels without a copy of them becoming a layer.
    installs = [args for keyword, args in runtime if keyword == "RUN" and "pip install" in args]
    assert len(installs) == 1 and "--mount=type=bind,from=build" in installs[0] and "--no-index" in installs[0]


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    users = [args for keyword, args in dockerfile_instructions() if keyword == "USER"]
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    assert uid == str(KADAI_UID)


def test_dockerfile_entrypoint_defaults_to_the_gateway() -> None:
    instructions = dict(dockerfile_instructions())
    assert json.loads(instructions["ENTRYPOINT"]) == ["kadai"]
    command = json.loads(instructions["CMD"])
    assert command[0] == "gateway" and command[command.index("--port") + 1] == "4000"


def test_dockerfile_healthcheck_runs_the_installed_probe() -> None:
    instructions = dockerfile_instructions()
    healthcheck = next(args for keyword, args in instructions if keyword == "HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert json.loads(command) == ["kadai-healthcheck"]
    assert "--timeout=" in options and "--interval=" in options
    env = next(args for keyword, args in instructions if keyword == "ENV" and "KADAI_HEALTHCHECK_URL" in args)
    assert "KADAI_HEALTHCHECK_URL=http://127.0.0.1:4000/api/v1/health" in env
    assert "KADAI_DATA_DIR=/data" in env


def test_dockerignore_lets_in_exactly_what_the_build_copies() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "an allow-list: everything is excluded first"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied: set[str] = set()
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in args and "<<" not in args:
            *sources, _destination = args.split()
            copied.update(source.rstrip("/") for source in sources)
    assert copied and copied <= allowed
    assert "README.md" in allowed  # setup.cfg's long_description reads it while the wheel is built
    assert not allowed & {"ops", "tests", ".venv", ".git", "var"}


async def _probe(monkeypatch: pytest.MonkeyPatch, url: str) -> int:
    """Run the image's probe (the package's kadai-healthcheck) in this process against url; its exit status."""
    monkeypatch.setenv("KADAI_HEALTHCHECK_URL", url)
    return await asyncio.to_thread(healthcheck.main)


def test_the_probe_is_a_command_of_the_package() -> None:
    scripts = configparser.ConfigParser()
    scripts.read(REPO / "setup.cfg")
    entries = scripts["options.entry_points"]["console_scripts"].split("\n")
    assert "kadai-healthcheck = gateway.healthcheck:main" in [entry.strip() for entry in entries]


async def test_healthcheck_probe_passes_on_2xx_and_fails_otherwise(
    start_upstream: StartUpstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A proxy in the environment must not catch a loopback probe (nothing listens on port 9).
    for variable in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(variable, raising=False)

    async def healthy(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def draining(_: web.Request) -> web.Response:
        return web.json_response({"status": "draining"}, status=503)

    app = web.Application()
    app.router.add_get("/health", healthy)
    app.router.add_get("/draining", draining)
    base = await start_upstream(app)

    assert await _probe(monkeypatch, f"{base}/health") == 0
    assert capsys.readouterr().err == ""
    assert await _probe(monkeypatch, f"{base}/draining") == 1
    assert f"unhealthy: {base}/draining: HTTP Error 503" in capsys.readouterr().err
    refused = f"http://127.0.0.1:{free_port()}/health"
    assert await _probe(monkeypatch, refused) == 1
    assert f"unhealthy: {refused}:" in capsys.readouterr().err


# --- compose ----------------------------------------------------------------------------------------

@cache
def compose() -> dict[str, Any]:
    document: dict[str, Any] = load(COMPOSE)
    return document


def compose_service(name: str) -> dict[str, Any]:
    services: dict[str, Any] = compose()["services"]
    assert name in services, f"{name} is not in ops/docker-compose.yml"
    return services[name]  # type: ignore[no-any-return]


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to ops/) of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            mounts[target] = source
    return mounts


@pytest.mark.parametrize("entry", ENTRIES, ids=ENTRY_IDS)
def test_compose_runs_each_catalogue_service_on_its_port(entry: CatalogEntry) -> None:
    service = compose_service(entry.name)
    assert service["command"] == ["service", entry.name, "--host", "0.0.0.0", "--port", str(entry.port)]
    assert service["image"] == compose_service("gateway")["image"], "one image for every process"
    assert service["healthcheck"]["test"] == ["CMD", "kadai-healthcheck"]
    env = service["environment"]
    assert env["KADAI_HEALTHCHECK_URL"] == f"http://127.0.0.1:{entry.port}/health"
    assert "@rabbitmq:5672/" in env["AMQP_URL"] and env["REDIS_URL"].startswith("redis://redis:6379")
    # Other services are reached by their compose names, not the 127.0.0.1 default.
    assert {other.url_variable: env[other.url_variable] for other in ENTRIES} == {
        other.url_variable: f"http://{other.name}:{other.port}" for other in ENTRIES
    }
    data_volume = f"{entry.name.removesuffix('-service')}-data"
    assert f"{data_volume}:/data" in service["volumes"] and data_volume in compose()["volumes"]
    assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


def test_compose_gateway_uses_the_compose_registry() -> None:
    gateway = compose_service("gateway")
    assert gateway["command"][:1] == ["gateway"]
    assert any(port.endswith(":4000:4000") for port in gateway["ports"])
    env = gateway["environment"]
    assert env["KADAI_HEALTHCHECK_URL"] == "http://127.0.0.1:4000/api/v1/health"
    assert bind_mounts(gateway)[env["KADAI_REGISTRY"]] == "./registry.compose.yaml"
    assert "AMQP_URL" not in env, "the gateway has no use for the broker's credentials"
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    # The stop timeout covers the drain: KADAI_DRAIN_TIMEOUT plus the worker supervisor's 5 s margin.
    assert parse_duration(gateway["stop_grace_period"]) > parse_duration(env["KADAI_DRAIN_TIMEOUT"]) + 5


def test_compose_every_container_has_a_healthcheck_and_waits_only_on_checked_ones() -> None:
    services = compose()["services"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition["condition"] in ("service_healthy", "service_started")


def test_compose_rabbitmq_has_the_management_ui_and_the_spec_credentials() -> None:
    rabbitmq = compose_service("rabbitmq")
    assert rabbitmq["image"].startswith("rabbitmq:") and "management" in rabbitmq["image"]
    assert any(port.endswith(":15672:15672") for port in rabbitmq["ports"])
    assert rabbitmq["environment"]["RABBITMQ_DEFAULT_USER"].startswith("${RABBITMQ_USER:?")
    assert rabbitmq["environment"]["RABBITMQ_DEFAULT_PASS"].startswith("${RABBITMQ_PASSWORD:?")
    development = env_file(OPS / "dev.env")
    assert (development["RABBITMQ_USER"], development["RABBITMQ_PASSWORD"]) == ("kadai", "kadai123")


def strings(node: object) -> Iterator[str]:
    """Every string value in a parsed YAML document (comments are gone by then)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def test_compose_secrets_come_only_from_the_env_file() -> None:
    text = "\n".join(strings(compose()))
    development = env_file(OPS / "dev.env")
    required = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", text))
    assert {"JWT_SECRET", "RABBITMQ_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "KADAI_ENV"} <= required
    assert required <= development.keys(), "ops/dev.env sets every variable the compose file requires"
    for secret in ("JWT_SECRET", "RABBITMQ_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert development[secret] not in text, f"the value of {secret} is written into the compose file"
    assert "DEVELOPMENT VALUES ONLY" in (OPS / "dev.env").read_text().splitlines()[0]
    assert development["KADAI_ENV"] == "development"


# --- registries -------------------------------------------------------------------------------------

DEPLOY_REGISTRIES = [OPS / "registry.compose.yaml", K8S / "registry.yaml"]
DEPLOY_IDS = ["compose", "k8s"]


def route_table(config: RegistryConfig, *, quiet_log: bool = False) -> dict[str, tuple[object, ...]]:
    """Each route's service and options; without the access log's settings when quiet_log."""
    ignored = {"access_log"} if quiet_log else set()
    return {
        r.prefix: (r.service, r.options, {name: cfg for name, cfg in r.middleware.items() if name not in ignored})
        for r in config.routes
    }


@pytest.mark.parametrize("path", DEPLOY_REGISTRIES, ids=DEPLOY_IDS)
def test_deploy_registry_is_valid_and_points_at_the_service_hostnames(path: Path) -> None:
    config = load_registry(path)
    assert {name: service.instances for name, service in config.services.items()} == {
        entry.name: (f"http://{entry.name}:{entry.port}",) for entry in ENTRIES
    }


@pytest.mark.parametrize("path", DEPLOY_REGISTRIES, ids=DEPLOY_IDS)
def test_deploy_registry_routes_like_the_repository_registry(path: Path) -> None:
    # Only instances, health polling, network options and which successful polls are logged may differ.
    deployed, repository = load_registry(path), load_registry(REPO / "registry.yaml")
    assert route_table(deployed, quiet_log=True) == route_table(repository, quiet_log=True)
    assert set(deployed.edge_middleware["access_log"].skip_paths) == {  # type: ignore[attr-defined]
        "/metrics", "/api/v1/health", "/api/v1/gateway/status"
    }


@pytest.mark.parametrize(
    ("address", "admin"),
    [("10.244.1.7", True), ("172.18.0.2", True), ("192.168.49.2", True), ("127.0.0.1", True), ("::1", True),
     ("203.0.113.9", False), ("8.8.8.8", False)],
    ids=["pod", "kind-node", "minikube-node", "port-forward", "port-forward-v6", "public", "public-dns"],
)
def test_k8s_registry_admits_cluster_callers_to_the_gateway_endpoints(address: str, admin: bool) -> None:
    # The kubelet's probes and Prometheus come from private addresses; the public must not count.
    networks = load_registry(K8S / "registry.yaml").gateway.admin_networks
    assert any(ipaddress.ip_address(address) in network for network in networks) is admin


# --- Prometheus and Grafana: every metric and label exists ------------------------------------------


def exported_series(registry: CollectorRegistry) -> dict[str, frozenset[str]]:
    """Series name -> label names, as Prometheus stores them, for every kadai_* metric of a registry."""
    series: dict[str, frozenset[str]] = {}
    # prometheus-client has no public accessor for a labelled metric's label names before it has
    # samples; these attributes have been stable for years and a change fails this test loudly.
    collectors = set(registry._names_to_collectors.values())  # noqa: SLF001
    for collector in collectors:
        name, kind = getattr(collector, "_name", ""), getattr(collector, "_type", "")
        if not name.startswith("kadai_"):
            continue
        # Prometheus keeps its own `instance` (the target) and renames the exported one.
        exported: tuple[str, ...] = collector._labelnames  # type: ignore[attr-defined]  # noqa: SLF001
        labels = frozenset("exported_instance" if label == "instance" else label for label in exported)
        if kind == "counter":
            series[f"{name}_total"] = labels
        elif kind == "histogram":
            series.update({f"{name}_bucket": labels | {"le"}, f"{name}_sum": labels, f"{name}_count": labels})
        else:
            series[name] = labels
    return series


@cache
def known_series() -> dict[str, frozenset[str]]:
    return {**exported_series(GatewayMetrics().registry), **exported_series(ServiceMetrics("check").registry)}


def scrape_jobs() -> set[str]:
    return {job["job_name"] for job in load(PROMETHEUS / "prometheus.yml")["scrape_configs"]}


def check_promql(expr: str, where: str, legend: str = "") -> set[str]:
    """Assert every metric, label and job an expression names exists; returns the kadai_* series it uses."""
    series = known_series()
    names = set(re.findall(r"\bkadai_[a-z0-9_]+", expr))
    unknown = names - series.keys()
    assert not unknown, f"{where}: no such series {sorted(unknown)}"
    available = TARGET_LABELS.union(*(series[name] for name in names))
    for name, matchers in re.findall(r"\b(kadai_[a-z0-9_]+)\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            assert label in series[name] | TARGET_LABELS, f"{where}: {name} has no label {label!r}"
    for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            assert label in available, f"{where}: no series of {sorted(names)} has a label {label!r}"
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        assert label in available, f"{where}: legend names unknown label {label!r}"
    for name in re.findall(r"\b(?:rate|irate|increase)\(\s*(kadai_[a-z0-9_]+)", expr):
        assert name.endswith(("_total", "_bucket", "_sum", "_count")), f"{where}: rate() of the gauge {name}"
    for jobs in re.findall(r'\bjob=~?"([^"]+)"', expr):
        assert set(jobs.split("|")) <= scrape_jobs(), f"{where}: unknown job in {jobs!r}"
    return names


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]]


def test_prometheus_loads_the_alert_rules_and_scrapes_every_process() -> None:
    config = load(PROMETHEUS / "prometheus.yml")
    assert all((PROMETHEUS / rule_file).is_file() for rule_file in config["rule_files"])
    assert "alerts.yml" in config["rule_files"]
    targets = {
        job["job_name"]: [target for static in job["static_configs"] for target in static["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["kadai-gateway"] == ["gateway:4000"]
    assert targets["kadai-services"] == [f"{entry.name}:{entry.port}" for entry in ENTRIES]
    assert not any(job.get("honor_labels") for job in config["scrape_configs"])
    assert bind_mounts(compose_service("prometheus"))["/etc/prometheus"] == "./prometheus"


def test_alert_rules_use_only_metrics_and_labels_that_exist() -> None:
    for rule in alert_rules():
        where = f"alert {rule['alert']}"
        names = check_promql(rule["expr"], where)
        text = " ".join(rule["annotations"].values())
        available = TARGET_LABELS.union(*(known_series()[name] for name in names))
        for label in re.findall(r"\$labels\.(\w+)", text):
            assert label in available, f"{where}: annotation reads unknown label {label!r}"
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.mark.parametrize(
    ("series", "matcher"),
    [
        ("kadai_gateway_requests_total", 'status_class="5xx"'),
        ("kadai_gateway_breaker_state", "== 2"),
        ("kadai_gateway_instance_healthy", "== 0"),
        ("kadai_service_dead_letters_total", ""),
        ("kadai_gateway_ratelimit_backend_errors_total", ""),
        ("kadai_service_outbox_pending", "deriv("),
    ],
    ids=["gateway-5xx", "breaker-open", "instance-down", "dead-letters", "limiter-backend", "outbox-backlog"],
)
def test_alert_rules_cover(series: str, matcher: str) -> None:
    assert any(series in rule["expr"] and matcher in rule["expr"] for rule in alert_rules())


def test_alert_rules_also_catch_a_target_prometheus_cannot_scrape() -> None:
    assert any(rule["expr"].startswith("up{") and rule["expr"].endswith("== 0") for rule in alert_rules())


@cache
def grafana_datasource_uid() -> str:
    datasources = load(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert len(datasources) == 1 and datasources[0]["type"] == "prometheus"
    assert datasources[0]["url"] == "http://prometheus:9090"
    return str(datasources[0]["uid"])


DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))


def dashboard_panels() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            yield path, panel


def test_grafana_provisions_the_dashboards_folder_that_compose_mounts() -> None:
    providers = load(GRAFANA / "provisioning" / "dashboards" / "kadai.yml")["providers"]
    grafana = compose_service("grafana")
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert [mounts[provider["options"]["path"]] for provider in providers] == ["./grafana/dashboards"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).name in {path.name for path in DASHBOARDS}


def test_grafana_dashboards_query_only_metrics_and_labels_that_exist() -> None:
    assert DASHBOARDS
    uid = grafana_datasource_uid()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for variable in dashboard["templating"]["list"]:
            assert variable["datasource"]["uid"] == uid
            check_promql(variable["query"]["query"], f"{path.name} variable {variable['name']}")
    for path, panel in dashboard_panels():
        if panel["type"] == "row":
            continue
        where = f"{path.name} panel {panel['title']!r}"
        assert panel["targets"], f"{where} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, f"{where}: not the provisioned datasource"
            check_promql(target["expr"], where, target.get("legendFormat", ""))


@pytest.mark.parametrize(
    "series",
    [
        "kadai_gateway_requests_total", "kadai_gateway_request_duration_seconds_bucket",
        "kadai_gateway_breaker_state", "kadai_gateway_instance_healthy", "kadai_gateway_ratelimit_decisions_total",
        "kadai_service_events_published_total", "kadai_service_events_consumed_total",
        "kadai_service_dead_letters_total", "kadai_service_outbox_pending",
    ],
)
def test_grafana_dashboard_shows(series: str) -> None:
    assert any(series in target["expr"] for _, panel in dashboard_panels() for target in panel.get("targets", []))


# --- Kubernetes -------------------------------------------------------------------------------------

@cache
def kustomization() -> dict[str, Any]:
    document: dict[str, Any] = load(K8S / "kustomization.yaml")
    return document


@cache
def k8s_objects() -> tuple[dict[str, Any], ...]:
    return tuple(
        doc
        for resource in kustomization()["resources"]
        for doc in yaml.safe_load_all((K8S / resource).read_text())
        if doc is not None
    )


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [obj for obj in k8s_objects() if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads() -> list[dict[str, Any]]:
    return [obj for obj in k8s_objects() if obj["kind"] in ("Deployment", "StatefulSet")]


def container_env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def generator(kind: str, name: str) -> dict[str, Any]:
    found = [item for item in kustomization().get(kind, []) if item["name"] == name]
    assert len(found) == 1, f"kustomization.yaml has no {kind} {name}"
    return found[0]  # type: ignore[no-any-return]


def test_kustomization_lists_every_manifest_and_nothing_missing() -> None:
    resources = kustomization()["resources"]
    assert all((K8S / resource).is_file() for resource in resources)
    manifests = {str(p.relative_to(K8S)) for p in K8S.rglob("*.yaml")} - {"kustomization.yaml", "registry.yaml"}
    assert manifests == set(resources)
    assert kustomization()["namespace"] == k8s_object("Namespace", "kadai")["metadata"]["name"]
    images = {image["name"] for image in kustomization()["images"]}
    used = {c["image"] for workload in workloads() for c in workload["spec"]["template"]["spec"]["containers"]}
    assert "kadai" in used and "kadai" in images


WORKLOAD_IDS = [f"{w['kind']}/{w['metadata']['name']}" for w in workloads()]


@pytest.mark.parametrize("workload", workloads(), ids=WORKLOAD_IDS)
def test_k8s_workload_has_probes_resources_and_runs_restricted(workload: dict[str, Any]) -> None:
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        assert container["readinessProbe"] and container["livenessProbe"]
        for section in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][section].keys()
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        if container["image"] == "kadai" or container["name"] == "redis":
            assert security["readOnlyRootFilesystem"] is True
        if container["image"] == "kadai":
            assert pod["securityContext"]["runAsUser"] == KADAI_UID, "the Dockerfile's USER"
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


@pytest.mark.parametrize("entry", ENTRIES, ids=ENTRY_IDS)
def test_k8s_runs_each_catalogue_service_once_with_its_volume(entry: CatalogEntry) -> None:
    deployment = k8s_object("Deployment", entry.name)
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["service", entry.name, "--host", "0.0.0.0", "--port", str(entry.port)]
    assert container["ports"] == [{"name": "http", "containerPort": entry.port}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    env = container_env(container)
    assert env["KADAI_DATA_DIR"] == "/data"
    assert env["AMQP_URL"] == "amqp://$(RABBITMQ_USER):$(RABBITMQ_PASSWORD)@rabbitmq:5672/"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    assert k8s_object("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    service = k8s_object("Service", entry.name)
    assert service["spec"]["ports"] == [{"name": "http", "port": entry.port, "targetPort": "http"}]
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    drain = parse_duration(env["KADAI_DRAIN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > drain


def test_k8s_env_tells_services_where_the_others_are() -> None:
    literals = dict(item.split("=", 1) for item in generator("configMapGenerator", "kadai-env")["literals"])
    assert literals["KADAI_ENV"] == "production"
    assert literals["REDIS_URL"] == "redis://redis:6379/0"
    for entry in ENTRIES:
        assert literals[entry.url_variable] == f"http://{entry.name}:{entry.port}"
        assert k8s_object("Service", entry.name)  # the name the URL resolves to


def gateway_pod() -> dict[str, Any]:
    return k8s_object("Deployment", "gateway")["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_k8s_gateway_scales_with_an_autoscaler_over_several_replicas() -> None:
    deployment = k8s_object("Deployment", "gateway")
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    hpa = k8s_object("HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert k8s_object("PodDisruptionBudget", "gateway")["spec"]["selector"] == deployment["spec"]["selector"]
    service = k8s_object("Service", "gateway")
    assert service["spec"]["ports"] == [{"name": "http", "port": 4000, "targetPort": "http"}]
    (container,) = gateway_pod()["containers"]
    assert "--workers" not in container["args"]
    assert {"configMapRef": {"name": "kadai-env"}} in container["envFrom"], "REDIS_URL: one Redis for all replicas"


def test_k8s_gateway_probes_and_grace_period_match_the_drain() -> None:
    pod = gateway_pod()
    (container,) = pod["containers"]
    # Readiness follows health, which turns 503 while draining; liveness must not, or draining pods
    # would be killed early.
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/v1/health"
    assert container["livenessProbe"]["httpGet"]["path"] not in ("/api/v1/health", "/api/v1/health/detailed")
    env = container_env(container)
    delay, timeout = parse_duration(env["KADAI_DRAIN_DELAY"]), parse_duration(env["KADAI_DRAIN_TIMEOUT"])
    assert delay > 0, "without a drain delay the listener closes before proxies stop sending"
    # No preStop hook: the drain delay does its job inside the process.
    assert "lifecycle" not in container
    assert pod["terminationGracePeriodSeconds"] >= delay + timeout + 5


def test_k8s_gateway_mounts_the_registry_configmap_as_a_directory() -> None:
    pod = gateway_pod()
    (container,) = pod["containers"]
    registry_path = Path(container_env(container)["KADAI_REGISTRY"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(registry_path.parent)]
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "kadai-registry"
    registry = generator("configMapGenerator", "kadai-registry")
    assert registry["files"] == [registry_path.name]
    # A hashed name would roll the pods on each edit instead of letting them reload the file.
    assert registry["options"]["disableNameSuffixHash"] is True


def test_k8s_secrets_are_generated_from_untracked_files_with_templates() -> None:
    referenced: dict[str, set[str]] = {}
    for workload in workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    referenced.setdefault(source["secretRef"]["name"], set())
            for value in container_env(container).values():
                if isinstance(value, dict) and "secretKeyRef" in value:
                    ref = value["secretKeyRef"]
                    referenced.setdefault(ref["name"], set()).add(ref["key"])
    assert referenced.keys() == {"kadai-jwt", "kadai-rabbitmq"}
    assert (K8S / "secrets" / ".gitignore").read_text().splitlines()[-1] == "*.env"
    for name, keys in referenced.items():
        (env_path,) = generator("secretGenerator", name)["envs"]
        assert env_path.endswith(".env")
        template = env_file(K8S / f"{env_path}.example")
        assert keys <= template.keys()
        # Templates carry no secret values: the gateway refuses an empty JWT secret in production.
        assert template.get("JWT_SECRET", "") == "" and template.get("password", "") == ""
    assert "JWT_SECRET" in env_file(K8S / "secrets" / "jwt.env.example")


# --- ConfigMap updates reach the gateway --------------------------------------------------------------

def _kubelet_write(volume: Path, content: bytes, generation: int) -> None:
    """Update a ConfigMap volume the way the kubelet does: a new timestamped directory, then an atomic
    rename of the ..data symlink; the file itself stays a symlink through ..data."""
    directory = volume / f"..2026_11_24_00_00_0{generation}.000000001"
    directory.mkdir()
    (directory / "registry.yaml").write_bytes(content)
    (volume / "..data_tmp").symlink_to(directory.name)
    old = (volume / "..data").resolve() if (volume / "..data").is_symlink() else None
    os.replace(volume / "..data_tmp", volume / "..data")
    if not (volume / "registry.yaml").is_symlink():
        (volume / "registry.yaml").symlink_to("..data/registry.yaml")
    if old is not None:
        shutil.rmtree(old)


async def test_configmap_update_by_symlink_swap_is_reloaded(tmp_path: Path) -> None:
    first = (K8S / "registry.yaml").read_bytes()
    edited = first.replace(b"timeouts: {read: 30s}", b"timeouts: {read: 45s}")
    assert edited != first
    _kubelet_write(tmp_path, first, 1)
    path = tmp_path / "registry.yaml"
    applied: list[RegistryConfig] = []

    def apply(config: RegistryConfig) -> int:
        applied.append(config)
        return 2

    watcher = RegistryWatcher(path, hashlib.sha256(first).hexdigest(), 1, apply, lambda _: None, interval=0.02)
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.sleep(0.1)  # a few polls of the unchanged volume: nothing to apply
        assert applied == []
        _kubelet_write(tmp_path, edited, 2)
        deadline = time.monotonic() + 5
        while not applied and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(applied) == 1, "the swapped ConfigMap was not reloaded"
    payments = next(route for route in applied[0].routes if route.prefix == "/api/v1/payments")
    assert payments.options.timeouts.read == 45.0
    assert route_table(applied[0]) == route_table(parse_registry(edited, "edited"))
