"""A writer process for the concurrency and crash tests (not a test module).

``python audit_writer.py URL LOG_ID COUNT SKEY [BATCH] [publish]``: appends COUNT events (forever
if COUNT is 0), BATCH at a time, printing "ready" once the first append committed; with
``publish``, publishes a checkpoint after every batch (as a node replica does on its interval).
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

from audit.checkpoint import NoteSigner
from audit.log import TransparencyLog
from exchange.db import make_engine
from exchange.ports import AuditEvent


def main() -> None:
    url, log_id, count, skey = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    publish = len(sys.argv) > 6 and sys.argv[6] == "publish"
    log = TransparencyLog(make_engine(url), log_id=log_id, signer=NoteSigner.from_skey(skey))
    done = 0
    while count == 0 or done < count:
        n = batch if count == 0 else min(batch, count - done)
        events = [
            AuditEvent(
                time=datetime.now(UTC),
                node=f"writer-{os.getpid()}",
                kind="request",
                decision="allow",
                message_id=f"{os.getpid()}-{done + k}",
            )
            for k in range(n)
        ]
        log.append_many(events)
        if publish:
            log.publish_checkpoint(datetime.now(UTC))
        if done == 0:
            print("ready", flush=True)
        done += n


if __name__ == "__main__":
    main()
