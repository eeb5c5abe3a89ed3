"""What the pseudonym translator adds per exchange (docs/pseudonyms.md, docs/performance.md).

Starts the reference instance's central server (with the translator) as a real process on
127.0.0.1 and measures, sequentially, from this process:

* ``miss``: a consumer node's translation when its cache has no token — a signed request over
  loopback HTTP, the access-right check, two store lookups, sealing, signing and the audit append
  at the translator;
* ``hit``: the same call answered from the consumer's cache (what almost every exchange pays when a
  system asks about the same citizen and service within the token's life);
* ``open``: the provider's steps T1–T4 (signature, binding, expiry, unsealing);
* ``local``: for comparison, one uncached lookup in the shared table (``ONCEONLY_PSEUDONYMS=local``,
  not for production).

Prints p50/p99 in milliseconds, one JSON object on the last line.

    python benchmarks/translator.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from adapters.aliases import AgencyAliases  # noqa: E402
from adapters.translator_client import HttpSubjectSealer  # noqa: E402
from exchange.central_config import verify_registry  # noqa: E402
from exchange.db import make_engine  # noqa: E402
from exchange.identifiers import ClientId, MemberId, ServiceId  # noqa: E402
from exchange.keystore import KeyStore  # noqa: E402
from exchange.ports import SubjectTokenRequest  # noqa: E402
from exchange.sealing import SealingKey  # noqa: E402
from exchange.signing import (  # noqa: E402
    CentralVerifier,
    MemberSigner,
    load_private_key,
    public_key_from_pem,
)
from exchange.subject_token import open_subject_token  # noqa: E402
from onceonly.wiring import pseudonym_service, registry_database_url  # noqa: E402
from tests.integration.processes import provisioned_cluster  # noqa: E402

MACHIDA = MemberId.parse("JP/GOV/132098")
TAX = ClientId.parse("JP/GOV/132098/municipal-tax")
RESIDENTS = ClientId.parse("JP/GOV/132098/resident-registry")
SERVICE = ServiceId.parse("JP/GOV/132098/resident-registry/address/v1")


def _stats(samples: list[float]) -> dict[str, float]:
    samples.sort()
    return {
        "n": len(samples),
        "p50_ms": round(statistics.median(samples) * 1000, 3),
        "p99_ms": round(samples[max(int(len(samples) * 0.99) - 1, 0)] * 1000, 3),
    }


async def _time_async(n: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        out.append(time.perf_counter() - t0)
    return out


def _time(n: int, call: Callable[[int], object]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_miss, n_fast = (100, 1000) if args.quick else (500, 5000)
    tmp = Path(tempfile.mkdtemp(prefix="oo-bench-translator-"))
    cluster, settings, _ = provisioned_cluster(
        tmp / "data", (MACHIDA,), log=tmp / "processes.log", citizens=200
    )
    central = cluster.procs["central"]
    central.start()
    try:
        keys = KeyStore(settings.data_dir)
        engine = make_engine(registry_database_url(settings, "municipal-tax"))
        with engine.connect() as conn:
            codes = [str(r[0]) for r in conn.execute(text("SELECT taxpayer_id FROM taxpayers"))]
        engine.dispose()
        now = datetime.now(UTC)
        anchor = CentralVerifier(public_key_from_pem(keys.anchor.read_text()))
        registry = verify_registry(httpx.get(central.url + "/registry").content, anchor, now=now)
        signer = MemberSigner(load_private_key(keys.subsystem_key(TAX)))

        async def run() -> tuple[list[float], list[float], str]:
            sealer = HttpSubjectSealer({TAX: signer}, timeout_s=10)
            sealer.on_registry(registry)

            def request(i: int) -> SubjectTokenRequest:
                code = codes[i % len(codes)]
                return SubjectTokenRequest(TAX, code, SERVICE, citizen=False, message_id=f"b-{i}")

            async def miss(i: int) -> object:
                sealer._cache.clear()  # measure the translator, not the cache
                return await sealer.seal_subject(request(i))

            misses = await _time_async(n_miss, miss)
            token = await sealer.seal_subject(request(0))
            hits = await _time_async(n_fast, lambda _i: sealer.seal_subject(request(0)))
            await sealer.aclose()
            return misses, hits, token

        misses, hits, token = asyncio.run(run())
        seal_key = SealingKey.load(keys.subsystem_seal_key(RESIDENTS))
        opens = _time(
            n_fast,
            lambda _i: open_subject_token(
                token,
                verifier=registry.translator_verifier,
                key=seal_key,
                client=str(TAX),
                service=str(SERVICE),
                provider=str(RESIDENTS),
                now=datetime.now(UTC),
                max_skew_s=60,
            ),
        )
        table = AgencyAliases(pseudonym_service(settings), {})
        local = _time(
            n_miss,
            lambda i: table._inner.translate(  # uncached, as a first lookup
                codes[i % len(codes)], from_agency=str(TAX), to_agency=str(RESIDENTS)
            ),
        )
    finally:
        central.stop()
    result = {
        "benchmark": "translator",
        "database": "sqlite",
        "miss": _stats(misses),
        "hit": _stats(hits),
        "open": _stats(opens),
        "local_table_lookup": _stats(local),
        "token_chars": len(token),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
