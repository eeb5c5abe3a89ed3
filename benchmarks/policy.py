"""Policy decision throughput and latency: embedded rego-cpp vs plain Python, same rules, same run.

Data: 100 members, 1,000 services, 10,000 access rights, one statute per service. Prints one
JSON object on its last line. ``--quick`` takes fewer samples. Not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# benchmarks/ is sys.path[0] when run as a script, and benchmarks/exchange.py would shadow the
# kernel package: put the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies.data import format_time
from policies.embedded import EmbeddedRegoEngine

NOW = datetime(2026, 11, 23, 11, 40, tzinfo=UTC)


def make_data(rng: random.Random) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    members = [f"JP/GOV/{130000 + i}" for i in range(100)]
    clients = [f"{m}/sys{j}" for m in members for j in range(5)]
    services: dict[str, dict[str, Any]] = {}
    statutes: dict[str, dict[str, Any]] = {}
    sids: list[tuple[str, str]] = []
    for k in range(1000):
        member = members[k % 100]
        sid = f"{member}/registry{k // 100}/svc{k}"
        sids.append((member, sid))
        services.setdefault(member, {})[sid] = {
            "fields": [f"f{i}" for i in range(8)],
            "purposes": ["p0", "p1", "p2"],
            "changes": False,
        }
        statutes.setdefault(member, {})[sid] = [
            {
                "ordinance": f"law-{k}",
                "title": "t",
                "client_classes": ["GOV"],
                "purposes": ["p0"],
                "fields": ["f0", "f1", "f2"],
                "operations": ["read"],
            }
        ]
    rights: dict[str, dict[str, dict[str, Any]]] = {}
    pairs: list[tuple[str, str]] = []
    while len(pairs) < 10_000:
        member, sid = sids[len(pairs) % 1000]
        client = rng.choice(clients)
        by_client = rights.setdefault(member, {}).setdefault(sid, {})
        if client in by_client:
            continue
        by_client[client] = {"not_before": "2020-01-01T00:00:00+00:00"}
        pairs.append((sid, client))
    return {"services": services, "access_rights": rights, "statutes": statutes}, pairs


def python_decide(data: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """The same rules in plain Python (the baseline; it is not what the node runs)."""
    now = datetime.fromisoformat(doc["now"])
    member = "/".join(doc["service"].split("/")[:3])
    service = data["services"].get(member, {}).get(doc["service"])

    def in_force(w: dict[str, Any]) -> bool:
        nb, na = w.get("not_before"), w.get("not_after")
        return (nb is None or now >= datetime.fromisoformat(nb)) and (
            na is None or now < datetime.fromisoformat(na)
        )

    if service is None:
        return {"allow": False, "basis": None, "fields": [], "reasons": ["unknown service"]}
    right = data["access_rights"].get(member, {}).get(doc["service"], {}).get(doc["client"])
    cparts = doc["client"].split("/")
    basis = None
    for st in data["statutes"].get(member, {}).get(doc["service"], []):
        if (
            (doc["client"] in st.get("clients", []) or cparts[1] in st.get("client_classes", []))
            and doc["purpose"] in st["purposes"]
            and in_force(st)
        ):
            basis = (f"statute:{st['ordinance']}", set(st["fields"]))
            break
    ok = right is not None and in_force(right) and doc["purpose"] in service["purposes"]
    fields = set(service["fields"]) & basis[1] if (ok and basis) else set()
    if ok and basis and fields:
        return {"allow": True, "basis": basis[0], "fields": sorted(fields), "reasons": []}
    return {"allow": False, "basis": None, "fields": [], "reasons": ["denied"]}


def measure(fn: Any, docs: list[dict[str, Any]]) -> dict[str, float]:
    lat = []
    start = time.perf_counter()
    for doc in docs:
        t = time.perf_counter()
        fn(doc)
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    lat.sort()
    return {
        "decisions_per_s": round(len(docs) / total, 1),
        "p50_us": round(statistics.median(lat) * 1e6, 1),
        "p99_us": round(lat[int(len(lat) * 0.99) - 1] * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rng = random.Random(7)
    data, pairs = make_data(rng)
    t = time.perf_counter()
    engine = EmbeddedRegoEngine(data)
    compile_s = time.perf_counter() - t
    n = 500 if args.quick else 5000
    docs = [
        {
            "client": c,
            "service": s,
            "service_version": None,
            "purpose": rng.choice(["p0", "p0", "p1"]),
            "subject": "x",
            "now": format_time(NOW),
            "operation": "read",
            "requested_fields": None,
            "consent": None,
        }
        for s, c in (rng.choice(pairs) for _ in range(n))
    ]
    for doc in docs[:50]:  # both must agree on allow/basis/fields before anything is timed
        a, b = engine.evaluate(doc), python_decide(data, doc)
        assert a is not None
        assert (a["allow"], a["basis"], a["fields"]) == (b["allow"], b["basis"], b["fields"])
    embedded = measure(engine.evaluate, docs)
    baseline = measure(lambda d: python_decide(data, d), docs)
    print(
        json.dumps(
            {
                "benchmark": "policy",
                "members": 100,
                "services": 1000,
                "access_rights": 10000,
                "decisions": n,
                "compile_s": round(compile_s, 2),
                "embedded": embedded,
                "python_baseline": baseline,
                "p99_ratio_embedded_vs_python": round(embedded["p99_us"] / baseline["p99_us"], 1),
                "target_p99_under_1ms": embedded["p99_us"] < 1000,
            }
        )
    )


if __name__ == "__main__":
    main()
