"""A node's copy of the central registry (``exchange.node.registry_cache``): what its listeners
(the policy feed, the consent gate, …) are told, also when one of them fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from exchange.central_config import VerifiedRegistry
from exchange.db import make_engine, upgrade
from exchange.errors import TransportError
from exchange.identifiers import ServiceId
from exchange.node.registry_cache import RegistryCache
from tests.exchange.test_verification import NOW, World


class _Unreachable:
    """No central server: these tests hand the cache its copies themselves."""

    async def get(self, *_: object, **__: object) -> None:
        raise AssertionError("not fetched in these tests")


@pytest.fixture
def world(tmp_path: Path) -> World:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.sqlite'}")
    upgrade(engine)
    return World(tmp_path / "keys", engine)


def _cache(world: World) -> RegistryCache:
    return RegistryCache(
        anchor=world.anchor, central_url="http://central", transport=_Unreachable(), cache_file=None
    )


def test_a_listener_that_failed_hears_of_the_same_registry_again_until_it_takes_it(
    world: World,
) -> None:
    cache = _cache(world)
    heard: list[int] = []
    engine_up = False

    def policy_feed(registry: VerifiedRegistry) -> None:
        if not engine_up:
            raise TransportError("OPA at http://opa:8181: ConnectionError")
        heard.append(registry.serial)

    cache.on_change(policy_feed)
    raw = world.registry_bytes()
    with pytest.raises(TransportError):
        cache.accept(raw, now=NOW)
    with pytest.raises(TransportError):
        cache.accept(raw, now=NOW)  # the next refresh: the same serial, still not taken
    engine_up = True
    assert cache.accept(raw, now=NOW) is True
    assert cache.accept(raw, now=NOW) is False  # taken: the same serial is not news any more
    assert heard == [cache.current(NOW).serial]


def test_every_listener_hears_of_a_new_serial_once(world: World) -> None:
    cache = _cache(world)
    heard: list[int] = []
    cache.on_change(lambda r: heard.append(r.serial))
    first = world.registry_bytes()
    assert cache.accept(first, now=NOW) is True
    assert cache.accept(first, now=NOW) is False
    world.admin.add_service(
        ServiceId.parse("JP/GOV/132098/resident-registry/person/v1"),
        fields=("name",),
        purposes=("taxation",),
    )
    assert cache.accept(world.registry_bytes(), now=NOW) is True
    assert len(heard) == 2
    assert heard[0] < heard[1]
