"""Where keys and certificates live in the data directory (never in the repository).

::

    <data_dir>/
      instance.json            instance id (written by ``keys init``)
      ca/ca.key  ca/ca.pem     the instance CA (central operator only)
      central/central.key      the central server's registry signing key
      anchor.pem               the trust anchor: the central server's public key (for every node)
      dev-issuer.key           the development token issuer (demo only)
      translator/translator.key  the pseudonym translator's token signing key (central side)
      members/<JP_GOV_132098>/<subsystem>.key  .pem   a subsystem's signing key and certificate
      members/<JP_GOV_132098>/seal/<subsystem>.key  .pub   a subsystem's X25519 sealing key
      members/<JP_GOV_132098>/registry.json           the last good signed registry (node cache)

Private keys are written 0600 by ``exchange.signing.save_private_key``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from exchange.errors import ConfigurationError
from exchange.identifiers import ClientId, MemberId

__all__ = ["KeyStore"]


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
                f"no instance in {self.root}: run `onceonly keys init` first"
            ) from exc
        if not isinstance(instance, str):
            raise ConfigurationError("instance.json is malformed")
        return instance

    def hosted_subsystems(self, member: MemberId) -> list[ClientId]:
        folder = self.member_dir(member)
        return sorted(ClientId(member, p.stem) for p in folder.glob("*.key"))
