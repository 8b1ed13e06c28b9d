"""The machine a bench ran on, in one line: CPU model, cores, the SIMD flags that pick the kernels, and any
instruction-set cap in force.

Kernels differ between CPUs (AVX2-only, AVX-512 VNNI, AVX-512 BF16, AMX), so every measurement prints this
line. The caps let one AMX machine stand in for an older one, for torch's own kernels (its vectorised ops,
oneDNN, MKL, FBGEMM); an AVX2-only CPU (no VNNI: AMD EPYC before Zen 4, Intel before Cascade Lake):

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        FBGEMM_ENABLE_INSTRUCTIONS=AVX2 python bench/encode.py ...

and AVX-512 with VNNI but no bf16 (Cascade Lake, Ice Lake): ATEN_CPU_CAPABILITY=avx512
ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI MKL_ENABLE_INSTRUCTIONS=AVX512 FBGEMM_ENABLE_INSTRUCTIONS=AVX512_E1.
ONNX Runtime and OpenVINO read the CPU's flags themselves and ignore these variables: their rows are not capped.
"""

from __future__ import annotations

import os
from pathlib import Path

SIMD = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "FBGEMM_ENABLE_INSTRUCTIONS")


def cpu_line() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in info.splitlines())}
    flags = set(fields.get("flags", "").split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    caps = [f"{k}={os.environ[k]}" for k in CAPS if os.environ.get(k)]
    line = f"CPU: {fields.get('model name', 'unknown')}, {cores} cores, flags {' '.join(f for f in SIMD if f in flags)}"
    return line + (f"; capped by {' '.join(caps)}" if caps else "")
