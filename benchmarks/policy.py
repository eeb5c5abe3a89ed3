"""Uncached policy decisions: OPA's evaluator in-process and rego-cpp vs plain Python, same run.

Data: 100 members, 1,000 services, 10,000 access rights, one statute per service; inputs drawn from
the granted pairs (a tenth with a client lacking the right). Every engine runs with its decision
cache off, so each decision is evaluated; the engines and the plain-Python rules alternate in
``--rounds`` rounds, so a busy moment on a shared machine hits all of them. The engines' answers
must be identical on every input. Prints one JSON object on its last line: per engine p50/p99
wall latency and CPU p50 in µs, the p99 ratio against plain Python. ``--quick`` takes fewer
samples. OPA in-process is skipped, with the reason, where its bindings do not load. On a shared,
busy machine the wall p99 is the scheduler's; ``chrt -f 5 python benchmarks/policy.py`` (root)
measures the engines without their neighbours, and the JSON says which (``scheduler``). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
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

from policies._internal.opa import unavailable_reason
from policies.data import format_time
from policies.embedded import EmbeddedRegoEngine
from policies.inprocess import OpaInProcessEngine

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


def measure(fn: Any, docs: list[dict[str, Any]], out: list[Any]) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each call; the answers go to ``out``."""
    wall, cpu = [], []
    for doc in docs:
        t, c = time.perf_counter(), time.thread_time()
        out.append(fn(doc))
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - t)
    return wall, cpu


def summary(wall: list[float], cpu: list[float]) -> dict[str, float]:
    wall, cpu = sorted(wall), sorted(cpu)
    return {
        "decisions_per_s": round(len(wall) / sum(wall), 1),
        "p50_us": round(statistics.median(wall) * 1e6, 1),
        "p99_us": round(wall[int(len(wall) * 0.99) - 1] * 1e6, 1),
        "cpu_p50_us": round(statistics.median(cpu) * 1e6, 1),
        "cpu_p99_us": round(cpu[int(len(cpu) * 0.99) - 1] * 1e6, 1),
    }


def _scheduler() -> str:
    """``fifo`` when run under ``chrt -f N`` (the engines' own latency, not the neighbours')."""
    policy = os.sched_getscheduler(0)
    return {os.SCHED_FIFO: "fifo", os.SCHED_RR: "rr"}.get(policy, "normal")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per engine")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rng = random.Random(7)
    data, pairs = make_data(rng)
    clients = sorted({c for _, c in pairs})
    n = 300 if args.quick else 3000
    docs = []
    for _ in range(n):
        sid, client = rng.choice(pairs)
        if rng.random() < 0.1:  # a client without this right: refused, with reasons
            client = rng.choice(clients)
        docs.append(
            {
                "client": client,
                "service": sid,
                "service_version": None,
                "purpose": rng.choice(["p0", "p0", "p1"]),
                "subject": "x",
                "now": format_time(NOW),
                "operation": "read",
                "requested_fields": None,
                "consent": None,
            }
        )

    engines: dict[str, Any] = {}
    compile_s: dict[str, float] = {}
    reload_same_s: dict[str, float] = {}
    skipped: dict[str, str] = {}
    missing = unavailable_reason()
    classes: list[tuple[str, Any]] = [("regopy", EmbeddedRegoEngine)]
    if missing is None:
        classes.insert(0, ("opa-inprocess", OpaInProcessEngine))
    else:
        skipped["opa-inprocess"] = missing
    for name, cls in classes:
        t = time.perf_counter()
        engines[name] = cls(data, cache=False)  # uncached: every decision is evaluated
        compile_s[name] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        engines[name].load_data(data)  # the same registry again: nothing is rebuilt
        reload_same_s[name] = round(time.perf_counter() - t, 3)

    for doc in docs[:50]:  # each agrees with the plain rules on allow/basis/fields before timing
        b = python_decide(data, doc)
        for engine in engines.values():
            a = engine.evaluate(doc)
            assert a is not None
            assert (a["allow"], a["basis"], a["fields"]) == (b["allow"], b["basis"], b["fields"])

    runs: dict[str, Any] = {"python_baseline": lambda d: python_decide(data, d)}
    runs.update({name: e.evaluate for name, e in engines.items()})
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in runs}
    answers: dict[str, list[Any]] = {k: [] for k in runs}
    for _ in range(max(1, args.rounds)):  # alternate, so a busy moment hits every engine
        for name, fn in runs.items():
            answers[name].clear()
            wall, cpu = measure(fn, docs, answers[name])
            times[name][0].extend(wall)
            times[name][1].extend(cpu)
    agree = all(answers[name] == answers["regopy"] for name in engines)
    allowed = sum(1 for a in answers["regopy"] if a["allow"])
    results = {name: summary(*times[name]) for name in runs}
    baseline = results.pop("python_baseline")
    chosen = "opa-inprocess" if missing is None else "regopy"
    print(
        json.dumps(
            {
                "benchmark": "policy",
                "members": 100,
                "services": 1000,
                "access_rights": 10000,
                "decisions": n * max(1, args.rounds),
                "allowed_share": round(allowed / n, 2),
                "uncached": True,
                "compile_s": compile_s,
                "reload_same_data_s": reload_same_s,
                "engines": results,
                "skipped": skipped,
                "python_baseline": baseline,
                "p99_ratio_vs_python": {
                    name: round(r["p99_us"] / baseline["p99_us"], 1) for name, r in results.items()
                },
                "engines_agree_on_every_decision": agree,
                "auto_chooses": chosen,
                "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                "cpus": os.cpu_count(),
                "scheduler": _scheduler(),
                "target_p99_under_1ms": {name: r["p99_us"] < 1000 for name, r in results.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
