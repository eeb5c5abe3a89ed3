"""X-Road style identifiers as value objects (DESIGN "Identifiers").

``INSTANCE/CLASS/MEMBER`` names a member, ``INSTANCE/CLASS/MEMBER/SUBSYSTEM`` a client subsystem and
``INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE[/VERSION]`` a service, e.g.
``JP/GOV/132098/resident-registry/address/v1``. Trust assumption: none — these parse untrusted
text, so every part is checked against X-Road's allowed characters (``A-Za-z0-9'()+,-.=?``, minus
``/``) and a length bound before anything uses it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from exchange.errors import ClientError

__all__ = [
    "CLIENT_ID_PATTERN",
    "PART_PATTERN",
    "SERVICE_ID_PATTERN",
    "ClientId",
    "MemberId",
    "ServiceId",
    "parse_part",
]

MAX_PART_LEN = 64
PARSE_CACHE_SIZE = 4096  # every message names its ids again: parse each distinct text once
_PART = re.compile(r"^[A-Za-z0-9'()+,\-.=?_]+$")
_PART_RE = rf"[A-Za-z0-9'()+,\-.=?_]{{1,{MAX_PART_LEN}}}"
PART_PATTERN = f"^{_PART_RE}$"
"""What ``parse_part`` accepts, as a JSON Schema ``pattern`` (for the APIs' documents)."""
CLIENT_ID_PATTERN = f"^{_PART_RE}(/{_PART_RE}){{3}}$"
"""A client id as ``ClientId.parse`` accepts it (without surrounding blanks)."""
SERVICE_ID_PATTERN = f"^{_PART_RE}(/{_PART_RE}){{4,5}}$"
"""A service id as ``ServiceId.parse`` accepts it (without surrounding blanks)."""


def parse_part(value: str, what: str) -> str:
    """Check one identifier part; raise ``ClientError`` naming ``what`` when it is not valid."""
    if not value or len(value) > MAX_PART_LEN or not _PART.match(value):
        raise ClientError(f"invalid {what}: {value[:80]!r}", code="Client.InvalidIdentifier")
    return value


def _split(text: str, n_min: int, n_max: int, what: str) -> list[str]:
    parts = text.strip().split("/")
    if not n_min <= len(parts) <= n_max:
        raise ClientError(
            f"invalid {what}: expected {n_min}..{n_max} slash-separated parts",
            code="Client.InvalidIdentifier",
        )
    return parts


@dataclass(frozen=True, slots=True, order=True)
class MemberId:
    """A member organisation: ``INSTANCE/CLASS/CODE`` (a municipality's code is its LG code)."""

    instance: str
    member_class: str
    code: str

    @classmethod
    def parse(cls, text: str) -> MemberId:
        return _parse_member_id(text)

    def __str__(self) -> str:
        return f"{self.instance}/{self.member_class}/{self.code}"


@dataclass(frozen=True, slots=True, order=True)
class ClientId:
    """A client subsystem: ``INSTANCE/CLASS/MEMBER/SUBSYSTEM``."""

    member: MemberId
    subsystem: str

    @classmethod
    def parse(cls, text: str) -> ClientId:
        return _parse_client_id(text)

    def __str__(self) -> str:
        return f"{self.member}/{self.subsystem}"


@dataclass(frozen=True, slots=True, order=True)
class ServiceId:
    """A service: ``INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE[/VERSION]``."""

    provider: ClientId
    code: str
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> ServiceId:
        return _parse_service_id(text)

    @property
    def unversioned(self) -> ServiceId:
        return ServiceId(self.provider, self.code, None)

    def __str__(self) -> str:
        base = f"{self.provider}/{self.code}"
        return f"{base}/{self.version}" if self.version else base


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse_member_id(text: str) -> MemberId:
    i, c, m = _split(text, 3, 3, "member id")
    return MemberId(
        parse_part(i, "instance"), parse_part(c, "member class"), parse_part(m, "member code")
    )


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse_client_id(text: str) -> ClientId:
    parts = _split(text, 4, 4, "client id")
    return ClientId(MemberId.parse("/".join(parts[:3])), parse_part(parts[3], "subsystem"))


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse_service_id(text: str) -> ServiceId:
    parts = _split(text, 5, 6, "service id")
    version = parse_part(parts[5], "service version") if len(parts) == 6 else None
    return ServiceId(
        ClientId.parse("/".join(parts[:4])), parse_part(parts[4], "service code"), version
    )
