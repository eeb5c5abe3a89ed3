"""A small server that speaks the part of OPA's REST API that ``opa-python-client`` uses.

No ``opa`` binary can be had on these machines (docs/notes/policy-engines.md), so the
OPA-server engine is contract-tested against this: ``PUT/GET/DELETE /v1/policies/{id}``,
``PUT/GET/DELETE /v1/data/{path}``, ``POST /v1/data/{path}`` (evaluate with input) and
``GET /health``. Every answer is computed over the uploaded modules and data — never canned — by
the evaluator it is started with: rego-cpp (``evaluator="regopy"``, the default) or OPA's own Go
evaluator in-process (``evaluator="opa"``, where ``opa-golib-python-bindings`` loads). With the
latter, the REST path answers with OPA's semantics; it still proves the client path (URLs, bodies,
undefined handling, timeouts), not OPA's HTTP server itself — the ``OPA_URL`` test does that where
a real OPA exists.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol

from policies._internal.opa import OpaFailure, PreparedQuery
from policies._internal.rego import CompiledQuery, RegoFailure

MAX_BODY_BYTES = 8 * 1024 * 1024
REQUEST_TIMEOUT_S = 5.0


Evaluator = Literal["regopy", "opa"]
_FAILURES = (RegoFailure, OpaFailure)


class _Query(Protocol):
    def evaluate(self, input_doc: Any) -> tuple[bool, Any]: ...


def _compile(
    evaluator: Evaluator, modules: Mapping[str, str], data: Any, path: list[str]
) -> _Query:
    """The document at ``data.<path>``, compiled by ``evaluator``; raises one of ``_FAILURES``."""
    if evaluator == "opa":
        assert all("." not in p for p in path), "a dotted path segment is not addressable here"
        return PreparedQuery(modules, data, ".".join(path))
    ref = "data" + "".join(f"[{json.dumps(p)}]" for p in path)
    return CompiledQuery(modules, data, f"x := {ref}")


class _State:
    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator: Evaluator = evaluator
        self.lock = threading.Lock()
        self.modules: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.compiled: dict[str, _Query] = {}

    def query(self, path: list[str]) -> _Query:
        key = json.dumps(path)
        with self.lock:
            if key not in self.compiled:
                self.compiled[key] = _compile(
                    self.evaluator,
                    {f"{k}.rego": v for k, v in self.modules.items()},
                    self.data,
                    path,
                )
            return self.compiled[key]


class _Handler(BaseHTTPRequestHandler):
    server: OpaRestServer
    timeout = REQUEST_TIMEOUT_S
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: Any = None) -> None:
        raw = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ValueError("body too large")
        return self.rfile.read(length)

    def _route(self) -> tuple[str, list[str]]:
        path = self.path.split("?", 1)[0].strip("/").split("/")
        if path[:2] == ["v1", "policies"]:
            return "policies", path[2:]
        if path[:2] == ["v1", "data"]:
            return "data", [p for p in path[2:] if p]
        return path[0], []

    def do_GET(self) -> None:
        kind, rest = self._route()
        state = self.server.state
        if kind == "health":
            self._send(200, {})
        elif kind == "policies" and rest:
            pid = "/".join(rest)
            if pid in state.modules:
                self._send(200, {"result": {"id": pid, "raw": state.modules[pid]}})
            else:
                self._send(404, {"code": "resource_not_found", "message": pid})
        elif kind == "data":
            self._evaluate(rest, None)
        else:
            self._send(404, {"code": "resource_not_found", "message": self.path})

    def do_POST(self) -> None:
        kind, rest = self._route()
        if kind != "data":
            self._send(404, {"code": "resource_not_found", "message": self.path})
            return
        try:
            body = json.loads(self._body() or b"{}")
        except ValueError:
            self._send(400, {"code": "invalid_parameter", "message": "body is not JSON"})
            return
        self._evaluate(rest, body.get("input"))

    def do_PUT(self) -> None:
        kind, rest = self._route()
        state = self.server.state
        raw = self._body()
        if kind == "policies" and rest:
            pid = "/".join(rest)
            modules = {**state.modules, pid: raw.decode()}
            try:
                # Compiles every module (a document no module defines: nothing is evaluated).
                _compile(
                    state.evaluator,
                    {f"{k}.rego": v for k, v in modules.items()},
                    state.data,
                    ["onceonly_rest_server_probe"],
                )
            except _FAILURES as exc:
                self._send(400, {"code": "invalid_parameter", "message": str(exc)[:500]})
                return
            with state.lock:
                state.modules, state.compiled = modules, {}
            self._send(200, {})
        elif kind == "data" and rest:
            try:
                value = json.loads(raw)
            except ValueError:
                self._send(400, {"code": "invalid_parameter", "message": "body is not JSON"})
                return
            with state.lock:
                node = state.data
                for part in rest[:-1]:
                    node = node.setdefault(part, {})
                node[rest[-1]] = value
                state.compiled = {}
            self._send(204)
        else:
            self._send(404, {"code": "resource_not_found", "message": self.path})

    def _evaluate(self, path: list[str], input_doc: Any) -> None:
        try:
            defined, value = self.server.state.query(path).evaluate(input_doc)
        except _FAILURES as exc:
            self._send(500, {"code": "internal_error", "message": str(exc)[:500]})
            return
        self._send(200, {"result": value} if defined else {})


class OpaRestServer(ThreadingHTTPServer):
    """Listens on ``address`` (127.0.0.1, an ephemeral port); ``url`` names it. Use as a context
    manager, or run this file as OPA's server command (``main``)."""

    daemon_threads = True
    disable_nagle_algorithm = True  # else each keep-alive request waits ~44 ms (notes)

    def __init__(
        self, address: tuple[str, int] = ("127.0.0.1", 0), *, evaluator: Evaluator = "regopy"
    ) -> None:
        super().__init__(address, _Handler)
        self.state = _State(evaluator)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> OpaRestServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


def main(argv: list[str] | None = None) -> None:
    """``opa_rest_server.py run --server --addr HOST:PORT``: the part of ``opa``'s command line
    that compose.yaml's OPA service uses, so a test can run that service's command with this
    server in the place of the ``opa`` binary; serves until stopped."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="opa")
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--server", action="store_true", required=True)
    parser.add_argument("--addr", default="127.0.0.1:8181")
    args = parser.parse_args(argv)
    host, _, port = args.addr.rpartition(":")
    server = OpaRestServer((host or "127.0.0.1", int(port)))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
