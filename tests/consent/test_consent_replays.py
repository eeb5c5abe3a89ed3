"""N4: the consent service remembers the signed requests that changed state until their time
window closes (docs/protocol.md §5, docs/consent.md "Replays")."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select

from consent.lifecycle import SEEN_PRUNE_INTERVAL_S, ConsentService
from consent.store import SeenRequestRow
from exchange.errors import ReplayError
from tests.consent.consent_factories import T0


def _remembered(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(SeenRequestRow)).scalar_one())


def test_the_same_signed_request_twice_is_a_replay(service: ConsentService) -> None:
    service.remember_request("id-1", T0 + timedelta(seconds=60), now=T0)
    with pytest.raises(ReplayError):
        service.remember_request("id-1", T0 + timedelta(seconds=60), now=T0 + timedelta(seconds=1))
    service.remember_request("id-2", T0 + timedelta(seconds=60), now=T0 + timedelta(seconds=1))


def test_ids_are_forgotten_once_their_window_has_closed(
    service: ConsentService, engine: Engine
) -> None:
    service.remember_request("old", T0 + timedelta(seconds=60), now=T0)
    assert _remembered(engine) == 1
    later = T0 + timedelta(seconds=60 + SEEN_PRUNE_INTERVAL_S + 1)
    service.remember_request("new", later + timedelta(seconds=60), now=later)
    with engine.connect() as conn:
        assert conn.execute(select(SeenRequestRow.request_id)).scalars().all() == ["new"]
