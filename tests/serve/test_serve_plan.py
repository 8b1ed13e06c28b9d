"""The serve plan: workers and threads per worker as a pure function of the machine (cores, available memory,
GPU), the estimated memory of one worker and the options given; what is read of the machine (affinity,
cgroup limits, /proc/meminfo); and the estimate of a worker's memory from the files it will load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from simcli.serve import footprint, machine
from simcli.serve.footprint import BASE_BYTES, UNKNOWN_MODEL_BYTES, Footprint, worker_footprint
from simcli.serve.options import ServeOptions
from simcli.serve.plan import GIB, Machine, Plan, choose_plan, memory_cap
from tests.serve.test_serve import CORPUS, _build_index

MIB = 2**20

CASES = [
    # (cores, available, one worker, --workers, --threads, gpu) -> (workers, threads, reason)
    ((2, 18 * GIB, 512 * MIB, None, None, False),
     (2, 1, "one worker a core (2 cores; ~0.5 GiB a worker, 50% of the 18.0 GiB available holds 18)")),
    ((1, 18 * GIB, 512 * MIB, None, None, False),
     (1, 1, "one worker a core (1 core; ~0.5 GiB a worker, 50% of the 18.0 GiB available holds 18)")),
    ((8, 3 * GIB, GIB, None, None, False),
     (1, 8, "50% of the 3.0 GiB available holds only 1 worker of ~1.0 GiB; 8 cores shared")),
    ((8, 8 * GIB, 3 * GIB // 2, None, None, False),
     (2, 4, "50% of the 8.0 GiB available holds only 2 workers of ~1.5 GiB; 8 cores shared")),
    ((4, 4 * GIB, GIB, None, None, False),
     (2, 2, "50% of the 4.0 GiB available holds only 2 workers of ~1.0 GiB; 4 cores shared")),
    ((4, 4 * GIB, GIB + 1, None, None, False),  # one byte more: one worker fewer
     (1, 4, "50% of the 4.0 GiB available holds only 1 worker of ~1.0 GiB; 4 cores shared")),
    ((4, 8 * GIB, GIB, None, None, False),  # exactly four fit
     (4, 1, "one worker a core (4 cores; ~1.0 GiB a worker, 50% of the 8.0 GiB available holds 4)")),
    ((4, None, GIB, None, None, False),
     (4, 1, "one worker a core (4 cores; available memory unknown)")),
    ((8, 64 * GIB, GIB, None, 2, False),
     (4, 2, ("--threads 2 given: one worker per 2 cores (8 cores; ~1.0 GiB a worker, 50% of the 64.0 GiB "
             "available holds 32)"))),
    ((8, 4 * GIB, GIB, None, 2, False),
     (2, 2, "--threads 2 given: 50% of the 4.0 GiB available holds only 2 workers of ~1.0 GiB")),
    ((2, 64 * GIB, GIB, None, 4, False),  # more threads than cores: one worker, as asked
     (1, 4, ("--threads 4 given: one worker per 4 cores (2 cores; ~1.0 GiB a worker, 50% of the 64.0 GiB "
             "available holds 32)"))),
    ((8, 64 * GIB, GIB, 3, None, False), (3, 2, "--workers 3 given; 8 cores shared")),
    ((8, GIB, 4 * GIB, 16, None, False), (16, 1, "--workers 16 given; 8 cores shared")),  # memory: theirs
    ((8, GIB, 4 * GIB, 5, 3, False), (5, 3, "--workers and --threads as given")),
    ((8, 64 * GIB, GIB, None, None, True),
     (1, 8, "one process drives the GPU (its batches fill it; a second would copy the models)")),
    ((8, 64 * GIB, GIB, None, 2, True),
     (1, 2, "one process drives the GPU (its batches fill it; a second would copy the models)")),
    ((8, 64 * GIB, GIB, 2, None, True), (2, 4, "--workers 2 given; 8 cores shared")),
]  # fmt: skip


@pytest.mark.parametrize(("given", "want"), CASES)
def test_choose_plan(given: tuple, want: tuple) -> None:  # type: ignore[type-arg]
    cores, available, one, workers, threads, gpu = given
    plan = choose_plan(Machine(cores, available, gpu), one, workers=workers, threads=threads)
    assert plan == Plan(*want)


def test_plan_stays_within_the_cores_and_memory_unless_told() -> None:
    """Whatever the machine, a chosen plan uses at most the cores (workers x threads) and, where memory
    decides, at most MEMORY_SHARE of it; an option given is never changed."""
    for cores in (1, 2, 3, 8, 64):
        for available in (GIB // 2, 2 * GIB, 16 * GIB, 512 * GIB, None):
            for one in (300 * MIB, GIB, 5 * GIB):
                plan = choose_plan(Machine(cores, available), one)
                assert plan.workers * plan.threads <= cores
                if available is not None and plan.workers > 1:
                    assert plan.workers * one <= available / 2
                assert choose_plan(Machine(cores, available), one, threads=3).threads == 3
                assert choose_plan(Machine(cores, available), one, workers=7).workers == 7


def test_memory_cap() -> None:
    assert memory_cap(Machine(4, 10 * GIB), GIB) == 5
    assert memory_cap(Machine(4, 10 * GIB), 5 * GIB + 1) == 1
    assert memory_cap(Machine(4, 10 * GIB), 50 * GIB) == 1  # at least one: the server must run
    assert memory_cap(Machine(4, None), GIB) is None


def test_describe() -> None:
    assert Plan(2, 1, "why").describe() == "2 workers x 1 model thread: why"
    assert Plan(1, 8, "why").describe() == "1 worker x 8 model threads: why"


# -- what is read of the machine --------------------------------------------------------------------------
def test_cores_are_the_affinity_capped_by_the_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert machine.cores(tmp_path) == 8  # no cgroup files
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert machine.cores(tmp_path) == 8
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: two threads can use them
    assert machine.cores(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("4000000 100000\n")  # a quota above the affinity
    assert machine.cores(tmp_path) == 8
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")  # cgroup v1
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert machine.cores(tmp_path) == 3
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1 without a quota
    assert machine.cores(tmp_path) == 8


def test_available_memory_is_the_smaller_of_meminfo_and_the_cgroup_room(tmp_path: Path) -> None:
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    proc.mkdir()
    cgroup.mkdir()
    assert machine.available_bytes(proc, cgroup) is None
    (proc / "meminfo").write_text("MemTotal:       32000000 kB\nMemAvailable:   20000000 kB\n")
    assert machine.available_bytes(proc, cgroup) == 20_000_000 * 1024
    (cgroup / "memory.max").write_text("max\n")  # v2, no limit
    (cgroup / "memory.current").write_text("1000\n")
    assert machine.available_bytes(proc, cgroup) == 20_000_000 * 1024
    (cgroup / "memory.max").write_text(f"{4 * GIB}\n")
    (cgroup / "memory.current").write_text(f"{GIB}\n")
    assert machine.available_bytes(proc, cgroup) == 3 * GIB
    (cgroup / "memory.max").unlink()
    (cgroup / "memory").mkdir()  # v1: no limit reads as a huge number
    (cgroup / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (cgroup / "memory" / "memory.usage_in_bytes").write_text(f"{GIB}\n")
    assert machine.available_bytes(proc, cgroup) == 20_000_000 * 1024


def test_gpu_follows_the_device() -> None:
    assert machine.uses_gpu("cpu") is False
    assert machine.uses_gpu("cuda") is True and machine.uses_gpu("cuda:1") is True
    if not any(os.path.exists(n) for n in machine.GPU_NODES):
        assert machine.uses_gpu("auto") is False  # no GPU driver here: torch is not even asked


# -- a worker's memory, estimated from its files ----------------------------------------------------------
def _weights(model: Path) -> int:
    return next(f for f in model.iterdir() if f.name in footprint.WEIGHT_FILES).stat().st_size


def test_footprint_counts_each_model_once_and_each_index_file(tmp_path: Path, roformer_sim_dir: Path) -> None:
    weights = _weights(roformer_sim_dir)
    assert weights > 100_000, "premise: the weights are what the estimate adds"
    model = ServeOptions(model=str(roformer_sim_dir))
    assert worker_footprint(model) == Footprint(BASE_BYTES + weights)
    faq = _build_index(CORPUS, roformer_sim_dir, tmp_path / "faq.idx")
    index_files = sum(f.stat().st_size for f in faq.iterdir() if f.name != "manifest.json")
    assert index_files > 0
    # the index records the same model: one copy of its weights, whichever spelling names it
    both = ServeOptions(model=str(roformer_sim_dir), indexes=[f"faq={faq}"])
    assert worker_footprint(both) == Footprint(BASE_BYTES + weights + index_files)
    assert worker_footprint(ServeOptions(indexes=[str(faq), str(faq)])) == Footprint(
        BASE_BYTES + weights + 2 * index_files
    )


def test_footprint_of_what_is_not_on_disk(tmp_path: Path) -> None:
    """A hub id not downloaded (the hub cache is the test's own, offline) counts as UNKNOWN_MODEL_BYTES and is
    named; a missing index folder counts nothing (its worker will report it)."""
    options = ServeOptions(model="someone/not-downloaded", indexes=[str(tmp_path / "missing.idx")])
    assert worker_footprint(options) == Footprint(
        BASE_BYTES + UNKNOWN_MODEL_BYTES, ("someone/not-downloaded",)
    )


def test_planned_fills_in_what_is_not_given(monkeypatch: pytest.MonkeyPatch, roformer_sim_dir: Path) -> None:
    """`simcli serve`'s options after the plan: the chosen workers and threads where none were given, every
    given option (and every other setting) as it was."""
    from dataclasses import replace

    from simcli.serve.server import planned

    monkeypatch.setattr(machine, "this_machine", lambda device: Machine(8, 64 * GIB))
    base = ServeOptions(model=str(roformer_sim_dir), dtype="float32", api_key="k", batch_tokens=2048)
    for given, workers, threads in (
        ({}, 8, 1),
        ({"workers": 2}, 2, 4),
        ({"threads": 3}, 2, 3),
        ({"workers": 3, "threads": 5}, 3, 5),
    ):
        options, plan = planned(replace(base, **given))
        assert (plan.workers, plan.threads) == (workers, threads)
        assert options == replace(base, workers=workers, threads=threads)
