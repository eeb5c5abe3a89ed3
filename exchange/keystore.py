"""Where keys and certificates live in the data directory (never in the repository).

::

    <data_dir>/
      instance.json            instance id (written by ``keys init``)
      ca/ca.key  ca/ca.pem     the instance CA (central operator only)
      central/central.key      the central server's registry signing key
      anchor.pem               the trust anchor: the central server's public key (for every node)
      dev-issuer.key  .pub     the development token issuer (demo and trials only)
      consent/issuer.key       the consent service's artefact signing key (central operator)
      audit/<JP_GOV_132098>.skey  audit/consent-service.skey   each transparency log's note key
      translator/translator.key  the pseudonym translator's token signing key (central side)
      members/<JP_GOV_132098>/<subsystem>.key  .pem   a subsystem's signing key and certificate
      members/<JP_GOV_132098>/seal/<subsystem>.key  .pub   a subsystem's X25519 sealing key
      members/<JP_GOV_132098>/registry.json           the last good signed registry (node cache)

Private keys are written 0600 by ``exchange.signing.save_private_key``.

Keys are made only by an explicit provisioning step (``onceonly keys …``, or ``provision`` for the
reference federation); a component that starts without one refuses with ``MissingKeyError``,
which names the file and the command that creates it. A key made anew at start would be a key
that nobody pinned: every checkpoint, artefact or token it signs would fail verification, or be
trusted by nobody who matters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from exchange.errors import ConfigurationError
from exchange.identifiers import ClientId, MemberId

__all__ = [
    "DEV_ISSUER_COMMAND",
    "INIT_COMMAND",
    "KeyStore",
    "MissingKeyError",
    "member_command",
]

INIT_COMMAND = "onceonly keys init --instance <ID>"
"""What makes the CA, the central key, the anchor, and the consent service's keys."""
DEV_ISSUER_COMMAND = "onceonly keys dev-issuer"
"""What makes the development token issuer's key (demo and trials only)."""


def member_command(member: MemberId | str) -> str:
    """What makes a member's subsystem keys and its audit log key."""
    return f"onceonly keys member {member}/<SUBSYSTEM>"


class MissingKeyError(ConfigurationError):
    """A key file a component needs at start is missing; the message names the file and the
    command that creates it (a key is never made at start)."""

    code = "Server.Configuration.MissingKey"

    def __init__(self, what: str, path: Path, command: str, *, alternative: str = "") -> None:
        super().__init__(
            f"missing {what} ({path}): run `{command}`"
            + (f", or {alternative}" if alternative else "")
        )
        self.path = path
        self.command = command


@dataclass(frozen=True, slots=True)
class KeyStore:
    root: Path

    @property
    def instance_file(self) -> Path:
        return self.root / "instance.json"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.pem"

    @property
    def central_key(self) -> Path:
        return self.root / "central" / "central.key"

    @property
    def anchor(self) -> Path:
        return self.root / "anchor.pem"

    @property
    def dev_issuer_key(self) -> Path:
        return self.root / "dev-issuer.key"

    @property
    def dev_issuer_public(self) -> Path:
        """Its public key (PEM), for ``ONCEONLY_JWT_PUBLIC_KEY_FILE`` of other data directories."""
        return self.root / "dev-issuer.pub"

    @property
    def consent_issuer_key(self) -> Path:
        return self.root / "consent" / "issuer.key"

    def audit_key(self, log_id: str) -> Path:
        """A transparency log's note key (Go ``skey`` text)."""
        return self.root / "audit" / f"{log_id.replace('/', '_')}.skey"

    def require(self, path: Path, what: str, command: str, *, alternative: str = "") -> Path:
        """``path`` if it is a file, else ``MissingKeyError`` naming it and ``command``."""
        if not path.is_file():
            raise MissingKeyError(what, path.absolute(), command, alternative=alternative)
        return path

    def member_dir(self, member: MemberId) -> Path:
        return self.root / "members" / str(member).replace("/", "_")

    def subsystem_key(self, subsystem: ClientId) -> Path:
        return self.member_dir(subsystem.member) / f"{subsystem.subsystem}.key"

    def subsystem_cert(self, subsystem: ClientId) -> Path:
        return self.member_dir(subsystem.member) / f"{subsystem.subsystem}.pem"

    def subsystem_seal_key(self, subsystem: ClientId) -> Path:
        """The subsystem's sealing key (its own folder, so it is never taken for a subsystem)."""
        return self.member_dir(subsystem.member) / "seal" / f"{subsystem.subsystem}.key"

    def subsystem_seal_public(self, subsystem: ClientId) -> Path:
        """Its public half (base64url), for ``registry add-subsystem --seal-key``."""
        return self.subsystem_seal_key(subsystem).with_suffix(".pub")

    @property
    def translator_key(self) -> Path:
        return self.root / "translator" / "translator.key"

    def registry_cache(self, member: MemberId) -> Path:
        return self.member_dir(member) / "registry.json"

    def instance(self) -> str:
        try:
            data = json.loads(self.instance_file.read_text())
            instance = data["instance"]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigurationError(
                f"no instance in {self.instance_file.absolute()}: run `{INIT_COMMAND}`"
            ) from exc
        if not isinstance(instance, str):
            raise ConfigurationError("instance.json is malformed")
        return instance

    def hosted_subsystems(self, member: MemberId) -> list[ClientId]:
        folder = self.member_dir(member)
        return sorted(ClientId(member, p.stem) for p in folder.glob("*.key"))

    def require_hosted_subsystems(self, member: MemberId) -> list[ClientId]:
        """The member's subsystems with keys here; a node with none cannot sign anything."""
        hosted = self.hosted_subsystems(member)
        if not hosted:
            folder = self.member_dir(member).absolute()
            raise MissingKeyError(
                f"subsystem keys of {member}", folder / "*.key", member_command(member)
            )
        return hosted
