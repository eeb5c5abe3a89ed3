"""The transparency log (DESIGN "Audit"): every exchange, refusal and consent change is an entry in
an append-only RFC 9162 Merkle tree kept in the database, with signed C2SP checkpoints, inclusion
and consistency proofs, an offline verifier, the auditor API and the citizen's view.

Modules: ``merkle`` (RFC 9162 §2.1), ``checkpoint`` (C2SP signed-note / tlog-checkpoint),
``store`` (rows), ``log`` (``TransparencyLog``, an ``exchange.ports.AuditSink``), ``verify``
(offline verifier), ``completeness`` and ``subject_map`` (completeness proofs), ``restricted``
(entries kept from their citizen's view until a release time), ``api`` (``build_router``;
imports FastAPI, so it is not re-exported here).
"""

from audit.checkpoint import Checkpoint, NoteError, NoteSigner, NoteVerifier
from audit.log import EntryPage, EntryQuery, LogEntry, StoredCheckpoint, TransparencyLog
from audit.verify import VerifyReport, verify_export

__all__ = [
    "Checkpoint",
    "EntryPage",
    "EntryQuery",
    "LogEntry",
    "NoteError",
    "NoteSigner",
    "NoteVerifier",
    "StoredCheckpoint",
    "TransparencyLog",
    "VerifyReport",
    "verify_export",
]
