"""The HTTP adapter: forwards a service call to an existing departmental REST system (issue 6).

Each service is a ``HttpRoute``: a ``ServiceSpec`` plus the upstream method and path template
(``{subject}`` is replaced by this agency's subject identifier, percent-encoded). The adapter
validates the caller's body, calls upstream with a timeout, retries with exponential backoff only
where a repeat is harmless (GET, or a change carrying an idempotency key, sent upstream as
``Idempotency-Key``), checks the answer against the response model and selects the allowed fields.

Errors by who is at fault (style rule 10):

- upstream unreachable, timed out, or 5xx after retries → ``UpstreamUnavailable``/``UpstreamTimeout``
  (``TransportError``);
- upstream answered 2xx with malformed JSON or a schema violation, or an unexpected 4xx →
  ``UpstreamError`` (``VerificationError``: bad data from the peer);
- upstream 404 → ``NotFoundError``; 409 → ``ConflictError``; 400/422 → ``ClientError`` (the
  caller's body passed our schema but the registry refused it); 401/403 → ``ConfigurationError``
  (the adapter's credentials at the registry are wrong — not the caller's fault).

Trust assumption: the upstream is the department's own system but its answers are checked like any
peer's; its error bodies are never passed through verbatim (they might carry personal data).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

import httpx

from adapters.base import (
    ServiceSpec,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    parse_body,
    resolve_service,
    select_fields,
    validate_upstream,
)
from exchange.errors import ClientError, ConfigurationError, ConflictError, NotFoundError
from exchange.ports import AdapterRequest, AdapterResponse, ServiceDescription

__all__ = [
    "DEFAULT_BACKOFF_S",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_TIMEOUT_S",
    "MAX_UPSTREAM_BODY_BYTES",
    "HttpAdapter",
    "HttpRoute",
]

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF_S = 0.1
MAX_UPSTREAM_BODY_BYTES = 10 * 1024 * 1024
_RETRY_STATUSES = frozenset({500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """Where one service lives upstream: ``method`` and ``path`` (with ``{subject}``)."""

    spec: ServiceSpec
    method: Literal["GET", "POST", "PUT", "PATCH"]
    path: str


class HttpAdapter:
    """Forwards calls to ``base_url`` (implements ``RegistryAdapter``). Close with ``aclose``."""

    def __init__(
        self,
        base_url: str,
        routes: Sequence[HttpRoute],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_s: float = DEFAULT_BACKOFF_S,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not routes:
            raise ConfigurationError("an HTTP adapter needs at least one route")
        if max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        self._routes = {r.spec.code: r for r in routes}
        if len(self._routes) != len(routes):
            raise ConfigurationError("a service is routed twice")
        self._specs = {code: r.spec for code, r in self._routes.items()}
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout_s),
            headers=dict(headers or {}),
            transport=transport,
            follow_redirects=False,
        )

    def services(self) -> Sequence[ServiceDescription]:
        return [spec.describe() for spec in self._specs.values()]

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(self, request: AdapterRequest) -> AdapterResponse:
        spec = resolve_service(self._specs, request)
        route = self._routes[spec.code]
        body = parse_body(spec, request)
        if spec.changes and not request.idempotency_key:
            raise ClientError(
                f"service {spec.code} changes the registry: an idempotency key is required",
                code="Client.MissingIdempotencyKey",
            )
        if "{subject}" in route.path and request.subject is None:
            raise ClientError(f"service {spec.code} needs a subject", code="Client.MissingSubject")
        path = route.path.replace("{subject}", quote(request.subject or "", safe=""))
        headers = {"Accept": "application/json", "X-Request-Id": request.message_id}
        content: bytes | None = None
        if body is not None:
            content = body.model_dump_json(exclude_unset=True).encode()
            headers["Content-Type"] = "application/json"
        if request.idempotency_key:
            headers["Idempotency-Key"] = request.idempotency_key
        # Only a repeat that cannot change anything twice may be retried.
        idempotent = route.method == "GET" or request.idempotency_key is not None
        response = await self._send(spec, route.method, path, headers, content, idempotent)
        return AdapterResponse(200, select_fields(self._decode(spec, response), request.fields))

    async def _send(
        self,
        spec: ServiceSpec,
        method: str,
        path: str,
        headers: Mapping[str, str],
        content: bytes | None,
        idempotent: bool,
    ) -> httpx.Response:
        attempts = self._max_attempts if idempotent else 1
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            try:
                response = await self._client.request(
                    method, path, headers=headers, content=content
                )
            except httpx.TimeoutException as exc:
                if last:
                    raise UpstreamTimeout(f"registry did not answer {spec.code} in time") from exc
            except httpx.HTTPError as exc:
                if last:
                    raise UpstreamUnavailable(
                        f"registry unreachable for {spec.code}: {type(exc).__name__}"
                    ) from exc
            else:
                if response.status_code not in _RETRY_STATUSES:
                    return response
                if last:
                    raise UpstreamUnavailable(
                        f"registry failed {spec.code}: HTTP {response.status_code}"
                        + (f" after {attempts} attempts" if attempts > 1 else "")
                    )
            await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def _decode(self, spec: ServiceSpec, response: httpx.Response) -> object:
        status = response.status_code
        if status == 404:
            raise NotFoundError("subject not found in the registry")
        if status == 409:
            raise ConflictError(f"registry refused {spec.code}: conflicting state")
        if status in (400, 422):
            raise ClientError(
                f"registry refused the request to {spec.code} (HTTP {status})",
                code="Client.RefusedByRegistry",
            )
        if status in (401, 403):
            raise ConfigurationError(f"adapter is not authorised at the registry (HTTP {status})")
        if not 200 <= status < 300:
            raise UpstreamError(f"registry answered {spec.code} with unexpected HTTP {status}")
        if len(response.content) > MAX_UPSTREAM_BODY_BYTES:
            raise UpstreamError(f"registry answer for {spec.code} is too large")
        try:
            data = json.loads(response.content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UpstreamError(f"registry answer for {spec.code} is not valid JSON") from exc
        return validate_upstream(spec, data)
