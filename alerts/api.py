"""The citizen's alerts API on the node (``/me``, citizen JWT, like ``/me/accesses``).

Paths::

    GET /me/alerts[?unread&limit&cursor]   POST /me/alerts/{alert_id}/read
    GET /me/alert-settings                 PUT /me/alert-settings

Trust assumption: the token verifier has authenticated the caller; the citizen's subject keys
come from their token (``subjects_of``), never from the request, so one citizen never reaches
another's alerts (another's alert is a 404, like an unknown one). Errors are ``exchange.errors``
subclasses, mapped centrally to problem+json.

(No ``from __future__ import annotations``: FastAPI resolves the ``Annotated`` dependencies
built inside ``build_router``.)
"""

from collections.abc import Callable, Collection
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from alerts.inbox import MAX_ALERT_ID, AlertInbox, AlertSettings
from alerts.worker import citizen_key
from exchange.errors import NotFoundError
from exchange.tokens import Principal, TokenVerifier
from exchange.web.auth import bearer_principal
from exchange.web.openapi import documented
from exchange.web.refusals import RefusalRecorder, refusal_auditing_route
from policies.alerts import ALERT_RULES

__all__ = ["AlertSettingsBody", "build_router"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
EMAIL_PATTERN = r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+$"
"""A plain address: no display name, no quoting, nothing that could become a second header."""


class RuleSwitches(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    read_without_consent: StrictBool | None = Field(None, alias="read-without-consent")
    new_recipient: StrictBool | None = Field(None, alias="new-recipient")
    unusual_volume: StrictBool | None = Field(None, alias="unusual-volume")
    refused: StrictBool | None = None

    def as_dict(self) -> dict[str, bool]:
        values = self.model_dump(by_alias=True)
        return {r: bool(values[r]) for r in ALERT_RULES if values.get(r) is not None}


class AlertSettingsBody(BaseModel):
    """The citizen's alert settings: which rules they want, and an address for e-mail."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    enabled: RuleSwitches = Field(default_factory=RuleSwitches)
    email: Annotated[str, Field(max_length=254, pattern=EMAIL_PATTERN)] | None = None


def _settings_json(s: AlertSettings) -> dict[str, Any]:
    return {"enabled": s.enabled, "email": s.email}


def build_router(
    inbox: AlertInbox,
    origin: str,
    verifier: TokenVerifier,
    subjects_of: Callable[[Principal], Collection[str]] | None = None,
    *,
    refused: RefusalRecorder | None = None,
) -> APIRouter:
    """The citizen's alerts routes over ``inbox``; ``origin`` is the log's (subject keys).
    ``refused``, when given, records every refusal they answer (``exchange.web.refusals``)."""
    citizen = Annotated[Principal, bearer_principal(verifier, role="citizen")]
    router = (
        APIRouter() if refused is None else APIRouter(route_class=refusal_auditing_route(refused))
    )

    def keys_of(principal: Principal) -> frozenset[str]:
        subjects = subjects_of(principal) if subjects_of else {principal.subject}
        return frozenset(citizen_key(origin, s) for s in subjects)

    @router.get("/me/alerts", **documented("listMyAlerts", problems=(400, 401, 403, 503)))
    def list_alerts(
        principal: citizen,
        unread: bool = False,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        cursor: Annotated[int | None, Query(ge=0, le=MAX_ALERT_ID)] = None,
    ) -> dict[str, Any]:
        """The citizen's alerts, newest first (``cursor``: from ``next_cursor``)."""
        alerts, next_cursor, unread_count = inbox.list(
            keys_of(principal), unread_only=unread, limit=limit, before=cursor
        )
        return {
            "alerts": alerts,
            "unread": unread_count,
            "next_cursor": None if next_cursor is None else str(next_cursor),
        }

    @router.post(
        "/me/alerts/{alert_id}/read",
        **documented("markMyAlertRead", problems=(400, 401, 403, 404, 503)),
    )
    def mark_read(principal: citizen, alert_id: int) -> dict[str, Any]:
        if not 0 <= alert_id <= MAX_ALERT_ID:
            raise NotFoundError("no such alert")
        return inbox.mark_read(keys_of(principal), alert_id)

    @router.get("/me/alert-settings", **documented("getMyAlertSettings", problems=(401, 403, 503)))
    def get_settings(principal: citizen) -> dict[str, Any]:
        return _settings_json(inbox.settings(keys_of(principal)))

    @router.put(
        "/me/alert-settings", **documented("setMyAlertSettings", problems=(400, 401, 403, 503))
    )
    def put_settings(principal: citizen, body: AlertSettingsBody) -> dict[str, Any]:
        """Which rules the citizen wants (a rule left out keeps its state) and their e-mail
        address (null: no e-mail)."""
        return _settings_json(
            inbox.save_settings(keys_of(principal), body.enabled.as_dict(), body.email)
        )

    return router
