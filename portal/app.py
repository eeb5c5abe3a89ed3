"""The portal: server-rendered pages for citizens (consents, who accessed my data) and auditors
(log search, entries with proofs, export, checkpoint history, chart), in Japanese and English.

Issue 8. Progressive enhancement: every essential action is a plain HTML form (GET for reads,
POST for changes) that works without JavaScript. The services sit behind ports
(``portal.ports``): the consent service, each node's access log and the one-stop desk, either in
this process (``portal.local``, ``onceonly serve``) or over their HTTP APIs with the signed-in
person's bearer token (``portal.remote``, ``onceonly portal``). "Verify" is done here, whatever
the backend: the entry's leaf hash is recomputed from its bytes, the checkpoint's signature is
checked with the log key the portal pins (``audit.checkpoint.verify_checkpoint``) and the
inclusion proof against its root (``audit.merkle.verify_inclusion``).

Security (issue 8 "Quality"):
1. session: one HMAC-signed cookie (``portal._session``), ``HttpOnly; Secure; SameSite=Lax``; the
   bearer token in it is verified on every request — stops forged or stale sessions;
2. CSRF: every POST carries the session's token, compared in constant time — stops cross-site
   form posts (SameSite is the second layer);
3. isolation: consents and log entries are read as the signed-in principal (their subject
   in-process, their token over HTTP); the owning service answers "not found" for another
   person's ids, the same 404 as an unknown id (no oracle);
4. headers: a strict Content-Security-Policy, ``X-Content-Type-Options: nosniff``,
   ``Referrer-Policy: same-origin``, ``X-Frame-Options: DENY``;
5. templates autoescape everything; consumer-supplied text (purposes) is never trusted markup.

Concurrency: backend calls (database work or blocking HTTP) never run on the event loop (pages
are sync routes, run in the thread pool; POST handlers hand their calls to it), so a portal
mounted next to nodes in one process does not stall their exchanges.

Mounting: the lead mounts the app under ``/portal``; every URL is built with ``request.url_for``
so it carries the mount's ``root_path``, and made a path (``exchange.web.redirects.local_url``):
no redirect or link carries the request's ``Host`` header back (host-header injection), and
``RelativeRedirects`` does the same for the framework's own redirects (a trailing slash).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from pydantic import SecretStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URL
from starlette.exceptions import HTTPException as StarletteHTTPException

from alerts.api import EMAIL_PATTERN
from audit import merkle, restricted
from audit.api import OBLIGATION_KINDS
from audit.checkpoint import NoteError, NoteVerifier, verify_checkpoint
from audit.completeness import CompletenessError, SubjectProof, verify_record
from audit.log import MAX_PAGE_SIZE, EntryQuery, TransparencyLog
from consent.model import ConsentStatus
from consent.receipt import render_receipt_html
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
from exchange.tokens import DevIssuer, Principal, TokenVerifier
from exchange.web.redirects import RelativeRedirects, local_url
from policies.alerts import ALERT_RULES
from portal._session import (
    PENDING_COOKIE,
    SESSION_COOKIE,
    Session,
    SessionCodec,
    same_token,
)
from portal.chart import build_chart
from portal.i18n import LANGS, Translator, pick_lang
from portal.local import proven
from portal.oidc import MAX_SIGNIN_S, OidcSignIn, SignedIn
from portal.ports import (
    AccessLog,
    AlertsBackend,
    Caller,
    CitizenRecord,
    ConsentBackend,
    ConsentLog,
    LogRecord,
    ProcedureDesk,
    ProvenEntry,
)
from procedures.model import AddressChangeInput, ConfirmInput

__all__ = [
    "CSP",
    "MAX_CHART_ENTRIES",
    "MAX_TIMELINE",
    "REAUTH_MAX_AGE_S",
    "SESSION_LIFETIME_S",
    "PortalSecret",
    "build_portal",
    "utc_now",
    "verify_entry",
    "verify_proven",
]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
LANG_COOKIE = "oo_portal_lang"
SESSION_LIFETIME_S = 3600
"""A session ends this long after sign-in, whatever its token says."""
REAUTH_MAX_AGE_S = 300
"""Granting a consent needs an authentication at most this old."""
_LOCAL_PATH = re.compile(r"^/(?!/)[A-Za-z0-9._~/-]{0,200}$")
LANG_COOKIE_MAX_AGE_S = 365 * 24 * 3600
MAX_TIMELINE = 200
MAX_ALERTS = 100
"""Alerts shown per node on the inbox page (newest first)."""
_EMAIL = re.compile(EMAIL_PATTERN)
"""Entries per log shown in one timeline or search page."""
MAX_CHART_ENTRIES = 20_000
CONSENT_LOG_NAME = "consent-service"
"""The consent log's name on the consent history page (its log id)."""
MAX_CHECKPOINT_HISTORY = 50
MAX_FORM_FIELD = 256
PROCEDURE_REFRESH_S = 3
"""The live status page of a running procedure reloads itself (meta refresh, no JavaScript)."""
_HERE = Path(__file__).parent
_log = logging.getLogger("onceonly.portal")
_STYLE = re.compile(r"<style>(.*?)</style>", re.S)


def utc_now() -> datetime:
    return datetime.now(UTC)


class PortalSecret(Protocol):
    """The settings the portal app reads: the session secret (``exchange.settings.Settings``
    in ``onceonly serve``, ``portal.settings.PortalSettings`` in ``onceonly portal``)."""

    @property
    def portal_secret(self) -> SecretStr | None: ...


class _SignInRequired(Exception):
    """Raised by a page that needs a principal; answered with a redirect to the sign-in page."""


class _CsrfError(Exception):
    """A POST without the session's CSRF token."""


