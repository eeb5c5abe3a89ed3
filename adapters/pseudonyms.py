"""Pseudonymous subject identifiers per agency (like Japan's 機関別符号 for My Number).

Each agency (a member's subsystem, e.g. ``JP/GOV/132098/municipal-tax``) knows a citizen only by
its own pseudonym. The pseudonym service links them: ``enrol`` gives a citizen one random pseudonym
per agency, ``translate`` maps one agency's pseudonym to another's. Pseudonyms are random, not
derived from the master key, so holding pseudonyms of two agencies reveals nothing about the
master key or about each other without the service.

Trust assumption: the service is run by the platform operator and is the only holder of the link
table. The master key (``citizen_key``) goes in through ``enrol``/``pseudonym_for`` and never comes
out: no method returns it, and errors do not echo it.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from adapters.store import PSEUDONYM_SUBJECTS_TABLE, PSEUDONYMS_TABLE
from exchange.errors import ConfigurationError, ConflictError, NotFoundError

__all__ = ["PSEUDONYM_BITS", "PseudonymService", "random_pseudonym"]

PSEUDONYM_BITS = 80
"""Random bits per pseudonym: 20 hex digits; collisions are refused by a unique constraint."""

_SUBJECTS = PSEUDONYM_SUBJECTS_TABLE
_PSEUDONYMS = PSEUDONYMS_TABLE


def random_pseudonym() -> str:
    """A fresh pseudonym from the OS CSPRNG."""
    return f"{secrets.randbits(PSEUDONYM_BITS):020X}"


class PseudonymService:
    """Issues and translates per-agency pseudonyms over its own store (``adapters_pseudonym*``)."""

    def __init__(
        self,
        engine: Engine,
        agencies: Sequence[str],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        token: Callable[[], str] = random_pseudonym,
        new_subject_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        if not agencies:
            raise ConfigurationError("the pseudonym service needs at least one agency")
        if len(set(agencies)) != len(agencies):
            raise ConfigurationError("agencies must be distinct")
        self._engine = engine
        self._agencies = tuple(agencies)
        self._clock = clock
        self._token = token
        self._new_subject_id = new_subject_id

    @property
    def agencies(self) -> tuple[str, ...]:
        return self._agencies

    def enrol(self, citizen_key: str) -> dict[str, str]:
        """The citizen's pseudonym for every agency, issuing those still missing (idempotent)."""
        with self._engine.begin() as conn:
            subject_id = conn.execute(
                select(_SUBJECTS.c.id).where(_SUBJECTS.c.citizen_key == citizen_key)
            ).scalar()
            if subject_id is None:
                subject_id = self._new_subject_id()
                conn.execute(
                    insert(_SUBJECTS).values(
                        id=subject_id, citizen_key=citizen_key, created_at=self._clock()
                    )
                )
            have = dict(
                conn.execute(
                    select(_PSEUDONYMS.c.agency, _PSEUDONYMS.c.pseudonym).where(
                        _PSEUDONYMS.c.subject_id == subject_id
                    )
                ).all()
            )
            missing = [
                {"subject_id": subject_id, "agency": a, "pseudonym": self._token()}
                for a in self._agencies
                if a not in have
            ]
            if missing:
                conn.execute(insert(_PSEUDONYMS), missing)
                have.update({m["agency"]: m["pseudonym"] for m in missing})
        return {a: have[a] for a in self._agencies}

    def enrol_many(self, citizen_keys: Iterable[str]) -> list[dict[str, str]]:
        """Bulk enrolment of *new* citizens (one transaction, executemany).

        Raises ``ConflictError`` when any key is already enrolled (use ``enrol`` for those).
        """
        now = self._clock()
        subjects: list[dict[str, object]] = []
        links: list[dict[str, str]] = []
        out: list[dict[str, str]] = []
        for key in citizen_keys:
            subject_id = self._new_subject_id()
            subjects.append({"id": subject_id, "citizen_key": key, "created_at": now})
            mine = {a: self._token() for a in self._agencies}
            links.extend(
                {"subject_id": subject_id, "agency": a, "pseudonym": p} for a, p in mine.items()
            )
            out.append(mine)
        if not subjects:
            return out
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(_SUBJECTS), subjects)
                conn.execute(insert(_PSEUDONYMS), links)
        except IntegrityError as exc:
            raise ConflictError("a citizen in the batch is already enrolled") from exc
        return out

    def pseudonym_for(self, citizen_key: str, agency: str) -> str:
        """The citizen's pseudonym at ``agency`` (``NotFoundError`` when not enrolled)."""
        with self._engine.connect() as conn:
            found = conn.execute(
                select(_PSEUDONYMS.c.pseudonym)
                .join(_SUBJECTS, _SUBJECTS.c.id == _PSEUDONYMS.c.subject_id)
                .where(_SUBJECTS.c.citizen_key == citizen_key, _PSEUDONYMS.c.agency == agency)
            ).scalar()
        if found is None:
            raise NotFoundError("no pseudonym for this citizen at this agency")
        return str(found)

    def translate(self, subject: str, from_agency: str, to_agency: str) -> str:
        """``from_agency``'s pseudonym ``subject`` → ``to_agency``'s pseudonym for the same citizen.

        Implements ``exchange.ports.SubjectTranslator`` (agencies are subsystem ids, or
        ``CITIZEN_AGENCY`` for the citizen's own platform identity).
        """
        src = _PSEUDONYMS.alias("src")
        dst = _PSEUDONYMS.alias("dst")
        with self._engine.connect() as conn:
            found = conn.execute(
                select(dst.c.pseudonym)
                .select_from(src.join(dst, dst.c.subject_id == src.c.subject_id))
                .where(
                    src.c.agency == from_agency,
                    src.c.pseudonym == subject,
                    dst.c.agency == to_agency,
                )
            ).scalar()
        if found is None:
            # One answer for "unknown pseudonym" and "not enrolled there": no existence oracle.
            raise NotFoundError("unknown pseudonym")
        return str(found)
