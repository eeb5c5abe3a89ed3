"""The portal's ports over the services' HTTP APIs (``onceonly portal``): it opens no database.

* consent: the consent service's citizen API (``consent/api.py``, ``/consent/v1/…``);
* access logs: each node's citizen and auditor routes (``audit/api.py``, ``/me/accesses…``,
  ``/audit/…``), and the consent service's own log under ``/consent/v1/log`` (the same routes);
* procedures: the one-stop desk's API (``procedures/api.py``, ``/procedures…``).

Every call forwards the signed-in person's bearer token, so each service applies its own
authorisation (a citizen's subjects come from the token, never from the portal).

Trust assumption: a service's answers are data, not proof. Entries to verify come back as their
record, proof and signed checkpoint; the portal rebuilds the leaf bytes (RFC 8785, as the log
wrote them) and checks them against the log key pinned in its settings (``portal.settings``), so
a node that lies about an entry shows as "failed", never as "verified". Errors are mapped by who
is at fault: the service's 4xx become the portal's own 4xx errors, anything else (unreachable,
5xx, a malformed answer) is a ``TransportError``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from audit.checkpoint import NoteVerifier
from audit.log import MAX_PAGE_SIZE, EntryQuery, StoredCheckpoint
from consent.mandates import Mandate
from consent.model import Consent, ConsentRequest, Receipt
from exchange.canonical import canonical_json
from exchange.errors import (
    AuthenticationError,
    ClientError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    OnceOnlyError,
    RefusalError,
    TransportError,
)
from exchange.oidc import JwksKeys
from exchange.tokens import DevIssuer, TokenVerifier
from portal.oidc import OidcSignIn
from portal.ports import Caller, CitizenRecord, LogRecord, ProvenEntry
from portal.settings import PortalSettings
from procedures.model import AddressChangeInput, ConfirmInput, ProcedureView

__all__ = ["RemoteAlerts", "RemoteConsent", "RemoteDesk", "RemoteLog", "create_portal_app"]

_M = TypeVar("_M", bound=BaseModel)
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._~-]{0,127}")
_BY_STATUS: dict[int, type[OnceOnlyError]] = {
    400: ClientError,
    401: AuthenticationError,
    403: RefusalError,
    404: NotFoundError,
    409: ConflictError,
    413: ClientError,
    422: ClientError,
}


def _segment(value: str) -> str:
    """An id put into a service's path: a plain segment only (no ``..``, ``/`` or ``%``), so
    the portal can never be steered to another route of the service."""
    if not _SEGMENT.fullmatch(value):
        raise NotFoundError("no such record")
    return value


class _Service:
    """One service's base URL over a shared ``httpx.Client``, with its errors mapped."""

    def __init__(self, http: httpx.Client, base_url: str, name: str) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self.name = name

    def send(
        self,
        method: str,
        path: str,
        caller: Caller,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        request = self._http.build_request(
            method,
            self._base + path,
            params=params,
            json=json,
            headers={
                "Authorization": f"Bearer {caller.token}",
                **({"X-OnceOnly-Acting-For": caller.acting_for} if caller.acting_for else {}),
                **(headers or {}),
            },
        )
        try:
            response = self._http.send(request, stream=stream)
        except httpx.HTTPError as exc:
            raise TransportError(f"the {self.name} cannot be reached") from exc
        if response.status_code >= 400:
            if stream:
                response.read()
                response.close()
            raise self._error(response)
        return response

    def _error(self, response: httpx.Response) -> OnceOnlyError:
        kind = _BY_STATUS.get(response.status_code)
        if kind is None:
            return TransportError(f"the {self.name} answered {response.status_code}")
        detail = "refused"
        try:
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("detail"), str):
                detail = body["detail"][:300]
        except ValueError:
            pass
        return kind(detail)

    def json(self, method: str, path: str, caller: Caller, **kw: Any) -> Any:
        response = self.send(method, path, caller, **kw)
        try:
            return response.json()
        except ValueError as exc:
            raise TransportError(f"the {self.name} answered something unexpected") from exc

    def model(self, kind: type[_M], method: str, path: str, caller: Caller, **kw: Any) -> _M:
        data = self.json(method, path, caller, **kw)
        try:
            return kind.model_validate(data)
        except ValidationError as exc:
            raise TransportError(f"the {self.name} answered something unexpected") from exc

    def models(self, kind: type[_M], method: str, path: str, caller: Caller, **kw: Any) -> list[_M]:
        data = self.json(method, path, caller, **kw)
        try:
            if not isinstance(data, list):
                raise TypeError("not a list")
            return [kind.model_validate(item) for item in data]
        except (ValidationError, TypeError) as exc:
            raise TransportError(f"the {self.name} answered something unexpected") from exc


