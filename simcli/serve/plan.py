"""How many server processes (`--workers`) and model threads each (`--threads`) `simcli serve` runs when they
are not given: a rule over the machine's cores and memory and the size of what each process loads.

One worker a core, one model thread each, as far as memory allows. A worker's request handling (HTTP
parsing, JSON, tokenising, the batcher) runs under one GIL while its model waits, so one process with every
core as model threads leaves cores idle between batches; separate processes overlap one's Python with
another's model. Measured on 2 cores with m3e-small and 32 clients (docs/serve.md): 2 workers of 1 thread
against 1 worker of 2 threads, 175 against 98.6 req/s on a Xeon with AMX, and the sweep of bench/serve.py on
an AVX2 EPYC. Every worker holds its own copy of the models and indexes, so the workers' estimated memory
must fit in MEMORY_SHARE of what the machine has available. One process drives a GPU: its batches already
fill the device, and each further process would hold another copy in GPU memory.

Only stdlib here: the parent process of `--workers` never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The workers' estimated memory may take this share of the available memory; the rest stays for the page
#: cache, other processes, and what a worker grows into (a generator's head loaded on the first /generate).
MEMORY_SHARE = 0.5
GIB = 2**30


@dataclass(frozen=True)
class Machine:
    """What the rule reads of the machine.

    Attributes:
        cores: CPUs this process may run on (its affinity, capped by a cgroup CPU quota).
        available_bytes: memory available to new processes (None: unknown, no memory cap).
        gpu: the models run on a GPU.
    """

    cores: int
    available_bytes: int | None
    gpu: bool = False


@dataclass(frozen=True)
class Plan:
    """The processes and threads chosen, and why (one line for the startup message)."""

    workers: int
    threads: int
    reason: str

    def describe(self) -> str:
        w = f"{self.workers} worker{'s' if self.workers != 1 else ''}"
        t = f"{self.threads} model thread{'s' if self.threads != 1 else ''}"
        return f"{w} x {t}: {self.reason}"


def memory_cap(machine: Machine, worker_bytes: int) -> int | None:
    """Workers whose estimated memory fits MEMORY_SHARE of the available memory (at least 1; None: unknown)."""
    if machine.available_bytes is None:
        return None
    return max(1, int(MEMORY_SHARE * machine.available_bytes // max(1, worker_bytes)))


def choose_plan(
    machine: Machine, worker_bytes: int, *, workers: int | None = None, threads: int | None = None
) -> Plan:
    """Workers and model threads each: the given ones kept as they are, the others chosen (module docstring).

    Args:
        machine: cores, available memory, GPU or not.
        worker_bytes: the estimated memory of one worker (simcli.serve.footprint).
        workers: --workers, when given.
        threads: --threads, when given.
    """
    cores = max(1, machine.cores)
    if workers is not None and threads is not None:
        return Plan(workers, threads, "--workers and --threads as given")
    if workers is not None:
        return Plan(workers, max(1, cores // workers), f"--workers {workers} given; {_cores(cores)} shared")
    if machine.gpu:
        return Plan(
            1,
            threads or cores,
            "one process drives the GPU (its batches fill it; a second would copy the models)",
        )
    per_worker = threads or 1
    by_cores = max(1, cores // per_worker)
    avail, cap = machine.available_bytes, memory_cap(machine, worker_bytes)
    given = f"--threads {threads} given: " if threads is not None else ""
    if avail is not None and cap is not None and cap < by_cores:
        room = (
            f"{MEMORY_SHARE:.0%} of the {avail / GIB:.1f} GiB available holds only {cap} "
            f"worker{'s' if cap != 1 else ''} of ~{worker_bytes / GIB:.1f} GiB"
        )
        shared = f"; {_cores(cores)} shared" if threads is None else ""
        return Plan(cap, threads or max(1, cores // cap), f"{given}{room}{shared}")
    each = "one worker a core" if per_worker == 1 else f"one worker per {per_worker} cores"
    memory = "available memory unknown"
    if avail is not None:
        memory = (
            f"~{worker_bytes / GIB:.1f} GiB a worker, {MEMORY_SHARE:.0%} of the {avail / GIB:.1f} GiB "
            f"available holds {cap}"
        )
    return Plan(by_cores, per_worker, f"{given}{each} ({_cores(cores)}; {memory})")


def _cores(n: int) -> str:
    return f"{n} core{'s' if n != 1 else ''}"
