"""What each component owns, for provisioning: the tables it migrates and its log's key.

``COMPONENT_BRANCHES`` names the packages whose tables each component's database holds (each
component migrates only its own); ``provision_audit_key`` and ``provision_consent_keys`` make the
keys ``onceonly keys …`` is the only maker of (docs/operator.md "Data directory"). Kept apart from
the wiring (``onceonly.wiring``, which imports every server part) so that the command line's
provisioning commands start without importing the servers.
"""

from __future__ import annotations

from pathlib import Path

from audit.checkpoint import NoteSigner
from exchange.keystore import KeyStore
from exchange.settings import Settings

__all__ = [
    "COMPONENT_BRANCHES",
    "CONSENT_ISSUER",
    "CONSENT_LOG",
    "audit_origin",
    "provision_audit_key",
    "provision_consent_keys",
]

COMPONENT_BRANCHES: dict[str, tuple[str, ...]] = {
    "central": ("exchange",),
    "node": ("exchange", "audit", "alerts"),
    "consent": ("consent",),
    "consent-audit": ("audit",),
    "procedures": ("procedures",),
    "registries": ("adapters",),
    "translator-audit": ("audit",),
}
"""Which packages' tables each component's database holds (each migrates only its own)."""
CONSENT_ISSUER = "onceonly-information-bank"
CONSENT_LOG = "consent-service"


def audit_origin(log_id: str) -> str:
    """The origin line of a log's checkpoints: it names the instance's log."""
    return f"onceonly.example/{log_id}/audit"


def provision_audit_key(settings: Settings, log_id: str) -> Path | None:
    """Provisioning: make a log's note key if it is missing; returns its path if it was made.

    An existing key is kept (and checked to be this log's)."""
    path = KeyStore(settings.data_dir).audit_key(log_id)
    if path.exists():
        NoteSigner.load(path, audit_origin(log_id))
        return None
    NoteSigner.create(path, audit_origin(log_id))
    return path


def provision_consent_keys(settings: Settings) -> list[Path]:
    """Provisioning for the central operator (``keys init``): the consent service's artefact
    key and its audit log key, each made only if missing; returns the paths made."""
    from consent.artefact import ConsentIssuerKey  # (the consent package is only needed here)

    keys = KeyStore(settings.data_dir)
    made: list[Path] = []
    if not keys.consent_issuer_key.exists():
        ConsentIssuerKey.create(keys.consent_issuer_key, issuer=CONSENT_ISSUER)
        made.append(keys.consent_issuer_key)
    log_key = provision_audit_key(settings, CONSENT_LOG)
    if log_key is not None:
        made.append(log_key)
    return made
