"""Real processes on loopback for integration tests: the central server and nodes, each a
``python -m onceonly …`` uvicorn process, started, health-checked and stopped with bounds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from exchange.identifiers import MemberId
from exchange.settings import Settings
from onceonly.federation import provision

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    args: list[str]
    env: Mapping[str, str]
    port: int
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    health: str = "/healthz"
    """The path that answers 200 once the process serves (``serve`` mounts its apps)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proc:
        with self.log.open("ab") as fh:  # the child keeps its own copy of the descriptor
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "onceonly", *self.args, "--port", str(self.port)],
                env={**os.environ, **self.env},
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                r = httpx.get(self.url + self.health, timeout=1.0)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not become healthy: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(STOP_TIMEOUT_S)


@dataclass
class Cluster:
    procs: dict[str, Proc] = field(default_factory=dict)

    def stop_all(self) -> None:
        for p in self.procs.values():
            p.stop()


def running(cluster: Cluster) -> Iterator[Cluster]:
    try:
        yield cluster
    finally:
        cluster.stop_all()


def provisioned_cluster(
    data_dir: Path,
    members: Sequence[MemberId],
    *,
    log: Path,
    database_url: str | None = None,
    citizens: int = 30,
    seed_value: int | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[Cluster, Settings, dict[str, str]]:
    """The reference instance provisioned in ``data_dir``, with a central server and one node per
    member as (not yet started) processes on free loopback ports; returns the cluster, the
    settings and the departmental systems' API keys."""
    ports = {"central": free_port(), **{str(m): free_port() for m in members}}
    central = f"http://127.0.0.1:{ports['central']}"
    settings = Settings(data_dir=data_dir, database_url=database_url, central_url=central)
    fed = provision(
        settings,
        "http://unused",
        citizens=citizens,
        **({"seed_value": seed_value} if seed_value is not None else {}),
        addresses={m: f"http://127.0.0.1:{ports[str(m)]}" for m in members},
        central_url=central,
    )
    proc_env = {
        "ONCEONLY_DATA_DIR": str(data_dir),
        "ONCEONLY_CENTRAL_URL": central,
        # The tests' citizens sign in with the development issuer unless ``env`` names another.
        "ONCEONLY_ALLOW_DEV_ISSUER": "true",
        **(env or {}),
    }
    # The processes use the cluster's database, never one the test runner's environment names
    # (an empty DATABASE_URL is SQLite in the data directory).
    proc_env["DATABASE_URL"] = database_url or ""
    cluster = Cluster()
    cluster.procs["central"] = Proc("central", ["central"], proc_env, ports["central"], log)
    for m in members:
        cluster.procs[str(m)] = Proc(
            str(m), ["node", "--member", str(m)], proc_env, ports[str(m)], log
        )
    return cluster, settings, fed.api_keys
