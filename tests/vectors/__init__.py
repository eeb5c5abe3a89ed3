"""Conformance vectors kept inside the repository, and their one loader.

Each folder's README names its source, the commit read and the licence: ``jws/`` (RFC 7515
appendix A, RFC 8037 appendix A), ``merkle/`` (transparency-dev/merkle testdata, Apache-2.0),
``checkpoint/`` (C2SP signed-note / tlog-checkpoint, golang/mod, transparency-dev/formats).
They are data: a missing file is a broken checkout and fails the test, never a skip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent


def path(*parts: str) -> Path:
    """The vector file or folder at ``tests/vectors/<parts…>``; it must exist."""
    p = ROOT.joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(f"conformance vector {p} is missing from the checkout")
    return p


def load(*parts: str) -> Any:
    """One vector file, parsed as JSON."""
    return json.loads(path(*parts).read_text(encoding="utf-8"))
