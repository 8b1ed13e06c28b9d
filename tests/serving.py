"""Start the real server (uvicorn, in a thread of the test process) on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from simcli.serve.options import ServeOptions


@dataclass
class Running:
    url: str
    app: Any
    server: Any

    @property
    def service(self) -> Any:
        return self.app.state.service


@contextmanager
def running_server(options: ServeOptions) -> Iterator[Running]:
    """The app of `options` served by uvicorn on a socket bound here (no port race); stopped on exit."""
    import torch
    import uvicorn

    from simcli.serve.server import GracefulServer, build_app

    threads = torch.get_num_threads()  # the server sizes torch's pool for itself: give it back afterwards
    app, _ = build_app(options, lambda _: None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = GracefulServer(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    try:
        yield Running(url, app, server)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        torch.set_num_threads(threads)


def wait_ready(url: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(f"{url}/health", timeout=5)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout} s")
        time.sleep(0.05)
