"""What `simcli serve` reads of the machine to choose its workers: cores, available memory, a GPU.

A container sees the host's CPUs and memory in /proc; its cgroup (v2 or v1) says what it may use, so both are
read and the smaller taken. Only stdlib: the parent of `--workers` processes never imports torch.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from simcli.serve.plan import Machine

PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")
# device nodes of a GPU driver torch can use (NVIDIA; ROCm's kfd; WSL's dxg): without one, CUDA cannot be there
GPU_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def this_machine(device: str) -> Machine:
    """The machine as the serve rule sees it, for `--device device`."""
    return Machine(cores=cores(), available_bytes=available_bytes(), gpu=uses_gpu(device))


def cores(cgroup: Path = CGROUP) -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup CPU quota (rounded up)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    quota = _cpu_quota(cgroup)
    return max(1, min(n, math.ceil(quota))) if quota is not None else max(1, n)


def _cpu_quota(cgroup: Path) -> float | None:
    v2 = _read(cgroup / "cpu.max").split()  # "max 100000" or "200000 100000"
    if len(v2) == 2 and v2[0] != "max":
        return int(v2[0]) / int(v2[1])
    quota, period = _read(cgroup / "cpu" / "cpu.cfs_quota_us"), _read(cgroup / "cpu" / "cpu.cfs_period_us")
    if quota and period and int(quota) > 0:
        return int(quota) / int(period)
    return None


def available_bytes(proc: Path = PROC, cgroup: Path = CGROUP) -> int | None:
    """MemAvailable, or the room left under the cgroup's memory limit when that is smaller; None: unknown."""
    found = None
    for line in _read(proc / "meminfo").splitlines():
        if line.startswith("MemAvailable:"):
            found = int(line.split()[1]) * 1024  # kB
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),  # v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),  # v1 (no limit: a huge number)
    ):
        limit, usage = _read(cgroup / limit_file), _read(cgroup / usage_file)
        if limit.isdigit() and usage.isdigit():
            room = max(0, int(limit) - int(usage))
            found = room if found is None else min(found, room)
            break
    return found


def uses_gpu(device: str) -> bool:
    """True where `--device device` runs the models on a GPU. For `auto`, torch is asked in a subprocess, and
    only on a machine with a GPU driver's device node (the parent process keeps torch out of its memory)."""
    if device != "auto":
        return device.startswith("cuda")
    if not any(os.path.exists(node) for node in GPU_NODES):
        return False
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() == "True"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return ""
