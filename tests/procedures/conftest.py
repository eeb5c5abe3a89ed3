"""Fixtures of the procedures tests: a running federation per test (fresh database)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procedures.helpers import Federation, running_federation


@pytest.fixture
def federation(tmp_path: Path, db_url: str) -> Iterator[Federation]:
    yield from running_federation(tmp_path, db_url)
