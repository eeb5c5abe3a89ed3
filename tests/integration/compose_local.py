"""compose.yaml run as local processes: no image can be pulled on these machines, so each service's
command runs here with its environment, in ``depends_on`` order, as compose would run it.

``up`` starts every service whose dependencies hold: a service without a port (``ports`` or
``expose``) is a job that must exit 0 (``service_completed_successfully``); a service with one
is a server, started, then healthy once its healthcheck's URL answers (or, without a
healthcheck, its port takes connections). What stands in for the containers (``Local``):

==========================  =====================================================================
in compose.yaml             here
==========================  =====================================================================
image ``onceonly:local``    this virtual environment: ``onceonly`` on PATH, ``python`` this one;
                            the Dockerfile's ``ENV`` lines under the service's own environment
service ``postgres``        the suite's PostgreSQL server (DATABASE_URL): the init scripts mounted
                            into ``/docker-entrypoint-initdb.d`` run against throw-away databases
                            ``<prefix>NAME`` (dropped by ``down``)
``…@postgres:5432/NAME``    that database's URL on the local server
image ``openpolicyagent/…`` ``tests/policies/opa_rest_server.py`` runs the OPA service's command
                            (``run --server --addr …``) in the place of the ``opa`` binary
``http://SERVICE:PORT``     ``http://127.0.0.1:P``, P a free loopback port of that service; in the
                            service's own command and environment ``PORT`` is P and ``0.0.0.0``
                            is ``127.0.0.1``
a named volume (subpath)    a folder ``volumes/NAME[/SUBPATH]`` under the test's temporary folder
a bind mount ``./PATH``     the repository's PATH, as it is
``${NAME…}``, ``$$``        compose's interpolation, from the ``.env`` the test made
==========================  =====================================================================
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from sqlalchemy.engine import URL, make_url

from exchange.db import normalise_url
from tests.integration.processes import STOP_TIMEOUT_S, free_port

ROOT = Path(__file__).resolve().parents[2]
OPA_STAND_IN = ROOT / "tests" / "policies" / "opa_rest_server.py"
INITDB = "/docker-entrypoint-initdb.d"
UP_TIMEOUT_S = 240.0
_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_]\w*)(?P<how>:?[-?])?(?P<arg>[^}]*)\}|\$(?P<bare>[A-Za-z_]\w*)"
)
_DSN = re.compile(r"postgresql://[^@/\s]+@postgres:5432/(?P<name>\w+)")
_URL = re.compile(r"https?://[^'\"\s]+")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ``${NAME}``, ``${NAME:-default}``, ``${NAME:?error}``, ``$NAME``
    and ``$$`` (a ``$`` for the shell). An unset variable fails here (compose would only warn)."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        if env.get(name):
            return env[name]
        if m.group("how") in (":-", "-"):
            return m.group("arg")
        raise KeyError(f"compose.yaml uses ${name}, which is not set")

    return _VARIABLE.sub(one, value)


def image_env(dockerfile: Path = ROOT / "Dockerfile") -> dict[str, str]:
    """The ``ENV`` instructions of the Dockerfile (what every onceonly container starts with)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            out |= dict(word.split("=", 1) for word in shlex.split(line[4:]))
    return out


