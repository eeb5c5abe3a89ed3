"""The package's public names (style rule 3) and the port it implements."""

from __future__ import annotations

import audit
from audit import merkle
from audit.log import TransparencyLog
from exchange.ports import AuditSink


def test_audit_package_exports_exactly_its_public_names() -> None:
    assert sorted(audit.__all__) == [
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
    assert all(hasattr(audit, name) for name in audit.__all__)


def test_merkle_exposes_the_functions_the_issue_names() -> None:
    for name in (
        "leaf_hash",
        "node_hash",
        "root_hash",
        "inclusion_proof",
        "consistency_proof",
        "verify_inclusion",
        "verify_consistency",
    ):
        assert name in merkle.__all__
        assert callable(getattr(merkle, name))


def test_transparency_log_is_an_audit_sink() -> None:
    sink: type[AuditSink] = TransparencyLog  # mypy checks the structural match
    assert callable(sink.record)
