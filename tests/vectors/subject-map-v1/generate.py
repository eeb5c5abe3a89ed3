"""Writes a directory of kept records with onceonly's audit code as of the commit it runs
against: this directory's with commit 4bf7fc2 (the last with the fixed-depth subject map),
``../subject-map-v2``'s with commit 0f089f2 (the last with the binary compact map), e.g.:

    git archive 4bf7fc2 | tar -x -C /tmp/v1 && PYTHONPATH=/tmp/v1 python generate.py
    git archive 0f089f2 | tar -x -C /tmp/v2 && PYTHONPATH=/tmp/v2 python generate.py ../subject-map-v2

(the output directory defaults to this one). Not run by the tests (today's code writes the
16-ary map); kept to show how the files were made.
"""

from __future__ import annotations

import json
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from audit.checkpoint import NoteSigner
from audit.log import EntryQuery, TransparencyLog
from exchange.db import make_engine, upgrade
from exchange.ports import AuditEvent

HERE = Path(__file__).parent
T0 = datetime(2026, 12, 2, tzinfo=UTC)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/v1.db")
        upgrade(engine)
        signer = NoteSigner.generate("onceonly.test/JP/GOV/132098/resident-registry")
        log = TransparencyLog(engine, log_id="node-a", signer=signer)
        subjects = ("ps-alice", "ps-bob", "ps-carol", None)
        log.append_many(
            AuditEvent(
                time=T0 + timedelta(minutes=i),
                node="JP/GOV/132098/resident-registry",
                kind="request",
                decision="allow",
                client=f"JP/GOV/132098/dept-{i % 3}",
                service="JP/GOV/132098/resident-registry/address",
                purpose="tax-assessment",
                subject=subjects[i % 4],
                message_id=f"m-{i:04d}",
            )
            for i in range(24)
        )
        log.sign_checkpoint(T0 + timedelta(hours=1))
        for subject in ("ps-alice", "ps-nobody"):
            cp, proofs = log.completeness([subject], T0 + timedelta(hours=2))
            page = log.search(EntryQuery(subjects=frozenset({subject})), limit=100)
            record = {
                "accesses": [{"index": e.index, "entry": e.record} for e in page.entries],
                "completeness": {
                    "checkpoint": cp.note,
                    "tree_size": cp.size,
                    "proofs": [p.to_json() for p in proofs],
                },
            }
            (out / f"record-{subject}.json").write_text(json.dumps(record, indent=1) + "\n")
        (out / "log.vkey").write_text(log.vkey() + "\n")
        engine.dispose()


if __name__ == "__main__":
    main()