class _ReauthRequired(Exception):
    """A sensitive action with an authentication older than ``reauth_max_age_s``; answered
    with a page that sends the person to authenticate again, then back to ``next_path``."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True, slots=True)
class _Verification:
    outcome: str  # "ok" | "pending" | "failed" | "bad_checkpoint"
    size: int = 0
    time: datetime | None = None
    proof: tuple[str, ...] = ()
    leaf_hash: str = ""
    note: str = ""


@dataclass(frozen=True, slots=True)
class _Row:
    """One log entry prepared for a page."""

    node: str
    index: int
    record: Mapping[str, Any]
    time: datetime | None
    release: Mapping[str, Any] | None = None
    """The release entry of a restricted entry, now shown (``audit.restricted``)."""
    obligation: Mapping[str, Any] | None = None
    """What became of data received under usage terms: the consumer node's latest
    ``obligation.deleted`` or ``obligation.overdue`` entry about the same message."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _row(node: str, entry: LogRecord, release: Mapping[str, Any] | None = None) -> _Row:
    record = entry.record
    return _Row(node, entry.index, record, _parse_time(record.get("time")), release)


def _access_rows(node: str, records: Sequence[LogRecord]) -> list[_Row]:
    """A citizen's records as accesses: a release entry is not an access of its own, it shows
    the restricted entry it releases (with when it was released)."""
    releases: dict[int, Mapping[str, Any]] = {}
    for r in records:
        try:
            found = restricted.parse_release(r.record)
        except restricted.ReleaseError:
            found = None  # shown as it is; the completeness check names it
        if found is not None:
            releases[found.releases] = r.record
    obligations: dict[str, Mapping[str, Any]] = {}
    for r in records:
        message = r.record.get("message_id")
        # A deletion, even a late one, is the last word.
        if (
            r.record.get("kind") in OBLIGATION_KINDS
            and isinstance(message, str)
            and obligations.get(message, {}).get("kind") != "obligation.deleted"
        ):
            obligations[message] = r.record
    rows = [
        _row(node, r, releases.get(r.index))
        for r in records
        if r.record.get("kind") != restricted.RELEASE_KIND
    ]
    return [
        replace(row, obligation=obligations.get(str(row.record.get("message_id"))))
        if row.record.get("kind") == "response"
        else row
        for row in rows
    ]


def _proven_row(node: str, entry: ProvenEntry) -> _Row:
    """The row shown beside a verification is parsed from the very bytes that were verified."""
    try:
        record = json.loads(entry.data)
    except ValueError:
        record = None
    return _row(node, LogRecord(entry.index, record if isinstance(record, dict) else {}))


@dataclass(frozen=True, slots=True)
class _Completeness:
    """Whether one node's record of the caller is proven complete: ``ok`` (up to checkpoint
    ``size``, ``entries`` of them), ``failed`` (with the reason), ``truncated`` (more entries than
    the portal reads), or ``none`` (the node knows no subject of the caller)."""

    node: str
    status: str
    size: int | None = None
    entries: int = 0
    reason: str | None = None


def verify_complete(node: str, record: CitizenRecord, verifier: NoteVerifier) -> _Completeness:
    """Check that ``record`` is every entry about the caller up to a checkpoint signed by the
    pinned log key (``audit.completeness.verify_record``: the checkpoint's signature, each
    entry's leaf hash from its bytes, each subject's slot in the signed subject map)."""
    if record.truncated:
        return _Completeness(node, "truncated", entries=len(record.records))
    if record.completeness is None:
        return _Completeness(node, "none")
    try:
        note = record.completeness["checkpoint"]
        raw = record.completeness["proofs"]
        if not isinstance(note, str) or not isinstance(raw, list):
            raise CompletenessError("the node sent no usable completeness proof")
        proofs = [SubjectProof.from_json(p) for p in raw]
        cp = verify_record(note, verifier, proofs, [(r.index, r.record) for r in record.records])
    except (CompletenessError, KeyError, TypeError) as exc:
        return _Completeness(node, "failed", reason=str(exc))
    covered = sum(
        1
        for r in record.records
        if r.index < cp.size and r.record.get("kind") != restricted.RELEASE_KIND
    )
    return _Completeness(node, "ok", size=cp.size, entries=covered)


def verify_proven(entry: ProvenEntry, verifier: NoteVerifier) -> _Verification:
    """Check an entry against the signed checkpoint it came with (RFC 9162 §2.1.3.2).

    1. recompute the leaf hash from the entry's bytes — stops an entry edited in the database;
    2. verify the checkpoint's signature with the pinned log key — stops a forged checkpoint
       (and, over HTTP, a node that answers with another log's checkpoint);
    3. verify the inclusion proof of the leaf under the checkpoint's root — stops a log that
       shows one thing to the citizen and signs another.
    """
    leaf = merkle.leaf_hash(entry.data)  # (1)
    if entry.checkpoint is None:
        return _Verification("pending", leaf_hash=_b64(leaf))
    try:
        checkpoint = verify_checkpoint(entry.checkpoint, verifier)  # (2)
    except NoteError:
        return _Verification("bad_checkpoint", leaf_hash=_b64(leaf), note=entry.checkpoint)
    if checkpoint.size <= entry.index:
        return _Verification("pending", leaf_hash=_b64(leaf))
    ok = merkle.verify_inclusion(  # (3)
        leaf, entry.index, checkpoint.size, entry.proof, checkpoint.root
    )
    return _Verification(
        "ok" if ok else "failed",
        size=checkpoint.size,
        time=entry.checkpoint_time,
        proof=tuple(_b64(p) for p in entry.proof),
        leaf_hash=_b64(leaf),
        note=entry.checkpoint,
    )


