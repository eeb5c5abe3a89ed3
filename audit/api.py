"""HTTP API of the log: the auditor API and the citizen's "who accessed my data" view.

Auditors (JWT with the ``auditor`` role) search entries, fetch an entry with its inclusion proof,
the latest and past checkpoints, consistency proofs, and exports (JSON Lines) to verify offline.
Citizens (JWT with the ``citizen`` role) see every entry whose subject is one of *their* subject
ids, in plain Japanese and English, each with its inclusion proof against a signed checkpoint,
and (on the first page) a completeness proof per subject (``audit.completeness``) that these are
all the entries about them up to a signed checkpoint,
and one such entry by its index (the portal's "verify"; another citizen's index is a 404, like an
unknown one). Paths::

    GET /audit/entries[?subject&client&service&purpose&decision&since&until&limit&cursor]
    GET /audit/entries/{index}       GET /audit/size
    GET /audit/checkpoint            GET /audit/checkpoints[?limit]
    GET /audit/consistency?first&second
    GET /audit/export[?start&end]
    GET /audit/restricted[?overdue&limit&cursor]
    GET /me/accesses[?limit&cursor]  GET /me/accesses/{index}

Restricted entries (``audit.restricted``) are listed for auditors with their statute and release
time, never their subject; a citizen sees one only once it is released, described as the access
it records, beside its release entry (which is what their completeness proof counts).

Trust assumption: the token verifier has authenticated the caller; a citizen's subjects come from
their token (or ``subjects_of``), never from the request, so one citizen can never ask for
another's entries. Every proof is against a checkpoint the caller can verify with the log key.
Routes raise ``exchange.errors`` subclasses, mapped centrally to problem+json.

(No ``from __future__ import annotations`` here: FastAPI must resolve the ``Annotated``
dependencies built inside ``build_router`` when the routes are defined.)
"""

import base64
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, StreamingResponse

from audit.log import (
    MAX_PAGE_SIZE,
    EntryQuery,
    LogEntry,
    StoredCheckpoint,
    TransparencyLog,
)
from exchange.errors import ClientError, NotFoundError
from exchange.tokens import Principal, TokenVerifier
from exchange.web.auth import bearer_principal
from exchange.web.openapi import documented, media_content
from exchange.web.params import MAX_INT64, Rfc3339Time
from exchange.web.refusals import RefusalRecorder, refusal_auditing_route

__all__ = ["build_router", "describe_entry"]

DEFAULT_PAGE_SIZE = 100
MAX_EXPORT_ENTRIES = 1_000_000
MAX_QUERY_LEN = 255
Decision = Literal["allow", "deny", "error", "info"]
"""The decisions an entry records (``EntryQuery.decision``): the filter is an enum."""
JST = timezone(timedelta(hours=9), "JST")
EXPORT_MEDIA_TYPE = "application/jsonl"

