"""A node's copy of the central registry: fetched, verified, cached, refreshed (issue 2).

Every ``registry_refresh_s`` the node fetches the signed document from the central server and
verifies it against its trust anchor (``exchange.central_config.verify_registry``). It refuses an
expired document and one whose serial is older than what it holds (rollback), keeps serving with
the last good copy while the central server is unreachable — until that copy expires, when the
node fails closed — and writes the last good copy to disk so a restart does not need the central
server to be up.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from exchange.central_config import VerifiedRegistry, verify_registry
from exchange.errors import ConfigurationError, OnceOnlyError
from exchange.ports import Transport
from exchange.signing import CentralVerifier

__all__ = ["RegistryCache"]

FETCH_TIMEOUT_S = 5.0
_log = logging.getLogger("onceonly.registry")


class RegistryCache:
    def __init__(
        self,
        *,
        anchor: CentralVerifier,
        central_url: str,
        transport: Transport,
        cache_file: Path | None,
    ) -> None:
        self._anchor = anchor
        self._url = central_url.rstrip("/") + "/registry"
        self._transport = transport
        self._cache_file = cache_file
        self._current: VerifiedRegistry | None = None
        self._listeners: list[Callable[[VerifiedRegistry], None]] = []
        self._unannounced = False
        """The current copy has not reached every listener (one failed): announce it again."""

    def on_change(self, listener: Callable[[VerifiedRegistry], None]) -> None:
        self._listeners.append(listener)
        if self._current is not None:
            listener(self._current)

    def current(self, now: datetime) -> VerifiedRegistry:
        reg = self._current
        if reg is None:
            raise ConfigurationError(
                "no verified central registry yet", code="Server.ServerProxy.OutdatedGlobalConf"
            )
        if reg.document.expires_at <= now:
            raise ConfigurationError(
                "the central registry has expired", code="Server.ServerProxy.OutdatedGlobalConf"
            )
        return reg

    def accept(self, raw: bytes, *, now: datetime) -> bool:
        """Verify ``raw`` and adopt it if it is at least as new as the current copy.

        The listeners hear of each new serial. When one of them fails (an OPA server not up yet
        takes no policy data), the error goes to the caller and the next copy accepted — the same
        serial at the next refresh — is announced to every listener again, until all of them have
        taken it: otherwise the policy engine would decide on no data (every exchange refused)
        until the registry next changed."""
        cur = self._current
        reg = verify_registry(raw, self._anchor, now=now, min_serial=cur.serial if cur else 0)
        if (
            cur is not None
            and reg.serial == cur.serial
            and reg.document.expires_at <= cur.document.expires_at
            and not self._unannounced
        ):
            return False
        changed = cur is None or reg.serial != cur.serial or self._unannounced
        self._current = reg
        if self._cache_file is not None:
            tmp = self._cache_file.with_suffix(".tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(raw)
            os.replace(tmp, self._cache_file)
        if changed:
            self._unannounced = True
            for listener in self._listeners:
                listener(reg)
            self._unannounced = False
        return changed

    def load_cached(self, *, now: datetime) -> bool:
        if self._cache_file is None or not self._cache_file.exists():
            return False
        try:
            self.accept(self._cache_file.read_bytes(), now=now)
        except OnceOnlyError as exc:
            _log.warning("cached registry not usable: %s", exc.detail)
            return False
        return True

    async def refresh(self, *, now: datetime) -> bool:
        resp = await self._transport.get(self._url, {}, timeout_s=FETCH_TIMEOUT_S)
        if resp.status != 200:
            raise ConfigurationError(f"central server answered {resp.status}")
        return self.accept(resp.body, now=now)

    async def run(self, interval_s: float, clock: Callable[[], datetime]) -> None:
        """Refresh forever (cancel to stop); failures keep the last good copy."""
        while True:
            try:
                await self.refresh(now=clock())
            except OnceOnlyError as exc:
                _log.warning("registry refresh failed: %s", exc.detail)
            await asyncio.sleep(interval_s)
