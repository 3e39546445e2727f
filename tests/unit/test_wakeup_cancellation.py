"""Loops that sleep on "wake me or time out" must stop when cancelled, even when the wake-up and the
cancellation land in the same tick (Python 3.11's asyncio.wait_for swallows that cancellation)."""
from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.reload import RegistryWatcher


async def test_the_registry_watcher_stops_when_cancelled_in_the_tick_of_a_sighup(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text("version: 1\n")
    watcher = RegistryWatcher(
        registry, current_digest="", current_revision=1, apply=lambda config: 1, report=lambda status: None,
        interval=30.0,
    )
    for _ in range(20):
        task = asyncio.create_task(watcher.run())
        await asyncio.sleep(0.005)  # asleep on its wake-up event
        watcher.reload_now()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
        assert done, "the watcher kept running after it was cancelled"
        assert task.cancelled()
