"""A real uvicorn server on 127.0.0.1 in a thread, for the browser tests (not a test module)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

MAX_START_S = 10.0
MAX_STOP_S = 10.0


@contextmanager
def serve(app: Any, *, loop: asyncio.AbstractEventLoop | None = None) -> Iterator[str]:
    """Serve ``app`` on an ephemeral loopback port; yields its base URL; stops it afterwards.

    With ``loop`` (an event loop running in another thread) the server runs on that loop, next
    to whatever else lives there; otherwise in a thread of its own."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    if loop is None:
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        alive = thread.is_alive

        def stop() -> None:
            thread.join(MAX_STOP_S)

    else:
        task = asyncio.run_coroutine_threadsafe(server.serve(sockets=[sock]), loop)

        def alive() -> bool:
            return not task.done()

        def stop() -> None:
            task.result(timeout=MAX_STOP_S)

    deadline = time.monotonic() + MAX_START_S
    while not server.started:
        if time.monotonic() > deadline or not alive():
            raise RuntimeError("the portal server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        stop()
        sock.close()
