"""Running the app under uvicorn: the startup line, graceful SIGTERM/SIGINT, several worker processes."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from simcli.serve.options import ServeOptions

OPTIONS_ENV = "SIMCLI_SERVE_OPTIONS"  # how `--workers N` hands the options to each worker process


class GracefulServer(uvicorn.Server):
    """uvicorn's server, but a SIGTERM/SIGINT ends with exit status 0 once in-flight requests finish
    (uvicorn re-raises the signal after its graceful shutdown, which a process manager reads as a crash)."""

    def __init__(self, config: uvicorn.Config, announce: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.announce = announce

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting
        else:
            self.should_exit = True

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.announce is not None:
            self.announce()


def url_of(options: ServeOptions) -> str:
    host = f"[{options.host}]" if ":" in options.host else options.host
    return f"http://{host}:{options.port}"


def build_app(options: ServeOptions, note: Callable[[str], None]) -> Any:
    import torch

    from simcli.serve.app import create_app
    from simcli.serve.registry import Registry

    torch.set_num_threads(options.model_threads())  # before any model runs: the pool is sized once
    registry = Registry.load(options, log=note)
    return create_app(registry, options), registry


def serve(options: ServeOptions, note: Callable[[str], None]) -> None:
    """Load everything, then serve until SIGTERM/SIGINT (returns normally after a graceful shutdown)."""
    if options.workers > 1:
        _serve_workers(options)
        return
    app, registry = build_app(options, note)
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_level="info",
        access_log=False,  # one log line per request costs throughput; /metrics counts them
        timeout_graceful_shutdown=30,
        lifespan="on",
    )
    server = GracefulServer(
        config,
        announce=lambda: note(f"serving on {url_of(options)}; {registry.describe()}"),
    )
    server.run()
    if not server.started:
        raise SystemExit(1)


def _serve_workers(options: ServeOptions) -> None:
    # Each worker process loads its own copy of the models and has its own batcher (uvicorn's supervisor
    # forwards the signals); the options travel in the environment.
    os.environ[OPTIONS_ENV] = json.dumps(options.to_dict())
    uvicorn.run(
        "simcli.serve.server:app_from_env",
        factory=True,
        host=options.host,
        port=options.port,
        workers=options.workers,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=30,
    )


def app_from_env() -> Any:
    """The app of one `--workers` process, from the options in SIMCLI_SERVE_OPTIONS."""
    options = ServeOptions(**json.loads(os.environ[OPTIONS_ENV]))
    app, registry = build_app(options, lambda m: print(f"simcli: {m}", file=sys.stderr))
    print(
        f"simcli: worker {os.getpid()} serving on {url_of(options)}; {registry.describe()}", file=sys.stderr
    )
    return app
