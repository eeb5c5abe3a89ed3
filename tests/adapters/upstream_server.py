"""A tiny departmental REST system for the HTTP adapter tests (run as a real process).

Prints its port on the first line of stdout, then serves until killed. Behaviour by path:
``/persons/{id}`` a person (404 unless the id starts with ``P``); ``/malformed/{id}`` broken JSON;
``/violation/{id}`` JSON that breaks the schema; ``/slow/{id}`` answers after ``SLOW_S``;
``/broken/{id}`` always 500; ``/flaky/{id}`` 500 twice per id, then the person;
``POST /flaky-post/{id}`` 500 once per id; ``POST /persons/{id}/address`` changes the address,
deduplicated by ``Idempotency-Key`` (400 without one); ``/hits/{path}`` how often a path was hit;
``/changes/{id}`` how many changes were applied; ``/teapot/{id}`` 418; ``/forbidden/{id}`` 403;
``/credentials/{id}`` a person whose name and address are the ``X-Api-Key`` and ``Authorization``
headers received.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_S = 2.0
STARTUP_S = 10.0
_lock = threading.Lock()
_hits: Counter[str] = Counter()
_changes: Counter[str] = Counter()
_addresses: dict[str, str] = {}
_by_key: dict[str, bytes] = {}


def _person(pid: str) -> dict[str, object]:
    return {
        "name": "町田　太郎",
        "address": _addresses.get(pid, "東京都町田市森野二丁目1番1号"),
        "birth_date": "1980-04-01",
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: object) -> None:
        self._send(status, json.dumps(value, ensure_ascii=False).encode())

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        with _lock:
            _hits[self.path] += 1
            hits = _hits[self.path]
        kind, pid = parts[0], parts[-1]
        if kind == "hits":
            self._json(200, {"hits": _hits["/" + "/".join(parts[1:])]})
        elif kind == "changes":
            self._json(200, {"changes": _changes[pid]})
        elif kind == "persons":
            if pid.startswith("P"):
                self._json(200, _person(pid))
            else:
                self._json(404, {"title": "not found"})
        elif kind == "malformed":
            self._send(200, b'{"name": "truncated')
        elif kind == "violation":
            self._json(200, {"name": 42, "address": None, "birth_date": "yesterday"})
        elif kind == "slow":
            time.sleep(SLOW_S)
            self._json(200, _person(pid))
        elif kind == "broken":
            self._json(500, {"title": "internal error", "detail": "stack trace with personal data"})
        elif kind == "flaky":
            if hits <= 2:
                self._json(503, {"title": "try again"})
            else:
                self._json(200, _person(pid))
        elif kind == "credentials":
            self._json(
                200,
                {
                    "name": self.headers.get("X-Api-Key", ""),
                    "address": self.headers.get("Authorization", ""),
                    "birth_date": "1980-04-01",
                },
            )
        elif kind == "teapot":
            self._json(418, {"title": "teapot"})
        elif kind == "forbidden":
            self._json(403, {"title": "forbidden"})
        else:
            self._json(404, {"title": "no such route"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        parts = self.path.strip("/").split("/")
        with _lock:
            _hits[self.path] += 1
            hits = _hits[self.path]
        if parts[0] == "flaky-post":
            if hits <= 1:
                self._json(500, {"title": "boom"})
            else:
                self._json(200, _person(parts[1]))
            return
        if parts[0] == "persons" and len(parts) == 3 and parts[2] == "address":
            pid = parts[1]
            key = self.headers.get("Idempotency-Key")
            if not key:
                self._json(400, {"title": "Idempotency-Key required"})
                return
            with _lock:
                if key not in _by_key:
                    _addresses[pid] = json.loads(body)["address"]
                    _changes[pid] += 1
                    _by_key[key] = json.dumps(_person(pid), ensure_ascii=False).encode()
                    first = True
                else:
                    first = False
                answer = _by_key[key]
            # The first answer is lost once: the adapter must retry (it has a key).
            if first and pid.endswith("-lossy"):
                self._json(502, {"title": "gateway hiccup"})
                return
            self._send(200, answer)
            return
        self._json(404, {"title": "no such route"})


@contextlib.contextmanager
def running() -> Iterator[str]:
    """This server as a child process on 127.0.0.1; yields its base URL, stops it on exit."""
    import httpx

    proc = subprocess.Popen(
        [sys.executable, __file__], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + STARTUP_S
        line = proc.stdout.readline()
        assert line.strip().isdigit(), "upstream did not report its port"
        url = f"http://127.0.0.1:{int(line)}"
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/hits/none", timeout=1.0)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
