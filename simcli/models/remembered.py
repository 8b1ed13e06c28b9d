"""Results that are costly to compute at every start, remembered between runs in a folder of the model cache.

A cold `simcli encode` of m3e-small takes about 2.8 s, and three things in it give the same answer at every start
on the same machine: the SHA-256 of the weights (a full read of the file, simcli/models/digest.py), the accuracy
check of `--dtype auto` (the calibration sentences in float32 and in the fast dtype, about 0.16 s) and its speed
probe (about 0.08 s). Each is kept under a key that names everything its answer depends on; a different key is a
new computation. Where the folder cannot be read or written, the answer is simply computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from simcli.io import atomic_write_json


def _entry(folder: Path, key: Any) -> Path:
    text = json.dumps(key, sort_keys=True, ensure_ascii=False)
    return folder / (hashlib.sha256(text.encode()).hexdigest()[:32] + ".json")


def recall(folder: Path, key: Any) -> Any | None:
    """The value remembered under `key` in `folder`, or None (never remembered, or unreadable)."""
    try:
        saved = json.loads(_entry(folder, key).read_text(encoding="utf-8"))
        if saved["key"] == json.loads(json.dumps(key)):  # the same key, as JSON gives it back
            return saved["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def remember(folder: Path, key: Any, value: Any) -> None:
    """Keep `value` under `key` (JSON-serialisable both); a folder that cannot be written is no error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(_entry(folder, key), {"key": key, "value": value})
    except OSError:
        pass  # a read-only cache costs a recomputation next time, nothing else


#: A folder shared by the processes of one run on one machine (`simcli serve --workers N` sets it for its workers,
#: `encode --ray` for its actors on the driver's machine): what one of them computes there with `once_per_run` is
#: what all of them get, so that they choose the same dtype.
RUN_FOLDER_ENV = "SIMCLI_RUN_MEASURED"


def once_per_run(key: Any, compute: Callable[[], Any]) -> Any:
    """`compute()`; under RUN_FOLDER_ENV, the value that the first process of the run computed for `key` (the
    others wait for it and read it). A speed probe near a threshold reads one side or the other from start to
    start, and two workers of one server (or two actors of one store) must not compute in two dtypes."""
    run = os.environ.get(RUN_FOLDER_ENV)
    if not run:
        return compute()
    folder = Path(run)
    with _exclusive(folder):
        value = recall(folder, key)
        if value is None:
            value = compute()
            remember(folder, key, value)
    return value


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold a lock on `folder` that one process of the machine at a time can hold (POSIX `flock`; where there
    is none, or the folder is gone, no lock: each process then computes its own value, as without a run)."""
    try:
        import fcntl

        lock = open(folder / ".lock", "a")  # noqa: SIM115 (held across the yield)
    except (ImportError, OSError):
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# Variables that change which kernels torch, oneDNN, MKL and FBGEMM run (they cap the instruction set): a
# measurement made under one setting says nothing about another.
KERNEL_VARIABLES = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
    "FBGEMM_ENABLE_INSTRUCTIONS",
)


@lru_cache(maxsize=1)
def machine_key() -> dict[str, Any]:
    """What kernels a measurement ran on: the CPU's model and flags, torch's version and build, the variables
    that cap the instruction set. Another machine, a torch upgrade or a cap gives another key."""
    import platform

    import torch

    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and not model:
                model = value.strip()
            elif name.strip() == "flags" and not flags:
                flags = " ".join(sorted(value.split()))
    except OSError:
        model = platform.processor()
    return {
        "cpu": model,
        "flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "machine": platform.machine(),
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "caps": {v: os.environ[v] for v in KERNEL_VARIABLES if v in os.environ},
    }
