"""The README's "order flow with curl" runs as written against a real platform (`kadai up` on the
embedded backends, on free ports): the commands a newcomer copies must work."""
from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import backends
from tests.platform.helpers import UpProcess, platform_env, registry_on_free_ports
from tests.support import REPO

StartUp = Callable[[Path, dict[str, str]], UpProcess]


def walkthrough() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### The order flow with curl") :]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "the README's curl walk-through is a ```sh block"
    return match.group(1)


@pytest.mark.slow
async def test_the_readme_curl_walkthrough_runs_as_written(tmp_path: Path, up: StartUp) -> None:
    backends.require_programs("curl", "jq", why="the README's walk-through uses them")
    script = walkthrough()
    assert "API=localhost:4000/api/v1" in script
    registry, _ports = registry_on_free_ports(tmp_path / "registry.yaml")
    process = up(registry, platform_env(tmp_path, REDIS_URL="memory://", AMQP_URL="memory://"))
    await process.wait_ready()
    port = process.url.rsplit(":", 1)[1]

    run = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script.replace("localhost:4000", f"127.0.0.1:{port}"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ["PATH"]},
    )
    out, err = await asyncio.wait_for(run.communicate(), 60)
    assert run.returncode == 0, (out.decode(), err.decode(), process.describe())

    # What the comments promise: paid, 7 left of 10, the customer's two SMS, 3 x 2500 cents of revenue.
    printed = out.decode().split('"paid"\n', 1)[1].splitlines()
    assert printed[0] == "7", out.decode()
    assert sorted(printed[1:3]) == ["order.confirmation", "payment.receipt"]
    assert printed[3:] == ['{"USD":7500}']