def verify_entry(log: TransparencyLog, index: int) -> _Verification:
    """``verify_proven`` for entry ``index`` of a log in this process, against its latest
    checkpoint and its own key."""
    return verify_proven(proven(log, index), log.verifier())


def _alert_time(value: object) -> datetime | None:
    """An alert's RFC 3339 time, for display (None when it is not one)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def _field(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    if not isinstance(value, str) or len(value) > MAX_FORM_FIELD:
        return ""
    return value.strip()


def _int(value: str | None, *, default: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise ClientError("not a number")
    return int(value)


def _query_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ClientError("bad date and time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def build_portal(
    settings: PortalSecret,
    *,
    consent: ConsentBackend,
    logs: Mapping[str, AccessLog],
    issuer: DevIssuer | None,
    verifier: TokenVerifier,
    demo_citizens: Sequence[tuple[str, str]] = (),
    procedures: ProcedureDesk | None = None,
    clock: Callable[[], datetime] = utc_now,
    secure_cookies: bool = True,
    public_origin: str | None = None,
    consent_log: ConsentLog | None = None,
    signin: OidcSignIn | None = None,
    session_lifetime_s: int = SESSION_LIFETIME_S,
    reauth_max_age_s: int = REAUTH_MAX_AGE_S,
    alerts: Mapping[str, AlertsBackend] | None = None,
) -> FastAPI:
    """The portal app. ``logs`` maps a node's member id to its access log (``portal.local`` or
    ``portal.remote``); ``demo_citizens`` lists ``(subject, display name)`` offered on the
    development sign-in page (only when ``issuer`` is given); with ``public_origin``, a POST
    whose ``Origin`` header names another origin is refused like one without the CSRF token;
    ``consent_log`` (the consent service's log, its key pinned) adds the consent history page.
    ``signin`` signs people in at an OpenID Connect provider (``portal.oidc``); with it the
    development issuer is refused. A session lasts at most ``session_lifetime_s``; granting a
    consent needs an authentication at most ``reauth_max_age_s`` old."""
    if signin is not None and issuer is not None:
        raise ConfigurationError("configure one sign-in: the development issuer or a provider")
    # Sign-out leads to the provider's logout page: the form may go there (CSP form-action
    # applies to the redirect after a form is sent).
    csp = (
        CSP.replace("form-action 'self'", f"form-action 'self' {signin.origin}") if signin else CSP
    )
    secret = (
        settings.portal_secret.get_secret_value().encode()
        if settings.portal_secret is not None
        else secrets.token_bytes(32)
    )
    codec = SessionCodec(secret)
    env = Environment(
        loader=FileSystemLoader(str(_HERE / "templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
        auto_reload=False,
    )

    @pass_context
    def url_for(context: Mapping[str, Any], name: str, /, **path_params: Any) -> Any:
        return local_url(context["request"], name, **path_params)

    @pass_context
    def here(context: Mapping[str, Any]) -> URL:
        """This page's path and query, without the host (the language switch links to it)."""
        url: URL = context["request"].url
        return URL(url.path + (f"?{url.query}" if url.query else ""))

    env.globals["url_for"] = url_for  # before Jinja2Templates, which only sets a default
    env.globals["here"] = here
    templates = Jinja2Templates(env=env)
    citizens = {subject: name for subject, name in demo_citizens}

    app = FastAPI(title="onceonly portal", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")
    app.add_middleware(RelativeRedirects)

    # --- per-request context -------------------------------------------------------------------

    def session_of(request: Request) -> Session:
        session: Session = request.state.session
        return session

    def principal_of(request: Request) -> Principal | None:
        """(1) the session's principal: its token verified now, within the session's lifetime.
        Cached per request (the token does not change within one)."""
        if hasattr(request.state, "principal"):
            cached: Principal | None = request.state.principal
            return cached
        session = session_of(request)
        principal: Principal | None = None
        now = clock().timestamp()
        started = session.started
        if session.token is not None and started is not None:
            try:
                if 0 <= now - started <= session_lifetime_s:
                    principal = verifier.verify(session.token, now=clock())
            except AuthenticationError:
                principal = None
        request.state.principal = principal
        return principal

    def require_fresh_authentication(request: Request, next_path: str) -> None:
        """A sensitive action (granting a consent): the person authenticated at most
        ``reauth_max_age_s`` ago, else they are sent to authenticate again (max_age,
        prompt=login at the provider) — stops a left-open session from granting consents."""
        auth_time = session_of(request).auth_time
        if auth_time is None or clock().timestamp() - auth_time > reauth_max_age_s:
            raise _ReauthRequired(next_path)

    def translator(request: Request) -> Translator:
        t: Translator = request.state.t
        return t

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        t = translator(request)
        principal = principal_of(request)
        base = {
            "t": t,
            "lang": t.lang,
            "other_lang": "en" if t.lang == "ja" else "ja",
            "csrf": session_of(request).csrf,
            "principal": principal,
            "principal_name": (
                (principal.name or citizens.get(principal.subject) or principal.subject)
                if principal
                else None
            ),
            "procedures_available": procedures is not None,
            "consent_history_available": consent_log is not None,
            "alerts_available": bool(alerts),
            "dev_signin": principal is not None and session_of(request).via == "dev",
            "acting_for": session_of(request).acting_for,
            "acting_name": (
                citizens.get(session_of(request).acting_subject or "")
                or session_of(request).acting_subject
            )
            if principal is not None and session_of(request).acting_for
            else None,
            "flash": request.query_params.get("done"),
        }
        base.update(context)
        response: HTMLResponse = templates.TemplateResponse(request, name, base, status_code=status)
        return response

    def signed_in(request: Request) -> Caller:
        principal = principal_of(request)
        token = session_of(request).token
        if principal is None or token is None:
            raise _SignInRequired
        return Caller(principal, token, session_of(request).acting_for)

    def citizen(request: Request) -> Caller:
        caller = signed_in(request)
        if "citizen" not in caller.principal.roles:
            raise RefusalError("citizens only")
        return caller

    def auditor(request: Request) -> Caller:
        caller = signed_in(request)
        if not caller.principal.is_auditor:
            raise RefusalError("auditors only")
        return caller

    async def checked_form(request: Request) -> Mapping[str, Any]:
        # (2) CSRF: the Origin browsers send, when the portal knows its own (defence in depth) ...
        origin = request.headers.get("origin")
        if public_origin is not None and origin is not None and origin != public_origin:
            raise _CsrfError
        form = await request.form()
        # ... and the session-bound token, compared in constant time.
        if not same_token(session_of(request).csrf, _field(form, "csrf")):
            raise _CsrfError
        return form

    def redirect(request: Request, name: str, **query: str) -> RedirectResponse:
        url = local_url(request, name)
        if query:
            url = url.include_query_params(**query)
        return RedirectResponse(str(url), status_code=303)

    def log_of(node: str) -> AccessLog:
        log = logs.get(node)
        if log is None:
            raise NotFoundError("no such record")
        return log

    # --- middleware: session, language, security headers ---------------------------------------

    @app.middleware("http")
    async def _context(request: Request, call_next: Callable[[Request], Any]) -> Response:
        session = codec.decode(request.cookies.get(SESSION_COOKIE))
        new_session = session is None
        request.state.session = session or Session.fresh()
        query_lang = request.query_params.get("lang")
        lang = pick_lang(query_lang, request.cookies.get(LANG_COOKIE))
        request.state.t = Translator(lang)
        response: Response = await call_next(request)
        final: Session = request.state.session
        if new_session or final != session:
            response.set_cookie(
                SESSION_COOKIE,
                codec.encode(final),
                max_age=session_lifetime_s,
                path=request.scope.get("root_path") or "/",
                httponly=True,
                secure=secure_cookies,
                samesite="lax",
            )
        if query_lang in LANGS:
            response.set_cookie(
                LANG_COOKIE,
                lang,
                max_age=LANG_COOKIE_MAX_AGE_S,
                path=request.scope.get("root_path") or "/",
                httponly=True,
                secure=secure_cookies,
                samesite="lax",
            )
        headers = response.headers
        headers.setdefault("Content-Security-Policy", csp)
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "same-origin"
        headers["X-Frame-Options"] = "DENY"
        if "text/html" in headers.get("content-type", ""):
            headers["Cache-Control"] = "no-store"
        return response

    # --- error pages ---------------------------------------------------------------------------

    @app.exception_handler(_SignInRequired)
    async def _sign_in(request: Request, exc: Exception) -> Response:
        return redirect(request, "signin_page", next="1")

    @app.exception_handler(_CsrfError)
    async def _csrf(request: Request, exc: Exception) -> Response:
        t = translator(request)
        return render(request, "error.html", 403, message=t("error.csrf"))

    @app.exception_handler(OnceOnlyError)
    async def _domain(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OnceOnlyError)
        t = translator(request)
        if isinstance(exc, NotFoundError):
            key, status = "error.not_found", 404
        elif isinstance(exc, RefusalError | AuthenticationError):
            key, status = "error.forbidden", 403
        elif isinstance(exc, ConflictError):
            key, status = "error.conflict", 409
        elif isinstance(exc, ClientError):
            key, status = "error.bad_request", 400
        else:
            key, status = "error.generic", exc.status if exc.status >= 400 else 500
        return render(request, "error.html", status, message=t(key))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        t = translator(request)
        key = "error.not_found" if exc.status_code == 404 else "error.generic"
        return render(request, "error.html", exc.status_code, message=t(key))

    # --- sign-in -------------------------------------------------------------------------------

    @app.get("/", name="home")
    def home(request: Request) -> Response:
        principal = principal_of(request)
        if principal is None:
            return redirect(request, "signin_page")
        return redirect(request, "auditor_search" if principal.is_auditor else "consents")

    @app.get("/signin", name="signin_page")
    def signin_page(request: Request) -> HTMLResponse:
        q = request.query_params
        return render(
            request,
            "signin.html",
            citizens=list(demo_citizens),
            dev=issuer is not None,
            oidc=signin is not None,
            required=q.get("next") == "1",
            reauth=q.get("reauth") == "1",
            failed=q.get("failed") == "1",
            signed_out=q.get("signed_out") == "1",
        )

    @app.post("/signin", name="signin")
    async def signin_dev(request: Request) -> Response:
        form = await checked_form(request)
        if issuer is None:
            raise RefusalError("development sign-in is off")
        who = _field(form, "who")
        now = clock()
        if who == "auditor":
            token = issuer.issue("auditor", roles=("auditor",), name="auditor", now=now)
        elif who in citizens:
            token = issuer.issue(who, roles=("citizen",), name=citizens[who], now=now)
        else:
            raise ClientError("unknown demo account")
        at = int(now.timestamp())
        # A new CSRF token at sign-in (stops session fixation).
        request.state.session = Session.fresh(token, auth_time=at, started=at, via="dev")
        return redirect(request, "home")

    # --- sign-in at the OpenID Connect provider (portal.oidc) --------------------------------

    def oidc() -> OidcSignIn:
        if signin is None:
            raise NotFoundError("no identity provider is configured")
        return signin

    def pending_cookie(response: Response, request: Request, value: str, max_age: int) -> None:
        response.set_cookie(
            PENDING_COOKIE,
            value,
            max_age=max_age,
            path=request.scope.get("root_path") or "/",
            httponly=True,
            secure=secure_cookies,
            samesite="lax",  # the provider's redirect back is a top-level GET: Lax sends it
        )

    @app.get("/signin/oidc", name="signin_oidc")
    def signin_oidc(request: Request) -> Response:
        """(S1) to the provider, with state, nonce and the PKCE challenge."""
        client = oidc()
        next_path = request.query_params.get("next") or str(local_url(request, "home"))
        if not _LOCAL_PATH.match(next_path):  # only a path of this site: no open redirect
            next_path = str(local_url(request, "home"))
        reauth = request.query_params.get("reauth") == "1"
        url, pending = client.begin(next_path=next_path, reauth=reauth, now=clock())
        response = RedirectResponse(url, status_code=303)
        pending_cookie(response, request, codec.encode_pending(pending), MAX_SIGNIN_S)
        return response

    @app.get("/signin/callback", name="signin_callback")
    def signin_callback(request: Request) -> Response:
        """(S2)–(S5) back from the provider: the session holds the verified access token."""
        client = oidc()
        q = request.query_params
        pending = codec.decode_pending(request.cookies.get(PENDING_COOKIE))
        code, state = q.get("code"), q.get("state")
        # RFC 9207: a provider that names itself in the response must name the expected one
        # (stops a mix-up between providers).
        iss_ok = q.get("iss") in (None, client.issuer)
        done: SignedIn | None = None
        if pending is not None and code and state and iss_ok and not q.get("error"):
            try:
                done = client.finish(pending, code=code, state=state, now=clock())
            except AuthenticationError as exc:
                _log.warning("portal sign-in refused: %s", exc.detail)
        if done is None or pending is None:
            response: Response = redirect(request, "signin_page", failed="1")
        else:
            at = int(clock().timestamp())
            request.state.session = Session.fresh(
                done.access_token, auth_time=done.auth_time, started=at, via="oidc"
            )
            target = pending.next
            if pending.reauth:
                target += ("&" if "?" in target else "?") + "done=reauthenticated"
            response = RedirectResponse(target, status_code=303)
        response.delete_cookie(PENDING_COOKIE, path=request.scope.get("root_path") or "/")
        return response

    @app.post("/signout", name="signout")
    async def signout(request: Request) -> Response:
        await checked_form(request)
        via = session_of(request).via
        request.state.session = Session.fresh()
        if via == "oidc" and signin is not None:
            # RP-initiated logout: the provider ends its session too, then sends the person
            # back to the sign-in page.
            url = await run_in_threadpool(signin.logout_url)
            if url is not None:
                return RedirectResponse(url, status_code=303)
        return redirect(request, "signin_page", signed_out="1")

    @app.exception_handler(_ReauthRequired)
    async def _reauth(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _ReauthRequired)
        if signin is None:  # the development sign-in: sign in again on its page
            return redirect(request, "signin_page", reauth="1")
        start = local_url(request, "signin_oidc").include_query_params(
            reauth="1", next=exc.next_path
        )
        return render(request, "reauth.html", start=start)

    # --- citizens: acting for someone (mandates at the consent service) -----------------------

    @app.get("/mandates", name="mandates")
    def mandates_page(request: Request) -> HTMLResponse:
        caller = citizen(request)
        mine = consent.list_mandates(caller)
        return render(
            request,
            "mandates.html",
            held=[m for m in mine if m.representative == caller.subject],
            for_me=[m for m in mine if m.represented == caller.subject],
            name_of=lambda subject: citizens.get(subject) or subject,
        )

    @app.post("/acting", name="acting")
    async def acting(request: Request) -> Response:
        """Switch to "acting for …" under one of the caller's active mandates, or back."""
        caller = await run_in_threadpool(citizen, request)
        form = await checked_form(request)
        mandate_id = _field(form, "mandate_id") or ""
        session = session_of(request)
        if not mandate_id:
            request.state.session = replace(session, acting_for=None, acting_subject=None)
            return redirect(request, "consents", done="not_acting")
        held = await run_in_threadpool(consent.list_mandates, caller)
        found = next(
            (
                m
                for m in held
                if m.id == mandate_id
                and m.representative == caller.subject
                and m.status.value == "active"
            ),
            None,
        )
        if found is None:
            raise NotFoundError("no such mandate of yours in force")
        request.state.session = replace(
            session, acting_for=found.id, acting_subject=found.represented
        )
        return redirect(request, "consents", done="acting")

    # --- citizens: consents --------------------------------------------------------------------

    @app.get("/consents", name="consents")
    def consents_page(request: Request) -> HTMLResponse:
        caller = citizen(request)
        items = consent.list_consents(caller)
        requests = [r for r in consent.list_requests(caller) if r.status.value == "pending"]
        return render(request, "consents.html", consents=items, requests=requests)

    def _consent_action(verb: str) -> Callable[[Request, str], Any]:
        async def action(request: Request, consent_id: str) -> Response:
            caller = await run_in_threadpool(citizen, request)
            await checked_form(request)
            await run_in_threadpool(getattr(consent, verb), caller, consent_id)
            return redirect(request, "consents", done=verb + "d")  # paused, resumed, revoked

        return action

    app.post("/consents/{consent_id}/pause", name="consent_pause")(_consent_action("pause"))
    app.post("/consents/{consent_id}/resume", name="consent_resume")(_consent_action("resume"))

    @app.get("/consents/history", name="consent_history")
    def consent_history_page(request: Request) -> HTMLResponse:
        """Every change and use of the caller's consents, from the consent log, each with its
        proof checked here against the pinned consent log key (``verify_proven``)."""
        caller = citizen(request)
        if consent_log is None:
            raise NotFoundError("no consent log is configured")
        # The completeness proof first: a checkpoint it signs covers every entry listed after.
        complete = verify_complete(
            CONSENT_LOG_NAME,
            consent_log.my_record(caller, limit=MAX_TIMELINE),
            consent_log.verifier,
        )
        entries = consent_log.my_proven_entries(caller, limit=MAX_TIMELINE)
        rows = [
            (_proven_row(CONSENT_LOG_NAME, e), verify_proven(e, consent_log.verifier))
            for e in entries
        ]
        rows.sort(key=lambda r: (r[0].time or datetime.min.replace(tzinfo=UTC), r[0].index))
        rows.reverse()
        return render(request, "consent_history.html", rows=rows, completeness=[complete])

    @app.get("/consents/{consent_id}/revoke", name="consent_revoke_confirm")
    def revoke_confirm(request: Request, consent_id: str) -> HTMLResponse:
        item = consent.get_consent(citizen(request), consent_id)
        if item.status not in (ConsentStatus.ACTIVE, ConsentStatus.PAUSED):
            raise ConflictError("this consent cannot be revoked")
        return render(request, "revoke.html", consent=item)

    app.post("/consents/{consent_id}/revoke", name="consent_revoke")(_consent_action("revoke"))

    @app.post("/requests/{request_id}/{verb}", name="request_answer")
    async def answer_request(request: Request, request_id: str, verb: str) -> Response:
        caller = await run_in_threadpool(citizen, request)
        await checked_form(request)
        if verb == "approve":
            # Granting a consent (every consent goes to a private company) is sensitive.
            require_fresh_authentication(request, str(local_url(request, "consents")))
            await run_in_threadpool(consent.approve_request, caller, request_id)
            return redirect(request, "consents", done="approved")
        if verb == "decline":
            await run_in_threadpool(consent.decline_request, caller, request_id)
            return redirect(request, "consents", done="declined")
        raise NotFoundError("no such action")

    @app.get("/consents/{consent_id}/receipt", name="consent_receipt")
    def receipt(request: Request, consent_id: str) -> Response:
        receipts = consent.receipts(citizen(request), consent_id)
        if not receipts:
            raise NotFoundError("no receipt")
        jws_url = local_url(request, "consent_receipt_jws", consent_id=consent_id)
        html = render_receipt_html(receipts[-1], jws_url=str(jws_url))
        # The receipt is a self-contained page with one inline <style>: allow exactly that style
        # by its hash, nothing else (CSP level 2 hash source).
        hashes = " ".join(
            "'sha256-" + _b64(hashlib.sha256(m.group(1).encode()).digest()) + "'"
            for m in _STYLE.finditer(html)
        )
        page_csp = csp.replace("style-src 'self'", f"style-src 'self' {hashes}".rstrip())
        return HTMLResponse(html, headers={"Content-Security-Policy": page_csp})

    @app.get("/consents/{consent_id}/receipt.jws", name="consent_receipt_jws")
    def receipt_jws(request: Request, consent_id: str) -> Response:
        """The latest receipt as the consent service signed it (verify it offline with
        ``onceonly consent verify-receipt``)."""
        receipts = consent.receipts(citizen(request), consent_id)
        if not receipts or receipts[-1].jws is None:
            raise NotFoundError("no signed receipt")
        return Response(
            receipts[-1].jws,
            media_type="application/jose",
            headers={
                "Content-Disposition": (
                    f'attachment; filename="consent-receipt-{receipts[-1].id}.jws"'
                )
            },
        )

    # --- citizens: who accessed my data --------------------------------------------------------

    @app.get("/access", name="access")
    def access_page(request: Request) -> HTMLResponse:
        caller = citizen(request)
        org = request.query_params.get("org") or None
        decision = request.query_params.get("decision") or None
        if decision not in (None, "allow", "deny", "error", "info"):
            raise ClientError("bad decision filter")
        rows: list[_Row] = []
        orgs: set[str] = set()
        unavailable: list[str] = []
        completeness: list[_Completeness] = []
        for node, log in logs.items():
            try:
                mine = log.my_record(caller, limit=MAX_TIMELINE)
            except TransportError:  # one node down does not hide the others' records
                unavailable.append(node)
                continue
            completeness.append(verify_complete(node, mine, log.verifier))
            everything = _access_rows(node, mine.records)
            orgs.update(str(e.record["client"]) for e in everything if e.record.get("client"))
            rows.extend(
                e
                for e in everything
                if (org is None or e.record.get("client") == org)
                and (decision is None or e.record.get("decision") == decision)
            )
        rows.sort(key=lambda r: (r.time or datetime.min.replace(tzinfo=UTC), r.index), reverse=True)
        return render(
            request,
            "access.html",
            rows=rows,
            completeness=completeness,
            unavailable=unavailable,
            orgs=sorted(orgs),
            org=org,
            decision=decision,
        )

    # --- citizens: alerts (alerts/api.py at each node) ------------------------------------------

    def alert_nodes() -> Mapping[str, AlertsBackend]:
        if not alerts:
            raise NotFoundError("alerts are not available here")
        return alerts

    @app.get("/alerts", name="alerts")
    def alerts_page(request: Request) -> HTMLResponse:
        caller = citizen(request)
        rows: list[dict[str, Any]] = []
        unavailable: list[str] = []
        unread = 0
        for node, backend in alert_nodes().items():
            try:
                page = backend.list_alerts(caller, limit=MAX_ALERTS)
            except TransportError:  # one node down does not hide the others' alerts
                unavailable.append(node)
                continue
            unread += int(page.get("unread") or 0)
            for a in page["alerts"]:
                if isinstance(a, dict):
                    rows.append(a | {"node": node, "when": _alert_time(a.get("time"))})
        rows.sort(key=lambda a: str(a.get("time", "")), reverse=True)
        return render(request, "alerts.html", rows=rows, unread=unread, unavailable=unavailable)

    @app.post("/alerts/read", name="alert_read")
    async def alert_read(request: Request) -> Response:
        caller = await run_in_threadpool(citizen, request)
        form = await checked_form(request)
        backend = alert_nodes().get(_field(form, "node"))
        alert_id = _int(_field(form, "alert"))
        if backend is None or alert_id is None:
            raise NotFoundError("no such alert")
        await run_in_threadpool(backend.mark_read, caller, alert_id)
        return redirect(request, "alerts", done="alert_read")

    @app.get("/alerts/settings", name="alert_settings")
    def alert_settings_page(request: Request) -> HTMLResponse:
        caller = citizen(request)
        current: dict[str, Any] | None = None
        for backend in alert_nodes().values():
            try:
                current = backend.settings(caller)
                break
            except TransportError:
                continue
        if current is None:
            raise TransportError("no node answered")
        return render(
            request,
            "alert_settings.html",
            enabled=current.get("enabled", {}),
            email=current.get("email"),
        )

    @app.post("/alerts/settings", name="alert_settings_save")
    async def alert_settings_save(request: Request) -> Response:
        caller = await run_in_threadpool(citizen, request)
        form = await checked_form(request)
        enabled = {rule: form.get(f"rule-{rule}") == "on" for rule in ALERT_RULES}
        email = _field(form, "email") or None
        if email is not None and not _EMAIL.fullmatch(email):
            raise ClientError("bad e-mail address")
        # Every node keeps the citizen's settings for the alerts it raises: saved at each.
        for backend in alert_nodes().values():
            await run_in_threadpool(backend.save_settings, caller, enabled, email)
        return redirect(request, "alert_settings", done="alert_settings")

    @app.get("/access/record", name="access_record")
    def access_record(request: Request) -> Response:
        """One node's whole record of the caller with its completeness proof, as a file the
        citizen keeps and checks offline (``onceonly audit verify-record``)."""
        caller = citizen(request)
        node = request.query_params.get("node") or ""
        mine = log_of(node).my_record(caller, limit=MAX_TIMELINE)
        body = {
            "node": node,
            "completeness": mine.completeness,
            "truncated": mine.truncated,
            "accesses": [{"index": r.index, "entry": r.record} for r in mine.records],
        }
        name = re.sub(r"[^A-Za-z0-9.-]+", "-", node).strip("-") or "node"
        return Response(
            json.dumps(body, ensure_ascii=False, indent=1),
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="record-{name}.json"'},
        )

    @app.post("/access/verify", name="access_verify")
    async def access_verify(request: Request) -> HTMLResponse:
        caller = await run_in_threadpool(citizen, request)
        form = await checked_form(request)
        node = _field(form, "node")
        index = _int(_field(form, "index"))
        log = log_of(node)
        if index is None:
            raise NotFoundError("no such record")
        # (3) isolation: another citizen's entry is "not found", like an unknown one.
        entry = await run_in_threadpool(log.my_entry, caller, index)
        result = verify_proven(entry, log.verifier)
        return render(request, "verify.html", row=_proven_row(node, entry), result=result)

    def procedures_form(
        request: Request, caller: Caller, status: int = 200, **context: Any
    ) -> HTMLResponse:
        mine = procedures.list_for(caller) if procedures is not None else []
        defaults: dict[str, Any] = {"move_date": clock().date().isoformat(), "address": ""}
        defaults.update(context)
        return render(
            request,
            "procedures.html",
            status,
            mine=mine,
            submission=secrets.token_urlsafe(16),
            **defaults,
        )

    @app.get("/procedures", name="procedures")
    def procedures_page(request: Request) -> HTMLResponse:
        return procedures_form(request, citizen(request))

    def desk() -> ProcedureDesk:
        if procedures is None:
            raise NotFoundError("no procedures here")
        return procedures

    @app.post("/procedures", name="procedure_start")
    async def procedure_start(request: Request) -> Response:
        caller = await run_in_threadpool(citizen, request)
        form = await checked_form(request)
        service = desk()
        address = _field(form, "address")
        move_date = _field(form, "move_date")
        try:
            try:
                data = AddressChangeInput(
                    move_date=date.fromisoformat(move_date), address=address or None
                )
            except (ValueError, ValidationError) as exc:
                raise ClientError("give a valid move date and address") from exc
            view = await service.start(
                caller, data, submission_key=_field(form, "submission") or None
            )
        except ClientError as exc:
            return await run_in_threadpool(
                procedures_form,
                request,
                caller,
                400,
                error=exc.detail,
                address=address,
                move_date=move_date,
            )
        return RedirectResponse(
            str(local_url(request, "procedure", procedure_id=view.id)), status_code=303
        )

    @app.get("/procedures/{procedure_id}", name="procedure")
    def procedure_page(request: Request, procedure_id: str) -> HTMLResponse:
        view = desk().get(citizen(request), procedure_id)
        lang = translator(request).lang
        names = {r.recipient: (r.name_ja if lang == "ja" else r.name_en) for r in view.recipients}
        return render(
            request, "procedure.html", view=view, names=names, refresh_s=PROCEDURE_REFRESH_S
        )

    @app.post("/procedures/{procedure_id}/confirm", name="procedure_confirm")
    async def procedure_confirm(request: Request, procedure_id: str) -> Response:
        caller = await run_in_threadpool(citizen, request)
        form = await checked_form(request)
        decisions: dict[str, str] = {}
        for key in form:
            if key.startswith("consent:"):
                decisions[key.removeprefix("consent:")[:MAX_FORM_FIELD]] = _field(form, key)
        try:
            confirm = ConfirmInput.model_validate({"consents": decisions})
        except ValidationError as exc:
            raise ClientError("approve or decline each consent") from exc
        if "approve" in decisions.values():  # a consent granted to a private company
            require_fresh_authentication(
                request, str(local_url(request, "procedure", procedure_id=procedure_id))
            )
        await run_in_threadpool(desk().confirm, caller, procedure_id, confirm)
        return RedirectResponse(
            str(local_url(request, "procedure", procedure_id=procedure_id)), status_code=303
        )

    # --- auditors ------------------------------------------------------------------------------

    @app.get("/auditor", name="auditor_search")
    def auditor_search(request: Request) -> HTMLResponse:
        caller = auditor(request)
        q = request.query_params
        params = {
            k: (q.get(k) or "").strip()[:MAX_FORM_FIELD]
            for k in (
                "node",
                "subject",
                "client",
                "service",
                "purpose",
                "decision",
                "since",
                "until",
            )
        }
        searched = any(params.values()) or q.get("search") == "1"
        rows: list[_Row] = []
        error: str | None = None
        truncated = False
        unavailable: list[str] = []
        sizes: dict[str, int | str] = {}
        for node, log in logs.items():
            try:
                sizes[node] = log.size(caller)
            except TransportError:  # one node down does not hide the others' logs
                sizes[node] = "?"
                unavailable.append(node)
        if searched:
            try:
                query = EntryQuery(
                    subjects=frozenset([params["subject"]]) if params["subject"] else None,
                    client=params["client"] or None,
                    service=params["service"] or None,
                    purpose=params["purpose"] or None,
                    decision=params["decision"] or None,
                    since=_query_time(params["since"]),
                    until=_query_time(params["until"]),
                )
                nodes = [params["node"]] if params["node"] else list(logs)
                for node in nodes:
                    if node in unavailable:
                        continue
                    found, next_cursor = log_of(node).search(caller, query, limit=MAX_TIMELINE)
                    truncated = truncated or next_cursor is not None
                    rows.extend(_row(node, e) for e in found)
            except ClientError as exc:
                error = exc.detail
        rows.sort(key=lambda r: (r.time or datetime.min.replace(tzinfo=UTC), r.index), reverse=True)
        return render(
            request,
            "auditor.html",
            nodes=list(logs),
            params=params,
            rows=rows,
            searched=searched,
            error=error,
            truncated=truncated,
            limit=MAX_TIMELINE,
            sizes=sizes,
            unavailable=unavailable,
        )

    @app.get("/auditor/entry", name="auditor_entry")
    def auditor_entry(request: Request) -> HTMLResponse:
        caller = auditor(request)
        node = request.query_params.get("node") or ""
        index = _int(request.query_params.get("index"))
        log = log_of(node)
        if index is None:
            raise NotFoundError("no such record")
        entry = log.entry(caller, index)
        result = verify_proven(entry, log.verifier)
        return render(
            request,
            "entry.html",
            row=_proven_row(node, entry),
            data=entry.data.decode("utf-8", errors="replace"),
            result=result,
        )

    @app.get("/auditor/export", name="auditor_export")
    def auditor_export(request: Request) -> Response:
        caller = auditor(request)
        node = request.query_params.get("node") or ""
        log = log_of(node)
        size = log.size(caller)
        start = _int(request.query_params.get("start"), default=0) or 0
        end = _int(request.query_params.get("end"), default=size)
        end = size if end is None else min(end, size)
        if start > end:
            raise ClientError("bad export range")
        lines = log.export(caller, start, end)

        def body() -> Iterator[bytes]:
            for line in lines:
                yield line.encode() + b"\n"

        filename = re.sub(r"[^A-Za-z0-9_-]", "_", node) + f"-{start}-{end}.jsonl"
        return StreamingResponse(
            body(),
            media_type="application/jsonl",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    @app.get("/auditor/checkpoints", name="auditor_checkpoints")
    def auditor_checkpoints(request: Request) -> HTMLResponse:
        caller = auditor(request)
        nodes = list(logs)
        node = request.query_params.get("node") or (nodes[0] if nodes else "")
        history: list[dict[str, Any]] = []
        if node:
            log = log_of(node)
            stored = log.checkpoints(caller, limit=MAX_CHECKPOINT_HISTORY)  # newest first
            for i, cp in enumerate(stored):
                try:
                    signed_cp = verify_checkpoint(cp.note, log.verifier)
                    # The size and root shown must be the ones the signature covers.
                    signed = (signed_cp.size, signed_cp.root) == (cp.size, cp.root)
                except NoteError:
                    signed = False
                consistent: bool | None = None
                if i + 1 < len(stored):
                    older = stored[i + 1]
                    proof = log.consistency_proof(caller, older.size, cp.size)
                    consistent = merkle.verify_consistency(
                        older.size, cp.size, older.root, cp.root, proof
                    )
                history.append(
                    {"cp": cp, "root": _b64(cp.root), "signed": signed, "consistent": consistent}
                )
        return render(request, "checkpoints.html", nodes=nodes, node=node, history=history)

    @app.get("/auditor/chart", name="auditor_chart")
    def auditor_chart(request: Request) -> HTMLResponse:
        caller = auditor(request)
        t = translator(request)
        records: list[Mapping[str, Any]] = []
        for log in logs.values():
            cursor: int | None = 0
            while cursor is not None and len(records) < MAX_CHART_ENTRIES:
                found, cursor = log.search(caller, EntryQuery(), limit=MAX_PAGE_SIZE, cursor=cursor)
                records.extend(e.record for e in found)
        chart = build_chart(records, label=lambda **kw: t("chart.label", **kw))
        return render(request, "chart.html", chart=chart)

    return app