class RemoteConsent:
    """``portal.ports.ConsentBackend`` over the consent service's citizen API."""

    def __init__(self, http: httpx.Client, base_url: str) -> None:
        self._api = _Service(http, base_url + "/consent/v1", "consent service")

    def list_consents(self, caller: Caller) -> list[Consent]:
        return self._api.models(Consent, "GET", "/consents", caller)

    def get_consent(self, caller: Caller, consent_id: str) -> Consent:
        return self._api.model(Consent, "GET", f"/consents/{_segment(consent_id)}", caller)

    def list_requests(self, caller: Caller) -> list[ConsentRequest]:
        return self._api.models(ConsentRequest, "GET", "/consent-requests", caller)

    def approve_request(self, caller: Caller, request_id: str) -> Consent:
        path = f"/consent-requests/{_segment(request_id)}/approve"
        return self._api.model(Consent, "POST", path, caller)

    def decline_request(self, caller: Caller, request_id: str) -> ConsentRequest:
        path = f"/consent-requests/{_segment(request_id)}/decline"
        return self._api.model(ConsentRequest, "POST", path, caller)

    def _change(self, caller: Caller, consent_id: str, verb: str) -> Consent:
        return self._api.model(Consent, "POST", f"/consents/{_segment(consent_id)}/{verb}", caller)

    def pause(self, caller: Caller, consent_id: str) -> Consent:
        return self._change(caller, consent_id, "pause")

    def resume(self, caller: Caller, consent_id: str) -> Consent:
        return self._change(caller, consent_id, "resume")

    def revoke(self, caller: Caller, consent_id: str) -> Consent:
        return self._change(caller, consent_id, "revoke")

    def receipts(self, caller: Caller, consent_id: str) -> list[Receipt]:
        path = f"/consents/{_segment(consent_id)}/receipts"
        return self._api.models(Receipt, "GET", path, caller)

    def list_mandates(self, caller: Caller) -> list[Mandate]:
        return self._api.models(Mandate, "GET", "/mandates", replace(caller, acting_for=None))


def _b64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("not base64 text")
    return base64.b64decode(text, validate=True)


