"""Feeds each newly verified central registry into the policy engine (no restart needed).

The policies read only what the verified registry says: services, access rights, statutes.
"""

from __future__ import annotations

from exchange.central_config import VerifiedRegistry
from exchange.identifiers import ClientId, ServiceId
from policies.data import (
    AccessRight,
    PolicyRegistry,
    ServicePolicy,
    Statute,
    build_policy_data,
)
from policies.engine import PolicyEngine
from policies.opa_server import OpaServerEngine

__all__ = ["PolicyFeed", "policy_registry"]


def policy_registry(registry: VerifiedRegistry) -> PolicyRegistry:
    """What the policies need from the verified registry: services, access rights, statutes."""
    doc = registry.document
    return PolicyRegistry(
        services=tuple(
            ServicePolicy(ServiceId.parse(s.id), s.fields, s.purposes, s.changes)
            for s in doc.services
        ),
        access_rights=tuple(
            AccessRight(
                ServiceId.parse(r.service), ClientId.parse(r.client), r.not_before, r.not_after
            )
            for r in doc.access_rights
        ),
        statutes=tuple(
            Statute(
                ordinance=t.ordinance,
                title=t.title_ja or t.title_en or t.ordinance,
                service=ServiceId.parse(t.service),
                purposes=t.purposes,
                fields=t.fields,
                clients=(ClientId.parse(t.client),),
                operations=("read", "change"),
            )
            for t in doc.statutes
        ),
    )


class PolicyFeed:
    """Pushes each newly verified registry into the policy engine (no restart needed)."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine
        self._uploaded = False

    def on_registry(self, registry: VerifiedRegistry) -> None:
        if isinstance(self.engine, OpaServerEngine) and not self._uploaded:
            self.engine.upload_policies()
            self._uploaded = True
        self.engine.load_data(build_policy_data(policy_registry(registry)))
