"""Choosing the device and the compute dtype."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from simcli.errors import UsageError

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` is the first CUDA device when one is usable, else the CPU; `cuda[:N]` must exist."""
    if name == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {name}: CUDA is not available here (torch {torch.__version__}); use cpu or auto"
            )
        dev = torch.device("cuda:0" if name == "cuda" else name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise UsageError(f"--device {name!r} is not auto, cpu, cuda or cuda:N")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_amx() -> bool:
    """AMX tiles make bf16 matrix products several times faster than fp32 (Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags()


def cpu_has_bf16() -> bool:
    """Native bf16 dot products (AVX512-BF16 or AMX); without them bf16 is emulated and slow."""
    return cpu_has_amx() or "avx512_bf16" in cpu_flags()


def dtype_candidates(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype to try and why. For `auto` on CPU the caller still checks accuracy against float32.

    Returns:
        (dtype, reason) where reason is a short phrase for the user.
    """
    if name != "auto":
        if name not in DTYPE_NAMES:
            raise UsageError(f"--dtype {name!r} is not one of auto, {', '.join(DTYPE_NAMES)}")
        if name == "float16" and device.type == "cpu":
            # fp16 matmuls on CPU are emulated on most parts; allowed because asked for.
            return torch.float16, "asked for (slow on most CPUs)"
        return DTYPE_NAMES[name], "asked for"
    if device.type == "cuda":
        return torch.float16, "auto: float16 on CUDA"
    if cpu_has_amx():
        return torch.bfloat16, "auto: CPU has AMX bf16"
    return torch.float32, "auto: CPU has no AMX (bf16 is no faster than float32 without it)"
