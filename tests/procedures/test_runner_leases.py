"""Lease heartbeats (issue 14.7): a live runner keeps the lease of a slow step for as long as the
exchange takes, and a runner killed with SIGKILL loses its steps to another runner within the
lease — seconds, not a minute."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from starlette.types import Receive, Scope, Send

from exchange.db import make_engine, upgrade
from exchange.signing import MemberSigner, generate_private_key
from procedures.model import StepState
from procedures.one_stop import OneStopClient
from procedures.runner import ProcedureRunner
from procedures.store import StepRow
from tests.procedures.test_procedure_units import _procedure

ROOT = Path(__file__).resolve().parents[2]


class Node:
    """The one-stop node as the runner sees it, in memory: answers every change after
    ``delay_s`` with 200 (style rule 19: an in-memory peer behind the client's transport)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    def client(self) -> OneStopClient:
        return OneStopClient("http://node", "key", transport=httpx.ASGITransport(app=self))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


def _runner(engine: Engine, client: OneStopClient, name: str, **kw: float) -> ProcedureRunner:
    return ProcedureRunner(
        engine,
        client,
        MemberSigner(generate_private_key()),
        runner_id=name,
        **kw,  # type: ignore[arg-type]
    )


def _step(engine: Engine, pid: str) -> StepRow:
    with Session(engine) as s:
        row = s.scalars(select(StepRow).where(StepRow.procedure_id == pid)).one()
        s.expunge(row)
        return row


def _now() -> datetime:
    return datetime.now(UTC)


def test_a_live_slow_step_keeps_its_lease_beyond_the_lease_length(engine: Engine) -> None:
    pid = _procedure(engine, ("resident-registry",))
    slow = Node(delay_s=2.0)
    other_node = Node()

    async def scenario() -> list[int]:
        async with slow.client() as client, other_node.client() as other_client:
            owner = _runner(engine, client, "owner", lease_s=0.6, heartbeat_s=0.15)
            thief = _runner(engine, other_client, "thief", lease_s=0.6, heartbeat_s=0.15)
            running = asyncio.create_task(owner.run_once())
            for _ in range(1000):  # the owner claims first
                if _step(engine, pid).claimed_by == "owner":
                    break
                await asyncio.sleep(0.01)
            stolen: list[int] = []
            while not running.done():  # > three lease lengths of trying
                stolen.append(len(await asyncio.to_thread(thief.claim, _now())))
                await asyncio.sleep(0.05)
            assert await running == 1
            assert owner.metrics.renewals._value.get() >= 5  # type: ignore[attr-defined]
            return stolen

    stolen = asyncio.run(scenario())
    assert len(stolen) > 10
    assert sum(stolen) == 0
    step = _step(engine, pid)
    assert step.state == StepState.DONE.value
    assert step.attempts == 1
    assert other_node.calls == 0


def _silent_listener() -> socket.socket:
    """A loopback port that accepts connections (backlog) and never answers a byte."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


@pytest.mark.integration
@pytest.mark.slow
def test_a_runner_killed_with_sigkill_loses_its_step_within_the_lease(
    engine: Engine, db_url: str
) -> None:
    lease_s, heartbeat_s = 2.0, 0.4
    pid = _procedure(engine, ("resident-registry",))
    silent = _silent_listener()
    env = {
        **os.environ,
        "ONCEONLY_DATABASE_URL": db_url,
        "RUNNER_NODE_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
        "RUNNER_ID": "doomed",
        "RUNNER_LEASE_S": str(lease_s),
        "RUNNER_HEARTBEAT_S": str(heartbeat_s),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.procedures.runner_process"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
    )
    node = Node()
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 30
        while _step(engine, pid).claimed_by != "doomed":
            assert time.monotonic() < deadline, "the runner process never claimed the step"
            time.sleep(0.05)

        async def scenario() -> tuple[float, ProcedureRunner]:
            async with node.client() as client:
                survivor = _runner(engine, client, "survivor", lease_s=lease_s)
                # Alive (its exchange hangs, its heartbeat runs): not taken for 1.5 leases.
                until = time.monotonic() + 1.5 * lease_s
                while time.monotonic() < until:
                    assert await survivor.run_once() == 0
                    await asyncio.sleep(0.1)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                killed_at = time.monotonic()
                while await survivor.run_once() == 0:
                    assert time.monotonic() - killed_at < lease_s + 3, "not taken over in time"
                    await asyncio.sleep(0.1)
                return time.monotonic() - killed_at, survivor

        taken_after_s, survivor = asyncio.run(scenario())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        silent.close()
    assert taken_after_s <= lease_s + 1.0
    step = _step(engine, pid)
    assert step.state == StepState.DONE.value
    assert step.attempts == 2  # the dead runner's attempt, then the survivor's
    assert node.calls == 1
    assert survivor.metrics.reclaimed._value.get() == 1  # type: ignore[attr-defined]


def _samples(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def test_runner_metrics_count_claims_retries_and_the_queue_depth(engine: Engine) -> None:
    from exchange.web.metrics import ComponentMetrics
    from procedures.one_stop import ExchangeOutcome

    _procedure(engine)  # resident record first, then water and gas
    runner = _runner(engine, Node().client(), "a")
    metrics = ComponentMetrics([runner.metrics])
    step = runner.claim(_now())[0]
    running = _samples(metrics.render().decode())
    assert running["onceonly_procedure_queue_depth{state=running}"] == 1
    assert running["onceonly_procedure_queue_depth{state=pending}"] == 2
    transient = ExchangeOutcome("transient", 503, None, None, "down", "m-1", 0.01)
    assert runner.complete(step, transient, _now()) == "pending"
    after = _samples(metrics.render().decode())
    assert after["onceonly_procedure_steps_claimed_total"] == 1
    assert after["onceonly_procedure_step_retries_total"] == 1
    assert after["onceonly_procedure_steps_completed_total{state=pending}"] == 1
    assert after["onceonly_procedure_queue_depth{state=pending}"] == 3
    assert after["onceonly_procedure_queue_depth{state=running}"] == 0
    assert after["onceonly_procedure_lease_reclaims_total"] == 0


def test_the_runner_loop_survives_an_unusable_database_and_counts_it(tmp_path: Path) -> None:
    path = tmp_path / "procedures.sqlite"
    eng = make_engine(f"sqlite:///{path}")
    upgrade(eng)
    eng.dispose()
    path.write_bytes(b"not a database" * 1024)
    runner = _runner(eng, Node().client(), "a")

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run_forever(stop, idle_s=0.02))
        await asyncio.sleep(0.3)
        assert not task.done()  # still looping, not dead on the first error
        stop.set()
        await task

    asyncio.run(run())
    eng.dispose()
    assert runner.metrics.database_unavailable._value.get() >= 2  # type: ignore[attr-defined]
