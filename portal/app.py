"""The portal: server-rendered pages for citizens (consents, who accessed my data) and auditors
(log search, entries with proofs, export, checkpoint history, chart), in Japanese and English.

Issue 8. Progressive enhancement: every essential action is a plain HTML form (GET for reads,
POST for changes) that works without JavaScript. The domain services are called in-process:
``consent.lifecycle.ConsentService`` with the signed-in citizen's own subject, and each node's
``audit.log.TransparencyLog``. "Verify" is done server-side: the entry's leaf hash is recomputed
from its bytes, the latest checkpoint's signature is checked with the log's key
(``audit.checkpoint.verify_checkpoint``) and the inclusion proof against its root
(``audit.merkle.verify_inclusion``).

Security (issue 8 "Quality"):
1. session: one HMAC-signed cookie (``portal._session``), ``HttpOnly; Secure; SameSite=Lax``; the
   bearer token in it is verified on every request — stops forged or stale sessions;
2. CSRF: every POST carries the session's token, compared in constant time — stops cross-site
   form posts (SameSite is the second layer);
3. isolation: consents are read through ``ConsentService`` with the principal's subject (others'
   ids are "not found" there), and a log entry is shown to a citizen only if its subject is one of
   ``subjects_of(principal)`` — anything else is the same 404 as an unknown id (no oracle);
4. headers: a strict Content-Security-Policy, ``X-Content-Type-Options: nosniff``,
   ``Referrer-Policy: same-origin``, ``X-Frame-Options: DENY``;
5. templates autoescape everything; consumer-supplied text (purposes) is never trusted markup.

Concurrency: database work never runs on the event loop (pages are sync routes, run in the
thread pool; POST handlers hand their domain calls to it), so a portal mounted next to nodes in
one process does not stall their exchanges.

Mounting: the lead mounts the app under ``/portal``; every URL is built with ``request.url_for``
so it carries the mount's ``root_path``, and made a path (``exchange.web.redirects.local_url``):
no redirect or link carries the request's ``Host`` header back (host-header injection), and
``RelativeRedirects`` does the same for the framework's own redirects (a trailing slash).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URL
from starlette.exceptions import HTTPException as StarletteHTTPException

from audit import merkle
from audit.checkpoint import NoteError, verify_checkpoint
from audit.log import MAX_PAGE_SIZE, EntryQuery, LogEntry, TransparencyLog
from consent.lifecycle import ConsentService
from consent.model import ConsentStatus
from consent.receipt import render_receipt_html
from exchange.errors import (
    AuthenticationError,
    ClientError,
    ConflictError,
    NotFoundError,
    OnceOnlyError,
    RefusalError,
)
from exchange.settings import Settings
from exchange.tokens import DevIssuer, Principal, TokenVerifier
from exchange.web.redirects import RelativeRedirects, local_url
from portal._session import SESSION_COOKIE, Session, SessionCodec, same_token
from portal.chart import build_chart
from portal.i18n import LANGS, Translator, pick_lang
from procedures.model import AddressChangeInput, ConfirmInput, ProcedureView

__all__ = [
    "CSP",
    "MAX_CHART_ENTRIES",
    "MAX_TIMELINE",
    "SESSION_LIFETIME_S",
    "AddressChangeDesk",
    "build_portal",
    "utc_now",
    "verify_entry",
]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
LANG_COOKIE = "oo_portal_lang"
SESSION_LIFETIME_S = 3600
LANG_COOKIE_MAX_AGE_S = 365 * 24 * 3600
MAX_TIMELINE = 200
"""Entries per log shown in one timeline or search page."""
MAX_CHART_ENTRIES = 20_000
MAX_CHECKPOINT_HISTORY = 50
MAX_FORM_FIELD = 256
PROCEDURE_REFRESH_S = 3
"""The live status page of a running procedure reloads itself (meta refresh, no JavaScript)."""
_HERE = Path(__file__).parent
_STYLE = re.compile(r"<style>(.*?)</style>", re.S)


def utc_now() -> datetime:
    return datetime.now(UTC)


class AddressChangeDesk(Protocol):
    """What the portal needs of ``procedures.address_change.AddressChangeService``."""

    async def start(
        self,
        subject: str,
        data: AddressChangeInput,
        *,
        now: datetime,
        submission_key: str | None = None,
    ) -> ProcedureView: ...

    def get(self, procedure_id: str, *, subject: str | None) -> ProcedureView: ...

    def list_for(self, subject: str) -> list[ProcedureView]: ...

    def confirm(
        self, subject: str, procedure_id: str, decisions: ConfirmInput, *, now: datetime
    ) -> ProcedureView: ...


class _SignInRequired(Exception):
    """Raised by a page that needs a principal; answered with a redirect to the sign-in page."""


class _CsrfError(Exception):
    """A POST without the session's CSRF token."""


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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _row(node: str, entry: LogEntry) -> _Row:
    record = entry.record
    return _Row(node, entry.index, record, _parse_time(record.get("time")))


