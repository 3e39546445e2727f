"""What the commands do when given no options: the spec's ports and the registry in the working directory."""
from __future__ import annotations

from gateway.cli import _parser
from gateway.config.settings import load_settings


def test_up_and_gateway_listen_on_4000_on_every_address_by_default() -> None:
    for command in ("up", "gateway"):
        args = _parser().parse_args([command])
        assert (args.host, args.port, args.registry) == ("0.0.0.0", 4000, None)


def test_the_registry_is_kadai_registry_or_registry_yaml() -> None:
    assert load_settings({}).registry_path == "registry.yaml"
    assert load_settings({"KADAI_REGISTRY": "/etc/kadai/registry.yaml"}).registry_path == "/etc/kadai/registry.yaml"


def test_a_service_runs_on_its_own_port_unless_told() -> None:
    assert _parser().parse_args(["service", "order"]).port is None  # services/commands.py takes the catalogue's
    assert _parser().parse_args(["service", "order", "--port", "3103"]).port == 3103
