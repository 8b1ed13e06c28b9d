"""`--ray local|auto|ADDRESS`: start or join a Ray runtime, or say in one line how to install Ray.

local    a Ray runtime on this machine alone, with its CPUs (no cluster needed)
auto     the running cluster this machine belongs to (`ray start`, KubeRay, RAY_ADDRESS), else local
ADDRESS  a cluster's address: host:port of its head, or ray://host:10001 for Ray Client
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from simcli.errors import SimcliError, UsageError

INSTALL = "pip install -e '.[ray]'"


def import_ray() -> Any:
    """The ray module, or a one-line SimcliError saying how to install it."""
    try:
        import ray
        import ray.data  # the encode pipeline needs Ray Data (ray[data])
    except ImportError:
        raise SimcliError(f"--ray needs Ray: {INSTALL}") from None
    return ray


def _quiet(ray: Any) -> None:
    """Ray's and Ray Data's console logs (operator progress, token and actor-argument notices) would bury
    simcli's own progress and summary lines: only their errors reach the console (their log files keep
    everything, under /tmp/ray/session_latest/logs). RAY_BACKEND_LOG_LEVEL set by the user wins."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.ERROR)


# Ray's C++ logger announces the RAY_BACKEND_LOG_LEVEL it read on stderr at INFO, before that level applies.
_LEVEL_BANNER = "Set ray log level from environment variable RAY_BACKEND_LOG_LEVEL"


@contextmanager
def _without_level_banner() -> Iterator[None]:
    """Hold this process's stderr (file descriptor 2, where Ray's C++ logger writes) while Ray starts, and
    pass on every line but Ray's announcement of its log level."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to hold (a closed stderr): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if _LEVEL_BANNER not in line))
            sys.stderr.flush()


def connect(address: str) -> Any:
    """Start or join the Ray runtime `address` names (local | auto | an address); returns the ray module.

    A runtime this process already started or joined is reused (the tests share one).
    """
    ray = import_ray()
    _quiet(ray)
    if not address:
        raise UsageError("--ray takes local, auto or a cluster address")
    if not ray.is_initialized():
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        options["include_dashboard"] = False
        try:
            with _without_level_banner():
                if address == "local":
                    ray.init(num_cpus=os.cpu_count() or 1, **options)
                elif address == "auto":
                    try:
                        ray.init(address="auto", **options)
                    except ConnectionError:
                        ray.init(num_cpus=os.cpu_count() or 1, **options)
                else:
                    ray.init(address=address, **options)
        except (ConnectionError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SimcliError(f"--ray {address}: cannot reach a Ray cluster ({first})") from None
    return ray


def cluster_cpus(ray: Any) -> int:
    """CPUs the runtime has in all (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