def verify_entry(log: TransparencyLog, index: int) -> _Verification:
    """Check entry ``index`` against the latest signed checkpoint (RFC 9162 §2.1.3.2).

    1. recompute the leaf hash from the stored bytes — stops an entry edited in the database;
    2. verify the checkpoint's signature with the log's key — stops a forged checkpoint;
    3. verify the inclusion proof of the leaf under the checkpoint's root — stops a log that
       shows one thing to the citizen and signs another.
    """
    entry = log.entry(index)
    leaf = merkle.leaf_hash(entry.data)  # (1)
    stored = log.latest_checkpoint()
    if stored is None or stored.size <= index:
        return _Verification("pending", leaf_hash=_b64(leaf))
    try:
        checkpoint = verify_checkpoint(stored.note, log.verifier())  # (2)
    except NoteError:
        return _Verification("bad_checkpoint", leaf_hash=_b64(leaf), note=stored.note)
    proof = log.inclusion_proof(index, checkpoint.size)
    ok = merkle.verify_inclusion(leaf, index, checkpoint.size, proof, checkpoint.root)  # (3)
    return _Verification(
        "ok" if ok else "failed",
        size=checkpoint.size,
        time=stored.time,
        proof=tuple(_b64(p) for p in proof),
        leaf_hash=_b64(leaf),
        note=stored.note,
    )


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
    settings: Settings,
    *,
    consent: ConsentService,
    logs: Mapping[str, TransparencyLog],
    subjects_of: Callable[[Principal], Collection[str]],
    issuer: DevIssuer | None,
    verifier: TokenVerifier,
    demo_citizens: Sequence[tuple[str, str]] = (),
    procedures: AddressChangeDesk | None = None,
    clock: Callable[[], datetime] = utc_now,
    secure_cookies: bool = True,
) -> FastAPI:
    """The portal app. ``logs`` maps a node's member id to its transparency log;
    ``subjects_of`` gives the pseudonyms under which a citizen appears in those logs;
    ``demo_citizens`` lists ``(subject, display name)`` offered on the development sign-in page
    (only when ``issuer`` is given)."""
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
        token = session_of(request).token
        if token is None:
            return None
        try:
            return verifier.verify(token, now=clock())
        except AuthenticationError:
            return None

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
            "flash": request.query_params.get("done"),
        }
        base.update(context)
        response: HTMLResponse = templates.TemplateResponse(request, name, base, status_code=status)
        return response

    def citizen(request: Request) -> Principal:
        principal = principal_of(request)
        if principal is None:
            raise _SignInRequired
        if "citizen" not in principal.roles:
            raise RefusalError("citizens only")
        return principal

    def auditor(request: Request) -> Principal:
        principal = principal_of(request)
        if principal is None:
            raise _SignInRequired
        if not principal.is_auditor:
            raise RefusalError("auditors only")
        return principal

    async def checked_form(request: Request) -> Mapping[str, Any]:
        form = await request.form()
        # (2) CSRF: the session-bound token, compared in constant time.
        if not same_token(session_of(request).csrf, _field(form, "csrf")):
            raise _CsrfError
        return form

    def redirect(request: Request, name: str, **query: str) -> RedirectResponse:
        url = local_url(request, name)
        if query:
            url = url.include_query_params(**query)
        return RedirectResponse(str(url), status_code=303)

    def log_of(node: str) -> TransparencyLog:
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
                max_age=SESSION_LIFETIME_S,
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
        headers.setdefault("Content-Security-Policy", CSP)
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
        return render(
            request,
            "signin.html",
            citizens=list(demo_citizens),
            dev=issuer is not None,
            required=request.query_params.get("next") == "1",
        )

    @app.post("/signin", name="signin")
    async def signin(request: Request) -> Response:
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
        request.state.session = Session.fresh(token)  # new CSRF token at sign-in
        return redirect(request, "home")

    @app.post("/signout", name="signout")
    async def signout(request: Request) -> Response:
        await checked_form(request)
        request.state.session = Session.fresh()
        return redirect(request, "signin_page")

    # --- citizens: consents --------------------------------------------------------------------

    @app.get("/consents", name="consents")
    def consents_page(request: Request) -> HTMLResponse:
        principal = citizen(request)
        now = clock()
        items = consent.list_consents(principal.subject, now=now)
        requests = [
            r
            for r in consent.list_requests(principal.subject, now=now)
            if r.status.value == "pending"
        ]
        return render(request, "consents.html", consents=items, requests=requests)

    def _consent_action(verb: str) -> Callable[[Request, str], Any]:
        async def action(request: Request, consent_id: str) -> Response:
            principal = citizen(request)
            await checked_form(request)
            await run_in_threadpool(
                getattr(consent, verb), principal.subject, consent_id, now=clock()
            )
            return redirect(request, "consents", done=verb + "d")  # paused, resumed, revoked

        return action

    app.post("/consents/{consent_id}/pause", name="consent_pause")(_consent_action("pause"))
    app.post("/consents/{consent_id}/resume", name="consent_resume")(_consent_action("resume"))

    @app.get("/consents/{consent_id}/revoke", name="consent_revoke_confirm")
    def revoke_confirm(request: Request, consent_id: str) -> HTMLResponse:
        principal = citizen(request)
        item = consent.get_consent(principal.subject, consent_id, now=clock())
        if item.status not in (ConsentStatus.ACTIVE, ConsentStatus.PAUSED):
            raise ConflictError("this consent cannot be revoked")
        return render(request, "revoke.html", consent=item)

    app.post("/consents/{consent_id}/revoke", name="consent_revoke")(_consent_action("revoke"))

    @app.post("/requests/{request_id}/{verb}", name="request_answer")
    async def answer_request(request: Request, request_id: str, verb: str) -> Response:
        principal = citizen(request)
        await checked_form(request)
        now = clock()
        if verb == "approve":
            await run_in_threadpool(consent.approve_request, principal.subject, request_id, now=now)
            return redirect(request, "consents", done="approved")
        if verb == "decline":
            await run_in_threadpool(consent.decline_request, principal.subject, request_id, now=now)
            return redirect(request, "consents", done="declined")
        raise NotFoundError("no such action")

    @app.get("/consents/{consent_id}/receipt", name="consent_receipt")
    def receipt(request: Request, consent_id: str) -> Response:
        principal = citizen(request)
        receipts = consent.receipts(principal.subject, consent_id, now=clock())
        if not receipts:
            raise NotFoundError("no receipt")
        html = render_receipt_html(receipts[-1])
        # The receipt is a self-contained page with one inline <style>: allow exactly that style
        # by its hash, nothing else (CSP level 2 hash source).
        hashes = " ".join(
            "'sha256-" + _b64(hashlib.sha256(m.group(1).encode()).digest()) + "'"
            for m in _STYLE.finditer(html)
        )
        csp = CSP.replace("style-src 'self'", f"style-src 'self' {hashes}".rstrip())
        return HTMLResponse(html, headers={"Content-Security-Policy": csp})

    # --- citizens: who accessed my data --------------------------------------------------------

    def own_subjects(principal: Principal) -> frozenset[str]:
        return frozenset(subjects_of(principal))

    @app.get("/access", name="access")
    def access_page(request: Request) -> HTMLResponse:
        principal = citizen(request)
        subjects = own_subjects(principal)
        org = request.query_params.get("org") or None
        decision = request.query_params.get("decision") or None
        if decision not in (None, "allow", "deny", "error", "info"):
            raise ClientError("bad decision filter")
        rows: list[_Row] = []
        orgs: set[str] = set()
        if subjects:
            for node, log in logs.items():
                everything = log.search(EntryQuery(subjects=subjects), limit=MAX_TIMELINE)
                orgs.update(
                    str(e.record["client"]) for e in everything.entries if e.record.get("client")
                )
                if org is None and decision is None:
                    page = everything
                else:
                    page = log.search(
                        EntryQuery(subjects=subjects, client=org, decision=decision),
                        limit=MAX_TIMELINE,
                    )
                rows.extend(_row(node, e) for e in page.entries)
        rows.sort(key=lambda r: (r.time or datetime.min.replace(tzinfo=UTC), r.index), reverse=True)
        return render(
            request,
            "access.html",
            rows=rows,
            orgs=sorted(orgs),
            org=org,
            decision=decision,
        )

    @app.post("/access/verify", name="access_verify")
    async def access_verify(request: Request) -> HTMLResponse:
        principal = citizen(request)
        form = await checked_form(request)
        node = _field(form, "node")
        index = _int(_field(form, "index"))
        log = log_of(node)
        if index is None:
            raise NotFoundError("no such record")
        entry = await run_in_threadpool(log.entry, index)
        # (3) isolation: another citizen's entry is "not found", like an unknown one.
        if entry.record.get("subject") not in own_subjects(principal):
            raise NotFoundError("no such record")
        result = await run_in_threadpool(verify_entry, log, index)
        return render(request, "verify.html", row=_row(node, entry), result=result)

    def procedures_form(
        request: Request, principal: Principal, status: int = 200, **context: Any
    ) -> HTMLResponse:
        mine = procedures.list_for(principal.subject) if procedures is not None else []
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

    def desk() -> AddressChangeDesk:
        if procedures is None:
            raise NotFoundError("no procedures here")
        return procedures

    @app.post("/procedures", name="procedure_start")
    async def procedure_start(request: Request) -> Response:
        principal = citizen(request)
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
                principal.subject,
                data,
                now=clock(),
                submission_key=_field(form, "submission") or None,
            )
        except ClientError as exc:
            return await run_in_threadpool(
                procedures_form,
                request,
                principal,
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
        principal = citizen(request)
        view = desk().get(procedure_id, subject=principal.subject)
        lang = translator(request).lang
        names = {r.recipient: (r.name_ja if lang == "ja" else r.name_en) for r in view.recipients}
        return render(
            request, "procedure.html", view=view, names=names, refresh_s=PROCEDURE_REFRESH_S
        )

    @app.post("/procedures/{procedure_id}/confirm", name="procedure_confirm")
    async def procedure_confirm(request: Request, procedure_id: str) -> Response:
        principal = citizen(request)
        form = await checked_form(request)
        decisions: dict[str, str] = {}
        for key in form:
            if key.startswith("consent:"):
                decisions[key.removeprefix("consent:")[:MAX_FORM_FIELD]] = _field(form, key)
        try:
            confirm = ConfirmInput.model_validate({"consents": decisions})
        except ValidationError as exc:
            raise ClientError("approve or decline each consent") from exc
        await run_in_threadpool(
            desk().confirm, principal.subject, procedure_id, confirm, now=clock()
        )
        return RedirectResponse(
            str(local_url(request, "procedure", procedure_id=procedure_id)), status_code=303
        )

    # --- auditors ------------------------------------------------------------------------------

    @app.get("/auditor", name="auditor_search")
    def auditor_search(request: Request) -> HTMLResponse:
        auditor(request)
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
                    page = log_of(node).search(query, limit=MAX_TIMELINE)
                    truncated = truncated or page.next_cursor is not None
                    rows.extend(_row(node, e) for e in page.entries)
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
            sizes={node: log.size() for node, log in logs.items()},
        )

    @app.get("/auditor/entry", name="auditor_entry")
    def auditor_entry(request: Request) -> HTMLResponse:
        auditor(request)
        node = request.query_params.get("node") or ""
        index = _int(request.query_params.get("index"))
        log = log_of(node)
        if index is None:
            raise NotFoundError("no such record")
        entry = log.entry(index)
        result = verify_entry(log, index)
        return render(
            request,
            "entry.html",
            row=_row(node, entry),
            data=entry.data.decode("utf-8", errors="replace"),
            result=result,
        )

    @app.get("/auditor/export", name="auditor_export")
    def auditor_export(request: Request) -> Response:
        auditor(request)
        node = request.query_params.get("node") or ""
        log = log_of(node)
        size = log.size()
        start = _int(request.query_params.get("start"), default=0) or 0
        end = _int(request.query_params.get("end"), default=size)
        end = size if end is None else min(end, size)
        if start > end:
            raise ClientError("bad export range")
        lines = log.export(start, end)

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
        auditor(request)
        nodes = list(logs)
        node = request.query_params.get("node") or (nodes[0] if nodes else "")
        history: list[dict[str, Any]] = []
        if node:
            log = log_of(node)
            stored = log.checkpoints(limit=MAX_CHECKPOINT_HISTORY)  # newest first
            for i, cp in enumerate(stored):
                try:
                    verify_checkpoint(cp.note, log.verifier())
                    signed = True
                except NoteError:
                    signed = False
                consistent: bool | None = None
                if i + 1 < len(stored):
                    older = stored[i + 1]
                    proof = log.consistency_proof(older.size, cp.size)
                    consistent = merkle.verify_consistency(
                        older.size, cp.size, older.root, cp.root, proof
                    )
                history.append(
                    {"cp": cp, "root": _b64(cp.root), "signed": signed, "consistent": consistent}
                )
        return render(request, "checkpoints.html", nodes=nodes, node=node, history=history)

    @app.get("/auditor/chart", name="auditor_chart")
    def auditor_chart(request: Request) -> HTMLResponse:
        auditor(request)
        t = translator(request)
        records: list[Mapping[str, Any]] = []
        for log in logs.values():
            cursor: int | None = 0
            while cursor is not None and len(records) < MAX_CHART_ENTRIES:
                page = log.search(EntryQuery(), limit=MAX_PAGE_SIZE, cursor=cursor)
                records.extend(e.record for e in page.entries)
                cursor = page.next_cursor
        chart = build_chart(records, label=lambda **kw: t("chart.label", **kw))
        return render(request, "chart.html", chart=chart)

    return app
