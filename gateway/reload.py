"""Hot reload of registry.yaml: poll the file, validate a changed one, swap the route table.

An invalid edit keeps the last good table serving, is logged, and shows in the status endpoint.
Polling a stat() twice a second costs nothing and needs no inotify dependency; SIGHUP reloads at once.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.config.errors import ConfigError
from gateway.config.loader import parse_registry
from gateway.config.schema import RegistryConfig
from gateway.envelope import utc_timestamp
from gateway.logs import log_fields

log = logging.getLogger("gateway.reload")


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    ok: bool
    at: str
    revision: int
    """Revision in use after this attempt."""
    digest: str
    """sha256 of the file that was read."""
    error: str | None = None

    def describe(self) -> dict[str, object]:
        digest = self.digest[:12]
        return {"ok": self.ok, "at": self.at, "revision": self.revision, "digest": digest, "error": self.error}


def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class RegistryWatcher:
    """Reloads the registry when the file changes; `apply` swaps in a validated config."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        current_digest: str,
        current_revision: int,
        apply: Callable[[RegistryConfig], int],
        report: Callable[[ReloadStatus], None],
        interval: float = 0.5,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self._apply = apply
        self._report = report
        self._digest = current_digest
        self.revision = current_revision
        self._last_ok = True
        self._fingerprint = _fingerprint(self.path)
        self._wakeup = asyncio.Event()

    def reload_now(self) -> None:
        """Check the file at the next tick even if its stat did not change (SIGHUP)."""
        self._fingerprint = None
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that lands
            # in the same tick as a wake-up (SIGHUP), and the watcher would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wakeup.wait()
            self._wakeup.clear()
            fingerprint = _fingerprint(self.path)
            if fingerprint == self._fingerprint:
                continue
            # Editors write in several steps: wait until the file holds still for a moment.
            await asyncio.sleep(min(0.1, self.interval))
            if _fingerprint(self.path) != fingerprint:
                continue
            self._fingerprint = fingerprint
            self.check()

    def check(self) -> ReloadStatus | None:
        """Read the file once; apply it if its content changed. Returns the outcome, None if unchanged."""
        source = str(self.path)
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            return self._failed(f"{source}: cannot read the file: {exc.strerror or exc}", "")
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            if self._last_ok:
                return None
            # A rejected edit was undone: the file again says what is running.
            status = ReloadStatus(ok=True, at=utc_timestamp(), revision=self.revision, digest=digest)
            log.info("registry back to the configuration in use", extra=log_fields(revision=self.revision))
            self._report(status)
            self._last_ok = True
            return status
        try:
            config = parse_registry(data, source)
        except ConfigError as exc:
            return self._failed(exc.render(), digest)
        except Exception as exc:  # never let a surprise kill the watcher: hot reload must keep working
            log.exception("registry reload failed unexpectedly")
            return self._failed(f"{source}: {exc.__class__.__name__}: {exc}", digest)
        try:
            revision = self._apply(config)
        except Exception as exc:  # building the chains ran third-party middleware constructors
            log.exception("registry reload failed while building routes")
            return self._failed(f"{source}: building the routes failed: {exc}", digest)
        self._digest = digest
        self.revision = revision
        self._last_ok = True
        status = ReloadStatus(ok=True, at=utc_timestamp(), revision=revision, digest=digest)
        log.info(
            "registry reloaded",
            extra=log_fields(revision=revision, digest=digest[:12], routes=len(config.routes)),
        )
        self._report(status)
        return status

    def _failed(self, error: str, digest: str) -> ReloadStatus:
        self._last_ok = False
        status = ReloadStatus(ok=False, at=utc_timestamp(), revision=self.revision, digest=digest, error=error)
        log.error("registry reload rejected; the last good configuration stays in use", extra=log_fields(error=error))
        self._report(status)
        return status
