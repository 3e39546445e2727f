"""Fixtures of the real-process tests."""
from __future__ import annotations

import pytest

from tests.process.helpers import GATEWAY_ENV_VARS


@pytest.fixture(autouse=True)
def _clean_gateway_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gateway processes inherit os.environ: drop the gateway's own variables a shell or CI may have set."""
    for name in GATEWAY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
