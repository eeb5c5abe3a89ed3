"""Every benchmark docs/performance.md shows runs, here with its smallest parameters.

A benchmark is evidence for a figure in the docs; one that no longer runs is a claim nobody can
check. Each script runs as its own process (as the docs show it: ``python benchmarks/<name>.py``)
on the database of this test run (``DATABASE_URL`` passed through, as the docs' PostgreSQL
commands set it) and must end with one JSON object on its last line, naming the benchmark. The
figures themselves are not judged here (never timed tests: the machine is shared).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"

# The smallest run each script offers: its --quick mode, or tiny explicit parameters.
SMALLEST: dict[str, list[str]] = {
    "adapters.py": ["--quick"],
    "alerts.py": ["--entries", "60", "--rounds", "1"],
    "audit.py": ["--quick"],
    "changes.py": ["--quick"],
    "completeness.py": ["--quick"],
    "consent.py": ["--quick"],
    "events.py": ["--quick"],
    "exchange.py": ["--quick"],
    "policy.py": ["--quick"],
    "portal.py": ["--quick"],
    "procedure.py": ["--quick"],
    "soak.py": ["--minutes", "0.1", "--probe-seconds", "1", "--sample-seconds", "2"],
    "translator.py": ["--quick"],
}


def test_every_benchmark_has_a_smallest_run_here() -> None:
    scripts = {p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(SMALLEST)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_the_benchmark_runs_and_ends_with_one_json_object(script: str, tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *SMALLEST[script]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines, f"{script} printed nothing on stdout; stderr: {done.stderr[-3000:]}"
    last = lines[-1]
    result = json.loads(last)
    assert isinstance(result, dict)
    assert result.get("benchmark") == script.removesuffix(".py"), last[:300]