@dataclass
class Local:
    """What this machine uses in the place of each part of compose.yaml (module docstring)."""

    compose: dict[str, Any]
    tmp: Path
    pg_admin: URL
    env_file: dict[str, str]
    prefix: str = field(default_factory=lambda: f"oo_compose_{uuid.uuid4().hex[:8]}_")
    ports: dict[str, int] = field(default_factory=dict)
    """The container port of each server."""
    local_ports: dict[str, int] = field(default_factory=dict)
    databases: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, service in self.services.items():
            declared = [str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])]
            declared += [str(p) for p in service.get("expose", [])]
            if declared:
                self.ports[name] = int(declared[0])
                self.local_ports[name] = free_port()

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        services: dict[str, dict[str, Any]] = self.compose["services"]
        return services

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.local_ports[service]}"

    def database(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def dsn(self, name: str) -> str:
        """The URL of the database made for ``NAME`` (as compose.yaml writes them:
        ``postgresql://``, the driver left to the component)."""
        url = self.pg_admin.set(drivername="postgresql", database=self.database(name))
        return url.render_as_string(hide_password=False)

    def volume(self, source: str, subpath: str | None = None) -> Path:
        path = self.tmp / "volumes" / source / (subpath or "")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def mounts(self, service: str) -> dict[str, Path]:
        """Each mount target of the service → the local path standing in for it."""
        out: dict[str, Path] = {}
        for mount in self.services[service].get("volumes", []):
            if isinstance(mount, str):
                source, target = mount.split(":")[:2]
                subpath = None
            else:
                source, target = mount["source"], mount["target"]
                subpath = mount.get("volume", {}).get("subpath")
            bind = source.startswith((".", "/"))
            out[target] = (ROOT / source).resolve() if bind else self.volume(source, subpath)
        return out

    def translate(self, service: str, text: str, *, whole: bool = False) -> str:
        """One command word or environment value of ``service``, as it is meant here."""
        text = interpolate(text, self.env_file)
        text = _DSN.sub(lambda m: self.dsn(m.group("name")), text)
        for name, port in self.ports.items():
            text = text.replace(f"http://{name}:{port}", self.url(name))
        if service in self.ports:
            own, local = str(self.ports[service]), str(self.local_ports[service])
            if whole and text == own:
                return local
            text = re.sub(rf"(0\.0\.0\.0|127\.0\.0\.1):{own}\b", f"127.0.0.1:{local}", text)
            text = "127.0.0.1" if text == "0.0.0.0" else text
        for target, path in sorted(self.mounts(service).items(), key=lambda m: -len(m[0])):
            text = re.sub(rf"(?<![\w./-]){re.escape(target)}(?![\w.-])", str(path), text)
        return text

    def environment(self, service: str) -> dict[str, str]:
        spec = self.services[service]
        given = {**(image_env() if "onceonly" in spec.get("image", "") else {})}
        given |= {k: "" if v is None else str(v) for k, v in spec.get("environment", {}).items()}
        env = {k: self.translate(service, v, whole=True) for k, v in given.items()}
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {"PATH": path, "LANG": "C.UTF-8", "HOME": str(self.tmp / "home"), **env}

    def argv(self, service: str) -> list[str]:
        spec = self.services[service]
        words = [*spec.get("entrypoint", []), *spec.get("command", [])]
        words = [self.translate(service, str(w), whole=True) for w in words]
        if spec.get("image", "").startswith("openpolicyagent/opa"):
            return [sys.executable, str(OPA_STAND_IN), *words]
        if "entrypoint" not in spec:  # the onceonly image's ENTRYPOINT
            words = ["onceonly", *words]
        return [sys.executable if words[0] == "python" else words[0], *words[1:]]

    def health(self, service: str) -> Callable[[], bool]:
        test = [
            self.translate(service, str(w))
            for w in self.services[service].get("healthcheck", {}).get("test", [])
        ]
        urls = [u for word in test for u in _URL.findall(word)]
        if urls:
            return lambda: _answers(urls[0])
        port = self.local_ports[service]
        return lambda: _listens(port)

    def initialise_postgres(self, service: str) -> None:
        """The PostgreSQL image's first start: the mounted init scripts, on throw-away
        databases of the local server (``CREATE DATABASE`` and ``\\connect`` name ours). The
        scripts are SQL statements, each ending a line with ``;``, and ``\\connect`` lines;
        ``--`` starts a comment wherever it is (the scripts keep it out of their strings)."""
        for target, path in self.mounts(service).items():
            if target.startswith(INITDB + "/"):
                self._run_sql(path.read_text(encoding="utf-8"))

    def _run_sql(self, script: str) -> None:
        admin = self.pg_admin.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = psycopg.connect(admin, autocommit=True)
        try:
            pending = ""
            for line in re.sub(r"--[^\n]*", "", script).splitlines():
                if line.startswith("\\connect "):
                    conn.close()
                    conn = psycopg.connect(self.dsn(line.split()[1]), autocommit=True)
                    continue
                pending += line + "\n"
                if not line.rstrip().endswith(";"):
                    continue
                created = re.fullmatch(r"\s*CREATE DATABASE (\w+);\s*", pending)
                if created:
                    self.databases.append(self.database(created.group(1)))
                    conn.execute(f'CREATE DATABASE "{self.database(created.group(1))}"')
                else:
                    conn.execute(pending)
                pending = ""
        finally:
            conn.close()

    def drop_databases(self) -> None:
        admin = self.pg_admin.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in self.databases:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (a loopback http URL)
            return bool(200 <= r.status < 300)
    except OSError:
        return False


def _listens(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Running:
    local: Local
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    state: dict[str, str] = field(default_factory=dict)
    """``started``, ``healthy`` or ``completed`` per service."""
    timeline: list[str] = field(default_factory=list)
    """``+SECONDS SERVICE STATE``, in order (for the failure messages)."""
    t0: float = field(default_factory=time.monotonic)

    def reach(self, service: str, state: str) -> None:
        self.state[service] = state
        self.timeline.append(f"+{time.monotonic() - self.t0:.1f}s {service} {state}")

    def log(self, service: str) -> str:
        path = self.local.tmp / "logs" / f"{service}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start(self, service: str) -> None:
        local = self.local
        if local.services[service].get("image", "").startswith("postgres:"):
            local.initialise_postgres(service)
            self.reach(service, "healthy")
            return
        (local.tmp / "logs").mkdir(exist_ok=True)
        workdir = local.tmp / "app"
        workdir.mkdir(exist_ok=True)
        with (local.tmp / "logs" / f"{service}.log").open("wb") as out:
            self.procs[service] = subprocess.Popen(
                local.argv(service),
                env=local.environment(service),
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a job's children (its shell's commands) stop with it
            )
        self.reach(service, "started")

    def ready(self, service: str, condition: str) -> bool:
        wanted = {
            "service_started": {"started", "healthy", "completed"},
            "service_healthy": {"healthy"},
            "service_completed_successfully": {"completed"},
        }[condition]
        return self.state.get(service) in wanted

    def poll(self, service: str, checks: dict[str, Callable[[], bool]]) -> None:
        proc = self.procs.get(service)
        if proc is None or self.state[service] == "completed":
            return
        code = proc.poll()
        if service not in self.local.ports:  # a job
            if code is not None:
                assert code == 0, f"{service} exited {code}:\n{self.log(service)}"
                self.reach(service, "completed")
            return
        assert code is None, f"{service} exited {code}:\n{self.log(service)}"
        if self.state[service] == "started" and checks[service]():
            self.reach(service, "healthy")

    def down(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT_S)


@contextlib.contextmanager
def up(local: Local) -> Iterator[Running]:
    """Every service started in ``depends_on`` order and ready; stopped (and the databases
    dropped) on exit."""
    run = Running(local)
    pending = list(local.services)
    checks = {s: local.health(s) for s in local.ports}
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while pending or any(run.state[s] == "started" for s in local.ports if s in run.state):
            assert time.monotonic() < deadline, "not up in time:\n" + "\n".join(run.timeline)
            for service in list(pending):
                deps = local.services[service].get("depends_on", {})
                if all(run.ready(d, c["condition"]) for d, c in deps.items()):
                    pending.remove(service)
                    run.start(service)
            for service in list(run.procs):
                run.poll(service, checks)
            time.sleep(0.1)
        yield run
    finally:
        run.down()
        local.drop_databases()


def load(path: Path = ROOT / "compose.yaml") -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return compose


def pg_admin_url(url: str) -> URL:
    return make_url(normalise_url(url))