_ACTIONS: dict[str, tuple[str, str]] = {
    "request": ("asked for your data", "あなたの情報を照会しました"),
    "response": ("received your data", "あなたの情報を受け取りました"),
    "refusal": ("tried to obtain your data", "あなたの情報の照会を試みました"),
    "consent.granted": ("was given your consent", "あなたの同意を受けました"),
    "consent.paused": ("had your consent paused", "あなたの同意が一時停止されました"),
    "consent.resumed": ("had your consent resumed", "あなたの同意が再開されました"),
    "consent.revoked": ("had your consent revoked", "あなたの同意が撤回されました"),
    "consent.used": ("used your consent", "あなたの同意を利用しました"),
    "consent.expired": ("had your consent expire", "あなたの同意が期限切れになりました"),
    "procedure.step": ("carried out a procedure step", "手続きの一部を実行しました"),
    "event.published": (
        "was told of a change to your data",
        "あなたの情報の変更の通知を受けました",
    ),
    "obligation.deleted": ("deleted the data it had received", "受け取った情報を削除しました"),
    "obligation.overdue": (
        "had not deleted the data it received by its delete-by date",
        "受け取った情報を削除期限までに削除していません",
    ),
}
OBLIGATION_KINDS = ("obligation.deleted", "obligation.overdue")
_OUTCOMES = {
    "allow": ("allowed", "許可"),
    "deny": ("refused", "拒否"),
    "error": ("failed", "エラー"),
    "info": ("recorded", "記録"),
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _organisation(client: str | None) -> str:
    """``JP/GOV/132098/tax`` → ``JP/GOV/132098 (tax)``: the member, then its subsystem."""
    if not client:
        return "-"
    parts = client.split("/")
    return f"{'/'.join(parts[:3])} ({'/'.join(parts[3:])})" if len(parts) > 3 else client


def _service(service: str | None) -> str:
    if not service:
        return "-"
    parts = service.split("/")
    return "/".join(parts[3:]) if len(parts) > 4 else service


def _released_text(record: dict[str, Any], release: dict[str, Any]) -> dict[str, str]:
    """What the citizen is told about a restricted access, now released."""
    until, at = str(record.get("restricted_until", "?")), str(release.get("time", "?"))
    return {
        "en": f" It was kept from your view under the law until {until[:10]} and shown to you "
        f"on {at[:10]}.",
        "ja": f"この記録は法令により {until[:10]} まで非開示とされ、{at[:10]} に開示されました。",
    }


def describe_entry(record: dict[str, Any], release: dict[str, Any] | None = None) -> dict[str, Any]:
    """An entry in plain words, in English and Japanese (the citizen view); ``release`` is the
    release entry of a restricted entry, shown once released."""
    kind = str(record.get("kind", ""))
    decision = str(record.get("decision", "info"))
    try:
        when = datetime.strptime(str(record.get("time")), "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        when = datetime(1970, 1, 1)  # entries are written by us; this only guards the view
    when = when.replace(tzinfo=UTC)
    org, service = _organisation(record.get("client")), _service(record.get("service"))
    purpose = record.get("purpose") or "-"
    action_en, action_ja = _ACTIONS.get(kind, (kind, kind))
    outcome_en, outcome_ja = _OUTCOMES.get(decision, (decision, decision))
    if record.get("consent_id"):
        basis_en = f"your consent {record['consent_id']}"
        basis_ja = f"あなたの同意（{record['consent_id']}）"
    elif record.get("basis"):
        basis_en, basis_ja = f"the law: {record['basis']}", f"法令：{record['basis']}"
    else:
        basis_en, basis_ja = "not recorded", "記録なし"
    local = when.astimezone(JST)
    en = (
        f"On {when:%Y-%m-%d at %H:%M} UTC, {org} {action_en} through the service {service} "
        f"for the purpose {purpose!r}, on the basis of {basis_en}. It was {outcome_en}."
    )
    ja = (
        f"{local:%Y年%m月%d日 %H時%M分}（日本時間）、{org}がサービス「{service}」を通じて"
        f"{action_ja}。目的：{purpose}。根拠：{basis_ja}。結果：{outcome_ja}。"
    )
    restriction = None
    if release is not None:
        extra = _released_text(record, release)
        en, ja = en + extra["en"], ja + extra["ja"]
        restriction = {"until": record.get("restricted_until"), "released_at": release.get("time")}
    return {
        "when": record.get("time"),
        "organisation": org,
        "service": record.get("service"),
        "purpose": record.get("purpose"),
        "basis": {"consent_id": record.get("consent_id"), "law": record.get("basis")},
        "kind": kind,
        "message_id": record.get("message_id"),
        "outcome": outcome_en,
        "allowed": decision == "allow",
        "restriction": restriction,
        "text": {"en": en, "ja": ja},
    }


def _with_obligations(accesses: list[dict[str, Any]]) -> None:
    """Next to each data received under usage terms, what became of it (issue 17 item 4): the
    consumer node's ``obligation.deleted`` / ``obligation.overdue`` entries about the same
    message on this page. A deletion, even a late one, is the last word."""
    states: dict[str, dict[str, Any]] = {}
    for a in accesses:
        if a.get("kind") in OBLIGATION_KINDS and a.get("message_id"):
            state = "deleted" if a["kind"] == "obligation.deleted" else "overdue"
            if states.get(a["message_id"], {}).get("state") != "deleted":
                states[a["message_id"]] = {"state": state, "at": a.get("when")}
    for a in accesses:
        if a.get("kind") == "response" and a.get("message_id") in states:
            a["obligation"] = states[a["message_id"]]


def _entry_json(entry: LogEntry) -> dict[str, Any]:
    return {"index": entry.index, "leaf_hash": _b64(entry.leaf_hash), "entry": entry.record}


def _checkpoint_json(cp: StoredCheckpoint) -> dict[str, Any]:
    return {"size": cp.size, "root": _b64(cp.root), "time": cp.time.isoformat(), "note": cp.note}


def _checkpoint_ref(cp: StoredCheckpoint) -> dict[str, Any]:
    return {"checkpoint": cp.note, "checkpoint_time": cp.time.isoformat()}


def build_router(
    log: TransparencyLog,
    verifier: TokenVerifier,
    subjects_of: Callable[[Principal], Collection[str]] | None = None,
    *,
    clock: Callable[[], datetime] | None = None,
    refused: RefusalRecorder | None = None,
) -> APIRouter:
    """The auditor API under ``/audit`` and the citizen API under ``/me``.

    ``subjects_of`` maps a citizen to every subject id (pseudonym) the log knows them by; by
    default just ``principal.subject``. ``clock`` (default: now, UTC) stamps checkpoints that are
    published on demand when no checkpoint yet covers an entry asked for. ``refused``, when
    given, records every refusal these routes answer (``exchange.web.refusals``).
    """
    now = clock or (lambda: datetime.now(UTC))
    auditor = Annotated[Principal, bearer_principal(verifier, role="auditor")]
    citizen = Annotated[Principal, bearer_principal(verifier, role="citizen")]
    router = (
        APIRouter() if refused is None else APIRouter(route_class=refusal_auditing_route(refused))
    )

    def covering_checkpoint(index: int) -> StoredCheckpoint:
        latest = log.latest_checkpoint()
        if latest is None or latest.size <= index:
            latest = log.publish_checkpoint(now())
        return latest

    def with_proof(entry: LogEntry, cp: StoredCheckpoint) -> dict[str, Any]:
        proof = log.inclusion_proof(entry.index, cp.size)
        return _entry_json(entry) | {
            "tree_size": cp.size,
            "inclusion_proof": [_b64(h) for h in proof],
        }

    @router.get("/audit/entries", **documented("searchAuditEntries", problems=(400, 401, 403, 503)))
    def search_entries(
        _: auditor,
        subject: Annotated[str | None, Query(max_length=MAX_QUERY_LEN)] = None,
        client: Annotated[str | None, Query(max_length=MAX_QUERY_LEN)] = None,
        service: Annotated[str | None, Query(max_length=MAX_QUERY_LEN)] = None,
        purpose: Annotated[str | None, Query(max_length=MAX_QUERY_LEN)] = None,
        decision: Decision | None = None,
        since: Rfc3339Time | None = None,
        until: Rfc3339Time | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        cursor: Annotated[int | None, Query(ge=0, le=MAX_INT64)] = None,
    ) -> dict[str, Any]:
        query = EntryQuery(
            subjects=frozenset({subject}) if subject is not None else None,
            client=client,
            service=service,
            purpose=purpose,
            decision=decision,
            since=since,
            until=until,
        )
        page = log.search(query, limit=limit, cursor=cursor)
        return {
            "entries": [_entry_json(e) for e in page.entries],
            "next_cursor": None if page.next_cursor is None else str(page.next_cursor),
        }

    @router.get(
        "/audit/entries/{index}", **documented("getAuditEntry", problems=(400, 401, 403, 404, 503))
    )
    def get_entry(_: auditor, index: int) -> dict[str, Any]:
        if not 0 <= index <= MAX_INT64:  # no such entry, and no 64-bit SQL integer either
            raise NotFoundError(f"no entry {index}")
        entry = log.entry(index)
        cp = covering_checkpoint(index)
        return with_proof(entry, cp) | _checkpoint_ref(cp)

    @router.get(
        "/audit/restricted",
        **documented("listRestrictedAuditEntries", problems=(400, 401, 403, 503)),
    )
    def restricted_entries(
        _: auditor,
        overdue: bool = False,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        cursor: Annotated[int | None, Query(ge=0, le=MAX_INT64)] = None,
    ) -> dict[str, Any]:
        """Restricted entries with their statute and release time (never the subject);
        ``overdue=true``: only those past their release time and not released."""
        at = now()
        found, next_cursor = log.restricted_entries(
            at, overdue_only=overdue, limit=limit, cursor=cursor
        )
        return {
            "entries": [
                _entry_json(r.entry)
                | {
                    "statute": r.entry.record.get("basis"),
                    "restricted_until": r.until.isoformat() if r.until else None,
                    "released_by": r.released,
                    "overdue": r.overdue(at),
                    "problem": r.problem,
                }
                for r in found
            ],
            "next_cursor": None if next_cursor is None else str(next_cursor),
        }

    @router.get("/audit/size", **documented("getAuditLogSize", problems=(401, 403, 503)))
    def size(_: auditor) -> dict[str, int]:
        return {"size": log.size()}

    @router.get(
        "/audit/checkpoint",
        response_class=PlainTextResponse,
        **documented(
            "getLatestCheckpoint",
            problems=(401, 403, 503),
            responses={200: {"description": "the latest signed checkpoint (C2SP note)"}},
        ),
    )
    def latest_checkpoint(_: auditor) -> PlainTextResponse:
        cp = log.latest_checkpoint() or log.publish_checkpoint(now())
        return PlainTextResponse(cp.note, media_type="text/plain; charset=utf-8")

    @router.get(
        "/audit/checkpoints", **documented("listCheckpoints", problems=(400, 401, 403, 503))
    )
    def checkpoint_history(
        _: auditor, limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE
    ) -> dict[str, Any]:
        return {"checkpoints": [_checkpoint_json(c) for c in log.checkpoints(limit=limit)]}

    @router.get(
        "/audit/consistency", **documented("getConsistencyProof", problems=(400, 401, 403, 503))
    )
    def consistency(
        _: auditor,
        first: Annotated[int, Query(ge=0, le=MAX_INT64)],
        second: Annotated[int, Query(ge=0, le=MAX_INT64)],
    ) -> dict[str, Any]:
        proof = log.consistency_proof(first, second)
        return {"first": first, "second": second, "proof": [_b64(h) for h in proof]}

    @router.get(
        "/audit/export",
        response_class=StreamingResponse,
        **documented(
            "exportAuditLog",
            problems=(400, 401, 403, 503),
            responses={
                200: {
                    "description": "one JSON entry per line (JSON Lines), to verify offline",
                    "content": media_content(EXPORT_MEDIA_TYPE, {"type": "string"}),
                }
            },
        ),
    )
    def export(
        _: auditor,
        start: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
        end: Annotated[int | None, Query(ge=0, le=MAX_INT64)] = None,
    ) -> StreamingResponse:
        size = log.size()
        stop = size if end is None else end
        if not start <= stop <= size:
            raise ClientError(f"the range must satisfy 0 <= start <= end <= {size}")
        if stop - start > MAX_EXPORT_ENTRIES:
            raise ClientError(f"at most {MAX_EXPORT_ENTRIES} entries per export")

        def lines() -> Iterator[str]:
            for line in log.export(start, stop):
                yield line + "\n"

        return StreamingResponse(lines(), media_type=EXPORT_MEDIA_TYPE)

    def own_subjects(principal: Principal) -> frozenset[str]:
        return frozenset(subjects_of(principal) if subjects_of else {principal.subject})

    def access(entry: LogEntry, original: LogEntry | None, cp: StoredCheckpoint) -> dict[str, Any]:
        """One access as the citizen sees it. A release entry stands for the restricted entry it
        releases: described as that access, with inclusion proofs for both."""
        if original is None:
            return describe_entry(entry.record) | with_proof(entry, cp)
        return (
            describe_entry(original.record, entry.record)
            | with_proof(entry, cp)
            | {"released": with_proof(original, cp)}
        )

    @router.get(
        "/me/accesses/{index}", **documented("getMyAccess", problems=(400, 401, 403, 404, 503))
    )
    def my_access(principal: citizen, index: int) -> dict[str, Any]:
        if not 0 <= index <= MAX_INT64:  # no such entry, and no 64-bit SQL integer either
            raise NotFoundError("no such entry")
        try:
            entry = log.entry(index)
        except NotFoundError:
            raise NotFoundError("no such entry") from None
        subjects = own_subjects(principal)
        if entry.record.get("subject") in subjects:
            cp = covering_checkpoint(index)
            original = log.released_originals([entry]).get(index)
            return access(entry, original, cp) | _checkpoint_ref(cp)
        # A restricted entry is the caller's once released to them; until then, and for another
        # citizen's entry, the answer is exactly that for an unknown one (no oracle).
        release = log.release_of(index) if "subject_commitment" in entry.record else None
        if release is None or release.record.get("subject") not in subjects:
            raise NotFoundError("no such entry")
        cp = covering_checkpoint(release.index)
        return (
            describe_entry(entry.record, release.record)
            | with_proof(entry, cp)
            | _checkpoint_ref(cp)
        )

    @router.get("/me/accesses", **documented("listMyAccesses", problems=(400, 401, 403, 503)))
    def my_accesses(
        principal: citizen,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        cursor: Annotated[int | None, Query(ge=0, le=MAX_INT64)] = None,
    ) -> dict[str, Any]:
        subjects = own_subjects(principal)
        if not subjects:
            return {"accesses": [], "next_cursor": None, "checkpoint": None, "completeness": None}
        # The completeness proof comes first, so every entry it covers is already in the log
        # when the search runs (later entries are simply beyond its checkpoint).
        completeness = None
        if cursor is None:
            proven_cp, proofs = log.completeness(subjects, now())
            completeness = {
                "checkpoint": proven_cp.note,
                "tree_size": proven_cp.size,
                "proofs": [p.to_json() for p in proofs],
            }
        page = log.search(EntryQuery(subjects=subjects), limit=limit, cursor=cursor)
        cp = covering_checkpoint(page.entries[-1].index) if page.entries else None
        originals = log.released_originals(page.entries)
        accesses = [access(e, originals.get(e.index), cp) for e in page.entries if cp is not None]
        _with_obligations(accesses)
        return {
            "accesses": accesses,
            "next_cursor": None if page.next_cursor is None else str(page.next_cursor),
            "checkpoint": cp.note if cp else None,
            "log_key": log.vkey(),
            "completeness": completeness,
        }

    return router
