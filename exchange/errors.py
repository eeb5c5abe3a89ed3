"""The error hierarchy, split by who is at fault (style rule 10).

::

    OnceOnlyError
    ├── VerificationError      bad data from a peer: signature, certificate, replay, skew, binding
    │   └── ReplayError        a message id seen before
    ├── RefusalError           a policy, an access right or a consent said no
    ├── ClientError            the calling system broke the protocol (bad header, unknown service)
    │   ├── AuthenticationError the calling system could not prove who it is
    │   ├── MethodNotAllowedError the path does not take this method (405, with ``Allow``)
    │   └── PayloadTooLargeError the request body is over the route's limit (413)
    ├── NotFoundError          the thing asked for does not exist (or is not the caller's)
    ├── ConflictError          the request clashes with the current state (illegal transition)
    ├── TransportError         a peer could not be reached or answered garbage at the HTTP level
    ├── ConfigurationError     this node is mis-configured (missing keys, expired registry)
    └── UnavailableError       a part this node depends on is down for now: retry later (503)
        └── DatabaseUnavailable the node's own database cannot be used (connection lost,
                                server refusing connections, unreadable file)

Every error carries a stable ``code`` (X-Road style, dotted) that ``exchange.problems`` maps once to
an RFC 9457 problem type. Packages subclass these; they never invent a parallel hierarchy.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "RETRY_AFTER_S",
    "AuthenticationError",
    "ClientError",
    "ConfigurationError",
    "ConflictError",
    "DatabaseUnavailable",
    "MethodNotAllowedError",
    "NotFoundError",
    "OnceOnlyError",
    "PayloadTooLargeError",
    "RefusalError",
    "ReplayError",
    "TransportError",
    "UnavailableError",
    "VerificationError",
]

RETRY_AFTER_S = 5
"""What a 503 tells the caller to wait before retrying (``Retry-After``, RFC 9110 §10.2.3)."""


class OnceOnlyError(Exception):
    """Root of every error onceonly raises on purpose."""

    code = "Server.Internal"
    status = 500
    audited = False
    """Set once the refusal this error stands for is in the audit log (never recorded twice)."""

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class VerificationError(OnceOnlyError):
    """A peer sent something that does not verify. The detail sent out is opaque (rule 11)."""

    code = "Server.ServerProxy.InvalidSignature"
    status = 400


class ReplayError(VerificationError):
    """A message id was seen before: a replay, or a broken client re-using ids."""

    code = "Server.ServerProxy.Replay"
    status = 409


class RefusalError(OnceOnlyError):
    """An access right, a policy or a consent refused the request."""

    code = "Server.ServerProxy.AccessDenied"
    status = 403

    def __init__(
        self, detail: str, *, code: str | None = None, reasons: tuple[str, ...] = ()
    ) -> None:
        super().__init__(detail, code=code)
        self.reasons = reasons


class ClientError(OnceOnlyError):
    """The caller broke the protocol: a missing or malformed header, an unknown service."""

    code = "Client.BadRequest"
    status = 400


class AuthenticationError(ClientError):
    """The caller did not prove who it is (no or wrong API key, bad token)."""

    code = "Client.Unauthenticated"
    status = 401


class MethodNotAllowedError(ClientError):
    """The path exists but does not take this method; ``allow`` is what it takes (RFC 9110
    §15.5.6: the 405 answer names them in ``Allow``)."""

    code = "Client.MethodNotAllowed"
    status = 405

    def __init__(self, detail: str, *, allow: Iterable[str]) -> None:
        super().__init__(detail)
        self.allow = tuple(sorted(set(allow)))


class PayloadTooLargeError(ClientError):
    """The request body (declared or streamed) is larger than the route accepts."""

    code = "Client.PayloadTooLarge"
    status = 413


class NotFoundError(OnceOnlyError):
    """Unknown, or not the caller's: both look the same from outside (no existence oracle)."""

    code = "Client.NotFound"
    status = 404


class ConflictError(OnceOnlyError):
    """The request is well-formed but clashes with the current state."""

    code = "Client.Conflict"
    status = 409


class TransportError(OnceOnlyError):
    """A peer could not be reached, timed out, or answered something that is not the protocol."""

    code = "Server.ServerProxy.NetworkError"
    status = 502


class ConfigurationError(OnceOnlyError):
    """This node cannot work as configured: keys missing, registry expired or unverifiable."""

    code = "Server.ServerProxy.Configuration"
    status = 503


class UnavailableError(OnceOnlyError):
    """Something this component depends on is unavailable for now; nothing was decided, and the
    same request may succeed after ``retry_after_s`` (answered 503 with ``Retry-After``)."""

    code = "Server.ServerProxy.Unavailable"
    status = 503

    def __init__(
        self, detail: str, *, code: str | None = None, retry_after_s: int = RETRY_AFTER_S
    ) -> None:
        super().__init__(detail, code=code)
        self.retry_after_s = retry_after_s


class DatabaseUnavailable(UnavailableError):
    """The component's database cannot be used: the connection was lost or refused, or the file
    is unreadable. ``exchange.db.as_unavailable`` is the one place that recognises it."""

    code = "Server.ServerProxy.DatabaseError"
