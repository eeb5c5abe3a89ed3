"""A stand-in for the Tokyo Metropolitan Government's parking-space certificate system in
compose.yaml: an existing departmental REST service that Tokyo's node reaches through the HTTP
registry declared in deploy/tokyo.toml. Not part of onceonly (standard library only).

Like any agency's system it knows people by the codes the pseudonym translator issued to its own
agency (機関別符号), never by another agency's. At start it reads its records (``PERMITS_RECORDS``,
JSON: the citizen key the agency shares with the central operator → record) and its codes file
(``PERMITS_CODES``: the ``citizen key<TAB>code`` lines of ``onceonly pseudonyms enrol``), and
answers ``GET /permits/{code}`` with that holder's certificate (404 for a code it does not know,
or a holder without one) and ``GET /healthz``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def load_permits(records: Path, codes: Path) -> dict[str, dict[str, Any]]:
    """The certificates by this agency's code."""
    by_key: dict[str, dict[str, Any]] = json.loads(records.read_text(encoding="utf-8"))
    out: dict[str, dict[str, Any]] = {}
    for line in codes.read_text(encoding="utf-8").splitlines():
        key, _, code = line.partition("\t")
        if code and key in by_key:
            out[code] = by_key[key]
    return out


class _Handler(BaseHTTPRequestHandler):
    server: PermitsServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return  # no codes in a log

    def _json(self, status: int, value: object) -> None:
        body = json.dumps(value, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if parts == ["healthz"]:
            self._json(200, {"status": "ok"})
        elif len(parts) == 2 and parts[0] == "permits" and parts[1] in self.server.permits:
            self._json(200, self.server.permits[parts[1]])
        else:
            self._json(404, {"title": "not found"})


class PermitsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], permits: dict[str, dict[str, Any]]) -> None:
        super().__init__(address, _Handler)
        self.permits = permits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8600)
    args = parser.parse_args()
    permits = load_permits(Path(os.environ["PERMITS_RECORDS"]), Path(os.environ["PERMITS_CODES"]))
    server = PermitsServer((args.host, args.port), permits)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
