"""Running the app under uvicorn: the workers and threads plan, the startup line, graceful SIGTERM/SIGINT,
several worker processes (their /metrics summed through prometheus_client's multiprocess mode)."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from simcli.errors import SimcliError
from simcli.models.remembered import RUN_FOLDER_ENV
from simcli.serve.options import MULTIPROC_ENV, ServeOptions
from simcli.serve.plan import Plan, choose_plan
from simcli.serve.registry import check_servable

OPTIONS_ENV = "SIMCLI_SERVE_OPTIONS"  # how `--workers N` hands the options to each worker process
FAILED_ENV = "SIMCLI_SERVE_FAILED"  # where a worker that cannot load leaves its error for the parent


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


def _describe(app: Any, registry: Any) -> str:
    """What a worker serves, how (device, dtype, threads) and its batches' token budget."""
    return f"{registry.describe()}; {app.state.service.batcher.describe_budget(registry.encoders)}"


def planned(options: ServeOptions) -> tuple[ServeOptions, Plan]:
    """`options` with its workers and threads chosen from the machine where they are not given, and the plan
    (simcli.serve.plan); given ones are kept as they are."""
    from simcli.serve.footprint import UNKNOWN_MODEL_BYTES, worker_footprint
    from simcli.serve.machine import this_machine

    footprint = worker_footprint(options)
    machine = this_machine(options.encoder.device)
    plan = choose_plan(machine, footprint.bytes, workers=options.workers, threads=options.threads)
    if footprint.unknown and options.workers is None:
        size = f"{UNKNOWN_MODEL_BYTES / 2**30:.1f} GiB"
        unknown = ", ".join(footprint.unknown)
        plan = replace(plan, reason=f"{plan.reason}; not on disk yet, counted as {size}: {unknown}")
    return replace(options, workers=plan.workers, threads=plan.threads), plan


def serve(options: ServeOptions, note: Callable[[str], None]) -> None:
    """Choose the workers and threads (and say so), load everything, then serve until SIGTERM/SIGINT (returns
    normally after a graceful shutdown)."""
    check_servable(options)  # the usage errors that need nothing loaded, before any worker starts
    options, plan = planned(options)
    note(plan.describe())
    if plan.workers > 1:
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
        announce=lambda: note(f"serving on {url_of(options)}; {_describe(app, registry)}"),
    )
    server.run()
    if not server.started:
        raise SystemExit(1)


def _serve_workers(options: ServeOptions) -> None:
    # Each worker process loads its own copy of the models and has its own batcher (uvicorn's supervisor
    # forwards the signals). The options travel in the environment; the workers' metrics meet in a folder of
    # this run (prometheus_client wants it empty at start); a worker that cannot load writes its error into
    # the same run folder and stops the supervisor, which would otherwise restart it forever. `--dtype auto`'s
    # speed probes are read once for all the workers (in the run folder's "measured"), so they serve one dtype.
    with tempfile.TemporaryDirectory(prefix="simcli-serve-") as run:
        shared, failed, measured = Path(run) / "metrics", Path(run) / "failed", Path(run) / "measured"
        shared.mkdir()
        measured.mkdir()
        os.environ[OPTIONS_ENV] = json.dumps(options.to_dict())
        os.environ[MULTIPROC_ENV] = str(shared)
        os.environ[FAILED_ENV] = str(failed)
        os.environ[RUN_FOLDER_ENV] = str(measured)
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
        if failed.exists():
            raise _worker_error(failed.read_text(encoding="utf-8"))


def app_from_env() -> Any:
    """The app of one `--workers` process, from the options in SIMCLI_SERVE_OPTIONS."""
    options = ServeOptions(**json.loads(os.environ[OPTIONS_ENV]))
    try:
        app, registry = build_app(options, lambda m: print(f"simcli: {m}", file=sys.stderr))
    except Exception as e:
        _stop_supervisor(e)
        raise
    print(
        f"simcli: worker {os.getpid()} serving on {url_of(options)}; {_describe(app, registry)}",
        file=sys.stderr,
    )
    return app


def _stop_supervisor(e: Exception) -> None:
    """Hand the error to the parent (the first failing worker's only) and ask it to stop every worker."""
    try:
        with open(os.environ[FAILED_ENV], "x", encoding="utf-8") as f:
            f.write(f"{type(e).__name__}\n{e}")
    except FileExistsError:
        pass
    os.kill(os.getppid(), signal.SIGTERM)


def _worker_error(text: str) -> SimcliError:
    """The error a worker wrote, as its own class where it is simcli's (so the exit code is the same as with
    one process)."""
    from simcli import errors

    name, _, message = text.partition("\n")
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, SimcliError):
        return cls(message)
    return SimcliError(f"a worker failed to start: {name}: {message}")
