"""The one-stop desk serves liveness, readiness and the procedure runner's metrics (issue 14.8)."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from adapters.reference.rights import ONE_STOP
from onceonly.federation import one_stop_app
from tests.procedures.helpers import Federation


def test_the_desk_serves_health_readiness_and_runner_metrics(federation: Federation) -> None:
    app = one_stop_app(
        federation.settings, federation.one_stop_url, federation.api_keys[str(ONE_STOP)]
    )

    async def probe() -> tuple[httpx.Response, httpx.Response, str]:
        async with app.router.lifespan_context(app):  # the runner runs, as deployed
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://desk") as desk:
                health = await desk.get("/healthz")
                ready = await desk.get("/readyz")
                metrics = await desk.get("/metrics")
        return health, ready, metrics.text

    health, ready, text = asyncio.run(probe())
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok"}
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "onceonly_procedure_queue_depth",
        "onceonly_procedure_lease_reclaims",
        "onceonly_procedure_step_retries",
        "onceonly_database_unavailable",
        "process_cpu_seconds",
    } <= names
