"""Does a consent's scope cover one exchange? Shared by the store check and the provider's local
check of the artefact, so both refuse for the same reasons with the same words.

Order of the checks: window, subject, purpose, client, service, fields — the first mismatch is the
reason given (the others would only repeat that the consent does not cover the exchange).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from exchange.identifiers import ServiceId
from exchange.ports import ConsentQuery

__all__ = ["scope_mismatch", "service_covered"]


def service_covered(consented: Sequence[str], service: ServiceId) -> bool:
    """A consent for ``…/address`` covers every version of it; one for ``…/address/v1`` only v1."""
    asked = str(service)
    unversioned = str(service.unversioned)
    return any(s in (asked, unversioned) for s in consented)


def scope_mismatch(
    *,
    subject: str,
    client: str,
    services: Sequence[str],
    purpose: str,
    fields: Sequence[str],
    valid_from: datetime,
    valid_until: datetime,
    query: ConsentQuery,
) -> str | None:
    """The reason the consent does not cover ``query``, or ``None`` when it does."""
    if query.now < valid_from:
        return f"consent {query.consent_id} is not valid before {valid_from.isoformat()}"
    if query.now >= valid_until:
        return f"consent {query.consent_id} expired at {valid_until.isoformat()}"
    if query.subject is None or query.subject != subject:
        return f"consent {query.consent_id} was given by another data subject"
    if query.purpose != purpose:
        return f"consent {query.consent_id} is for purpose {purpose!r}, not {query.purpose[:64]!r}"
    if str(query.client) != client:
        return f"consent {query.consent_id} was given to another client, not {query.client}"
    if not service_covered(services, query.service):
        return f"consent {query.consent_id} does not cover service {query.service}"
    extra = sorted(set(query.fields) - set(fields))
    if extra:
        return f"consent {query.consent_id} does not cover the fields {', '.join(extra[:20])}"
    return None
