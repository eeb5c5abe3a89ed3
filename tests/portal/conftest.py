"""Fixtures for the portal tests: a real world (database, consents, logs, issuer, portal)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.portal.portal_world import World, build_world


@pytest.fixture
def world(db_url: str, make_db_url: Callable[[], str], tmp_path: Path) -> World:
    return build_world(db_url, make_db_url(), tmp_path)
