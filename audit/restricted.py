"""Restricted entries: an exchange kept from its citizen's view until a release time, committed
in the log from the start (issue #15 item 3; Estonia's model for law-enforcement and covert
queries).

Concept: an exchange under a restricted statute (``exchange.central_config.StatuteEntry
.restricted_days``) reaches the log as an ``AuditEvent`` with ``restricted_until``. Its entry is
written at once, like any other, but instead of ``subject`` its bytes carry::

    restricted_until    RFC 3339: when the citizen may see it
    subject_commitment  base64(SHA-256("onceonly restricted subject v1" 0x00 ‖ salt ‖ subject))

with a fresh random 32-byte ``salt`` that the log keeps, beside the subject, in its own table
(``audit_restricted``). The entry names no subject, so the subject map
(``audit.completeness``) does not count it and the citizen's search does not find it: no count,
no tip-off. Auditors see it with its statute (``basis``) and release date.

At the release time the log appends a *release entry* (``TransparencyLog.release_due``)::

    {"kind": "release", "decision": "info", "node": <the entry's node>, "time": <release time>,
     "subject": <subject>,
     "extra": {"releases": "<index>", "leaf_hash": "<base64>", "salt": "<base64>"}}

It is about the subject, so it counts in the subject's chain from then on, and it binds the
restricted entry by index and leaf hash and opens its commitment. ``check_release`` is the one
check of a release against the entry it releases, used by the citizen's ``verify_record`` and by
``audit verify``.

Trust assumption: none here — everything is recomputed from entry bytes the caller holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "COMMITMENT_DOMAIN",
    "RELEASE_KIND",
    "Release",
    "ReleaseError",
    "check_release",
    "commitment",
    "is_restricted",
    "new_salt",
    "parse_release",
    "release_extra",
    "restricted_until",
]

COMMITMENT_DOMAIN = b"onceonly restricted subject v1\x00"
RELEASE_KIND = "release"
SALT_BYTES = 32
_HASH_BYTES = 32


class ReleaseError(Exception):
    """A release entry does not release what it claims; the message says why."""


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def commitment(salt: bytes, subject: str) -> str:
    """The ``subject_commitment`` a restricted entry carries for ``subject``."""
    digest = hashlib.sha256(
        COMMITMENT_DOMAIN + salt + subject.encode("utf-8", "surrogatepass")
    ).digest()
    return base64.b64encode(digest).decode()


def is_restricted(record: Mapping[str, Any]) -> bool:
    """A restricted entry: it commits to a subject instead of naming one."""
    return "subject_commitment" in record


def restricted_until(record: Mapping[str, Any]) -> datetime | None:
    """The release time a restricted entry's bytes carry (None when there is no valid one)."""
    value = record.get("restricted_until")
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


@dataclass(frozen=True, slots=True)
class Release:
    """What a release entry says: ``subject`` is the subject of entry ``releases``, whose leaf
    hash is ``leaf_hash``, and ``salt`` opens its commitment."""

    releases: int
    leaf_hash: bytes
    salt: bytes
    subject: str
    time: datetime | None


def release_extra(index: int, leaf_hash: bytes, salt: bytes) -> dict[str, str]:
    """The ``extra`` of the release entry of entry ``index``."""
    return {
        "releases": str(index),
        "leaf_hash": base64.b64encode(leaf_hash).decode(),
        "salt": base64.b64encode(salt).decode(),
    }


def _b64(value: object, size: int) -> bytes:
    if not isinstance(value, str):
        raise TypeError("not base64 text")
    raw = base64.b64decode(value, validate=True)
    if len(raw) != size:
        raise ValueError("wrong length")
    return raw


def parse_release(record: Mapping[str, Any]) -> Release | None:
    """The release a record states; None when it is not a release entry. An entry of kind
    ``release`` that cannot be read is a ``ReleaseError``."""
    if record.get("kind") != RELEASE_KIND:
        return None
    extra, subject = record.get("extra"), record.get("subject")
    try:
        if not isinstance(extra, dict) or not isinstance(subject, str):
            raise TypeError("no subject or extra")
        index = extra.get("releases")
        if not isinstance(index, str) or not index.isdigit() or len(index) > 19:
            raise ValueError("not an index")
        return Release(
            int(index),
            _b64(extra.get("leaf_hash"), _HASH_BYTES),
            _b64(extra.get("salt"), SALT_BYTES),
            subject,
            restricted_until({"restricted_until": record.get("time")}),
        )
    except (TypeError, ValueError, binascii.Error) as exc:
        raise ReleaseError("the release entry is malformed") from exc


def check_release(
    release: Release, index: int, released: Mapping[str, Any], released_leaf: bytes
) -> None:
    """Raise ``ReleaseError`` unless the release entry at ``index`` truly releases the entry
    ``released`` (its record, and its leaf hash recomputed by the caller from its bytes)."""
    if release.releases >= index:
        raise ReleaseError(f"it releases entry {release.releases}, which is not before it")
    if not is_restricted(released):
        raise ReleaseError(f"entry {release.releases} is not a restricted entry")
    # the leaf hash binds the release to the exact entry (client, statute, time, …)
    if not hmac.compare_digest(release.leaf_hash, released_leaf):
        raise ReleaseError(f"entry {release.releases} is not the entry it releases")
    # the salt opens the commitment only for the subject the entry was about
    stated = released.get("subject_commitment")
    if not isinstance(stated, str) or not hmac.compare_digest(
        commitment(release.salt, release.subject).encode(), stated.encode()
    ):
        raise ReleaseError(f"its subject is not the one entry {release.releases} committed to")
    until = restricted_until(released)
    if until is None:
        raise ReleaseError(f"entry {release.releases} carries no release time")
    if release.time is None or release.time < until:
        raise ReleaseError(f"it releases entry {release.releases} before its release time")
