"""The policy data document, built from a plain description of the central registry.

Concept: the Rego policy (``policies/rego/exchange.rego``) reads one base document,
``data.registry``, with three parts: the services (their fields, purposes, whether they accept
changes), the access rights the registry grants, and the statutory bases (an ordinance naming which
clients may receive which fields of a service for which purposes). The central registry feeds
:class:`PolicyRegistry`; :func:`build_policy_data` turns it into that document, which an engine
takes with ``load_data`` (a registry change is a new document, swapped in whole).

Layout: every part is grouped by the service's provider member (``INSTANCE/CLASS/MEMBER``) and
then keyed by the unversioned service id, and access rights by client id below that. A keyed
lookup is cheap on OPA and linear in the number of keys at its level on rego-cpp, so no level holds
the whole federation (docs/policies.md, "Performance"). Access rights are granted per service code,
not per version, as in X-Road.

Trust assumption: the registry description is the operator's, already verified (the central
registry is signed). This module still refuses what would make a policy silently wrong: naive
times, empty windows, statutes that name no client, field or purpose (an empty allow-list is an
error, style rule 13), and rights or statutes for services the registry does not list.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from exchange.errors import ConfigurationError
from exchange.identifiers import ClientId, MemberId, ServiceId
from exchange.ports import JsonValue

__all__ = [
    "DATA_ROOT",
    "AccessRight",
    "PolicyRegistry",
    "ServicePolicy",
    "Statute",
    "build_policy_data",
    "empty_policy_data",
    "format_time",
]

DATA_ROOT = "registry"
"""The policy reads ``data.registry``; engines put the document there (one atomic replace)."""

Operation = Literal["read", "change"]


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """A service as the policy sees it: what it returns and what it may be called for."""

    service: ServiceId
    fields: tuple[str, ...]
    purposes: tuple[str, ...]
    changes: bool = False


@dataclass(frozen=True, slots=True)
class AccessRight:
    """The registry lets ``client`` call ``service``, within an optional window [from, until)."""

    service: ServiceId
    client: ClientId
    not_before: datetime | None = None
    not_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class Statute:
    """A statutory basis: ``ordinance`` lets the named clients receive ``fields`` of ``service``.

    ``ordinance`` is a stable id that appears in decisions and audit entries as
    ``statute:<ordinance>`` (e.g. ``jp-act-1967-81/art30-9``); ``title`` is for people
    (e.g. "住民基本台帳法 第30条の9"). Clients are named one by one, by member, or by member class
    (``GOV`` for every public body).
    """

    ordinance: str
    title: str
    service: ServiceId
    purposes: tuple[str, ...]
    fields: tuple[str, ...]
    clients: tuple[ClientId, ...] = ()
    client_members: tuple[MemberId, ...] = ()
    client_classes: tuple[str, ...] = ()
    operations: tuple[Operation, ...] = ("read",)
    not_before: datetime | None = None
    not_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class PolicyRegistry:
    """What the central registry knows that the policy needs."""

    services: tuple[ServicePolicy, ...]
    access_rights: tuple[AccessRight, ...] = ()
    statutes: tuple[Statute, ...] = ()


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a numeric offset (``+00:00``), which OPA and rego-cpp both parse."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ConfigurationError("policy times must be timezone-aware")
    return moment.astimezone(UTC).isoformat()


def empty_policy_data() -> dict[str, JsonValue]:
    """A registry with no services: every decision is a refusal."""
    return {"services": {}, "access_rights": {}, "statutes": {}}


def build_policy_data(registry: PolicyRegistry) -> dict[str, JsonValue]:
    """Build the ``data.registry`` document; raise ``ConfigurationError`` on what cannot be right."""
    services: dict[str, dict[str, JsonValue]] = {}
    known: set[str] = set()
    for svc in registry.services:
        key = str(svc.service.unversioned)
        if key in known:
            raise ConfigurationError(f"service listed twice: {key}")
        known.add(key)
        entry: dict[str, JsonValue] = {
            "fields": _names(svc.fields, f"fields of {key}", allow_empty=True),
            "purposes": _names(svc.purposes, f"purposes of {key}", allow_empty=True),
            "changes": svc.changes,
        }
        services.setdefault(_provider(svc.service), {})[key] = entry

    rights: dict[str, dict[str, dict[str, JsonValue]]] = {}
    for right in registry.access_rights:
        key = _known_service(right.service, known, "access right")
        window = _window(right.not_before, right.not_after, f"access right {right.client} → {key}")
        by_client = rights.setdefault(_provider(right.service), {}).setdefault(key, {})
        if str(right.client) in by_client:
            raise ConfigurationError(f"access right listed twice: {right.client} → {key}")
        by_client[str(right.client)] = window

    statutes: dict[str, dict[str, list[dict[str, JsonValue]]]] = {}
    for statute in registry.statutes:
        key = _known_service(statute.service, known, f"statute {statute.ordinance}")
        statutes.setdefault(_provider(statute.service), {}).setdefault(key, []).append(
            _statute(statute, key)
        )
    for by_service in statutes.values():
        for entries in by_service.values():
            # Sorted, so "the first applicable statute" is the same on every engine and run.
            entries.sort(key=lambda e: str(e["ordinance"]))
            ordinances = [e["ordinance"] for e in entries]
            if len(set(ordinances)) != len(ordinances):
                raise ConfigurationError(f"ordinance listed twice for one service: {ordinances}")

    return {"services": services, "access_rights": rights, "statutes": statutes}


def _provider(service: ServiceId) -> str:
    return str(service.provider.member)


def _known_service(service: ServiceId, known: set[str], what: str) -> str:
    key = str(service.unversioned)
    if key not in known:
        raise ConfigurationError(f"{what} names a service the registry does not list: {key}")
    return key


def _names(values: Iterable[str], what: str, *, allow_empty: bool = False) -> list[str]:
    names = sorted(set(values))
    if not names and not allow_empty:
        raise ConfigurationError(f"{what} is empty (an empty allow-list is an error)")
    for name in names:
        if not isinstance(name, str) or not name or name != name.strip():
            raise ConfigurationError(f"{what}: invalid name {name!r}")
    return names


def _window(
    not_before: datetime | None, not_after: datetime | None, what: str
) -> dict[str, JsonValue]:
    window: dict[str, JsonValue] = {}
    if not_before is not None:
        window["not_before"] = format_time(not_before)
    if not_after is not None:
        window["not_after"] = format_time(not_after)
    if not_before is not None and not_after is not None and not_after <= not_before:
        raise ConfigurationError(f"{what}: empty validity window")
    return window


def _statute(statute: Statute, key: str) -> dict[str, JsonValue]:
    what = f"statute {statute.ordinance} for {key}"
    if not statute.ordinance or statute.ordinance != statute.ordinance.strip():
        raise ConfigurationError(f"{what}: invalid ordinance id")
    if not (statute.clients or statute.client_members or statute.client_classes):
        raise ConfigurationError(f"{what} names no client (an empty allow-list is an error)")
    entry: dict[str, JsonValue] = {
        "ordinance": statute.ordinance,
        "title": statute.title,
        "purposes": _names(statute.purposes, f"{what}: purposes"),
        "fields": _names(statute.fields, f"{what}: fields"),
        "operations": _names(statute.operations, f"{what}: operations"),
    }
    if statute.clients:
        entry["clients"] = sorted({str(c) for c in statute.clients})
    if statute.client_members:
        entry["client_members"] = sorted({str(m) for m in statute.client_members})
    if statute.client_classes:
        entry["client_classes"] = _names(statute.client_classes, f"{what}: client classes")
    entry.update(_window(statute.not_before, statute.not_after, what))
    return entry
