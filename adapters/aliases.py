"""Agency aliases over a subject translator (機関別符号).

Subsystems that act for the citizen themselves (the one-stop desk) know the citizen by the
citizen's own platform identity (``CITIZEN_AGENCY``); an alias maps such a subsystem's agency to
the one whose codes it uses. Found translations are cached: pseudonyms are issued once and never
reassigned, so a translation found stays true.
"""

from __future__ import annotations

from exchange.ports import SubjectTranslator

__all__ = ["MAX_CACHED_TRANSLATIONS", "AgencyAliases"]

MAX_CACHED_TRANSLATIONS = 100_000


class AgencyAliases:
    """Subsystems that act for the citizen use the citizen's own identity (``CITIZEN_AGENCY``)."""

    def __init__(self, inner: SubjectTranslator, aliases: dict[str, str]) -> None:
        self._inner = inner
        self._aliases = aliases
        self._cache: dict[tuple[str, str, str], str] = {}

    def translate(self, subject: str, *, from_agency: str, to_agency: str) -> str:
        src = self._aliases.get(from_agency, from_agency)
        dst = self._aliases.get(to_agency, to_agency)
        if src == dst:
            return subject
        # Pseudonyms are issued once and never reassigned, so a translation found stays true;
        # an unknown one is not remembered (a citizen enrolled a moment ago is found next time).
        key = (subject, src, dst)
        found = self._cache.get(key)
        if found is None:
            found = self._inner.translate(subject, from_agency=src, to_agency=dst)
            if len(self._cache) >= MAX_CACHED_TRANSLATIONS:
                self._cache.clear()
            self._cache[key] = found
        return found
