"""A procedure runner alone in its own process, for the crash tests: ``python -m
tests.procedures.runner_process``. The database comes from ``ONCEONLY_DATABASE_URL`` and the
one-stop node from ``RUNNER_NODE_URL`` (the test points it at a node that never answers, so the
claimed step stays in flight until the process is killed)."""

from __future__ import annotations

import asyncio
import os
import sys

from exchange.db import make_engine
from exchange.signing import MemberSigner, generate_private_key
from procedures.one_stop import OneStopClient
from procedures.runner import ProcedureRunner


async def main() -> None:
    engine = make_engine(os.environ["ONCEONLY_DATABASE_URL"])
    async with OneStopClient(os.environ["RUNNER_NODE_URL"], "unused", timeout_s=600) as client:
        runner = ProcedureRunner(
            engine,
            client,
            MemberSigner(generate_private_key()),
            runner_id=os.environ["RUNNER_ID"],
            lease_s=float(os.environ["RUNNER_LEASE_S"]),
            heartbeat_s=float(os.environ["RUNNER_HEARTBEAT_S"]),
        )
        print("ready", flush=True)
        await runner.run_forever(asyncio.Event(), idle_s=0.05)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