class RemoteAlerts:
    """``portal.ports.AlertsBackend`` over one node's alerts routes (``alerts/api.py``)."""

    def __init__(self, http: httpx.Client, base_url: str) -> None:
        self._api = _Service(http, base_url, "node")

    def _object(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise TransportError("the node answered something unexpected")
        return value

    def list_alerts(self, caller: Caller, *, limit: int) -> dict[str, Any]:
        body = self._object(self._api.json("GET", "/me/alerts", caller, params={"limit": limit}))
        if not isinstance(body.get("alerts"), list):
            raise TransportError("the node answered something unexpected")
        return body

    def mark_read(self, caller: Caller, alert_id: int) -> None:
        self._api.send("POST", f"/me/alerts/{int(alert_id)}/read", caller)

    def settings(self, caller: Caller) -> dict[str, Any]:
        return self._object(self._api.json("GET", "/me/alert-settings", caller))

    def save_settings(
        self, caller: Caller, enabled: Mapping[str, bool], email: str | None
    ) -> dict[str, Any]:
        body = {"enabled": dict(enabled), "email": email}
        return self._object(self._api.json("PUT", "/me/alert-settings", caller, json=body))


class RemoteLog:
    """``portal.ports.AccessLog`` (and ``ConsentLog``) over one log's audit and citizen routes:
    a node's, or the consent service's at ``{consent_url}/consent/v1/log``."""

    def __init__(self, http: httpx.Client, base_url: str, verifier: NoteVerifier) -> None:
        self._api = _Service(http, base_url, "node")
        self._verifier = verifier

    @property
    def verifier(self) -> NoteVerifier:
        return self._verifier

    def _records(self, items: Any, name: str) -> list[LogRecord]:
        try:
            return [LogRecord(int(e["index"]), dict(e["entry"])) for e in items[name]]
        except (KeyError, TypeError, ValueError) as exc:
            raise TransportError("the node answered something unexpected") from exc

    def _released(self, body: Any) -> list[LogRecord]:
        """The restricted entries the page's release entries release (shown beside them)."""
        try:
            items = [a["released"] for a in body["accesses"] if a.get("released")]
        except (KeyError, TypeError, AttributeError) as exc:
            raise TransportError("the node answered something unexpected") from exc
        return self._records({"released": items}, "released")

    @staticmethod
    def _cursor(body: Any) -> int | None:
        value = body.get("next_cursor") if isinstance(body, dict) else None
        if value is None:
            return None
        if not isinstance(value, str | int) or not str(value).isdigit():
            raise TransportError("the node answered something unexpected")
        return int(value)

    def my_record(self, caller: Caller, *, limit: int) -> CitizenRecord:
        found: list[LogRecord] = []
        cursor: int | None = None
        completeness: Any = None
        while len(found) < limit:
            params: dict[str, Any] = {"limit": min(limit - len(found), MAX_PAGE_SIZE)}
            if cursor is not None:
                params["cursor"] = cursor
            body = self._api.json("GET", "/me/accesses", caller, params=params)
            if cursor is None:  # the proof comes with the first page
                completeness = body.get("completeness") if isinstance(body, dict) else None
            found += self._records(body, "accesses")
            found += self._released(body)
            cursor = self._cursor(body)
            if cursor is None:
                break
        proof = completeness if isinstance(completeness, dict) else None
        return CitizenRecord(found, proof, truncated=cursor is not None)

    def my_proven_entries(self, caller: Caller, *, limit: int) -> list[ProvenEntry]:
        found: list[ProvenEntry] = []
        cursor: int | None = None
        while len(found) < limit:
            params: dict[str, Any] = {"limit": min(limit - len(found), MAX_PAGE_SIZE)}
            if cursor is not None:
                params["cursor"] = cursor
            body = self._api.json("GET", "/me/accesses", caller, params=params)
            try:
                checkpoint = body.get("checkpoint")
                found += [
                    self._proven(int(e["index"]), e | {"checkpoint": checkpoint})
                    for e in body["accesses"]
                ]
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise TransportError("the node answered something unexpected") from exc
            cursor = self._cursor(body)
            if cursor is None:
                break
        return found

    def _proven(self, index: int, body: Any) -> ProvenEntry:
        """The entry as the node sent it, bound to the index that was asked for: the proof is
        checked for that index, so a node cannot pass off another entry."""
        try:
            checkpoint = body["checkpoint"]
            time = body.get("checkpoint_time")
            return ProvenEntry(
                index,
                canonical_json(body["entry"]),
                tuple(_b64(h) for h in body["inclusion_proof"]),
                checkpoint if isinstance(checkpoint, str) else None,
                datetime.fromisoformat(time) if isinstance(time, str) else None,
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise TransportError("the node answered something unexpected") from exc

    def my_entry(self, caller: Caller, index: int) -> ProvenEntry:
        return self._proven(index, self._api.json("GET", f"/me/accesses/{index}", caller))

    def search(
        self, caller: Caller, query: EntryQuery, *, limit: int, cursor: int | None = None
    ) -> tuple[list[LogRecord], int | None]:
        if query.kind is not None or query.consent_id is not None:
            raise ClientError("the node's search takes no kind or consent filter")
        if query.subjects is not None and len(query.subjects) != 1:
            raise ClientError("search one subject at a time")
        params: dict[str, Any] = {
            "subject": next(iter(query.subjects)) if query.subjects else None,
            "client": query.client,
            "service": query.service,
            "purpose": query.purpose,
            "decision": query.decision,
            "since": query.since.isoformat() if query.since else None,
            "until": query.until.isoformat() if query.until else None,
            "limit": min(limit, MAX_PAGE_SIZE),
            "cursor": cursor,
        }
        body = self._api.json(
            "GET",
            "/audit/entries",
            caller,
            params={k: v for k, v in params.items() if v is not None},
        )
        try:
            return self._records(body, "entries"), self._cursor(body)
        except (TypeError, ValueError) as exc:
            raise TransportError("the node answered something unexpected") from exc

    def entry(self, caller: Caller, index: int) -> ProvenEntry:
        return self._proven(index, self._api.json("GET", f"/audit/entries/{index}", caller))

    def size(self, caller: Caller) -> int:
        body = self._api.json("GET", "/audit/size", caller)
        size = body.get("size") if isinstance(body, dict) else None
        if not isinstance(size, int) or size < 0:
            raise TransportError("the node answered something unexpected")
        return size

    def export(self, caller: Caller, start: int, end: int) -> Iterator[str]:
        # Opened now, so a refusal is an error page rather than a broken download.
        response = self._api.send(
            "GET", "/audit/export", caller, params={"start": start, "end": end}, stream=True
        )

        def lines() -> Iterator[str]:
            try:
                for line in response.iter_lines():
                    if line:
                        yield line
            finally:
                response.close()

        return lines()

    def checkpoints(self, caller: Caller, *, limit: int) -> list[StoredCheckpoint]:
        body = self._api.json("GET", "/audit/checkpoints", caller, params={"limit": limit})
        try:
            return [
                StoredCheckpoint(
                    int(c["size"]),
                    _b64(c["root"]),
                    datetime.fromisoformat(c["time"]),
                    str(c["note"]),
                )
                for c in body["checkpoints"]
            ]
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise TransportError("the node answered something unexpected") from exc

    def consistency_proof(self, caller: Caller, first: int, second: int) -> list[bytes]:
        body = self._api.json(
            "GET", "/audit/consistency", caller, params={"first": first, "second": second}
        )
        try:
            return [_b64(h) for h in body["proof"]]
        except (KeyError, TypeError, binascii.Error) as exc:
            raise TransportError("the node answered something unexpected") from exc


class RemoteDesk:
    """``portal.ports.ProcedureDesk`` over the one-stop desk's procedures API."""

    def __init__(self, http: httpx.Client, base_url: str) -> None:
        self._api = _Service(http, base_url + "/procedures", "one-stop desk")

    async def start(
        self, caller: Caller, data: AddressChangeInput, *, submission_key: str | None = None
    ) -> ProcedureView:
        headers = {"Idempotency-Key": submission_key} if submission_key else None
        return await asyncio.to_thread(
            self._api.model,
            ProcedureView,
            "POST",
            "/address-change",
            caller,
            json=data.model_dump(mode="json"),
            headers=headers,
        )

    def get(self, caller: Caller, procedure_id: str) -> ProcedureView:
        return self._api.model(ProcedureView, "GET", f"/{_segment(procedure_id)}", caller)

    def list_for(self, caller: Caller) -> list[ProcedureView]:
        return self._api.models(ProcedureView, "GET", "", caller)

    def confirm(self, caller: Caller, procedure_id: str, decisions: ConfirmInput) -> ProcedureView:
        return self._api.model(
            ProcedureView,
            "POST",
            f"/{_segment(procedure_id)}/confirm",
            caller,
            json=decisions.model_dump(mode="json"),
        )


def create_portal_app(settings: PortalSettings) -> tuple[FastAPI, Callable[[], None]]:
    """The portal over HTTP only, and the function that closes its connections."""
    from portal.app import build_portal

    http = httpx.Client(timeout=settings.timeout_s, follow_redirects=False)
    issuer: DevIssuer | None = None
    if settings.dev_issuer_key_file is not None:
        if not settings.allow_dev_issuer:  # load_portal_settings refuses this too
            raise ConfigurationError("dev_issuer_key_file needs allow_dev_issuer = true")
        issuer = DevIssuer.load(
            settings.dev_issuer_key_file,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    verifier = settings.external_verifier(
        settings.token_public_key_file, timeout_s=settings.timeout_s, what="token_public_key_file"
    )
    if verifier is None and issuer is not None:
        verifier = issuer.verifier()
    if verifier is None:  # load_portal_settings refuses this; a programming error otherwise
        raise ConfigurationError("no token verifier configured")
    consent_log_key = settings.consent_log_verifier()
    signin = _signin(settings, verifier, http)
    app = build_portal(
        settings,
        consent=RemoteConsent(http, settings.consent_url),
        consent_log=(
            RemoteLog(http, settings.consent_url + "/consent/v1/log", consent_log_key)
            if consent_log_key is not None
            else None
        ),
        logs={n.member: RemoteLog(http, n.url, n.verifier()) for n in settings.nodes},
        alerts={n.member: RemoteAlerts(http, n.url) for n in settings.nodes},
        issuer=issuer,
        verifier=verifier,
        demo_citizens=[(c.subject, c.name) for c in settings.demo_citizens],
        procedures=RemoteDesk(http, settings.desk_url) if settings.desk_url else None,
        public_origin=settings.public_origin,
        signin=signin,
        session_lifetime_s=settings.session_lifetime_s,
        reauth_max_age_s=settings.reauth_max_age_s,
        secure_cookies=_secure_cookies(settings.public_origin),
    )

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return app, http.close


def _secure_cookies(public_origin: str | None) -> bool:
    """``Secure`` cookies, except for a plain-HTTP origin that is not loopback (browsers keep
    ``Secure`` cookies of http://127.0.0.1 and http://localhost, and of nothing else over HTTP)."""
    if public_origin is None or public_origin.startswith("https://"):
        return True
    host = urlsplit(public_origin).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


def _signin(
    settings: PortalSettings, verifier: TokenVerifier, http: httpx.Client
) -> OidcSignIn | None:
    """The client at the provider, when ``[signin]`` is configured."""
    conf = settings.signin
    if conf is None or settings.oidc_issuer is None:
        return None
    origin = settings.public_origin or ""
    return OidcSignIn(
        issuer=settings.oidc_issuer,
        client_id=conf.client_id,
        client_secret=conf.secret(),
        redirect_uri=conf.redirect_uri or f"{origin}/signin/callback",
        post_logout_redirect_uri=conf.post_logout_redirect_uri or f"{origin}/signin",
        scopes=conf.scopes,
        resource=conf.resource,
        id_token_algorithms=conf.id_token_algorithms,
        keys=JwksKeys.from_issuer(
            settings.oidc_issuer,
            timeout_s=settings.timeout_s,
            min_refetch_s=settings.jwks_min_refetch_s,
        ),
        api=verifier,
        http=http,
    )
