"""Choosing the device and the compute dtype."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch

from simcli.errors import UsageError

#: bf16 must be clearly faster than float32 to be worth its (small, checked) accuracy cost.
BF16_MIN_SPEEDUP = 1.5
#: So must int8 (its accuracy cost is larger, and checked too); the probe is one linear layer, and the whole
#: model gains less than its matrix products (attention, LayerNorm and GELU stay float32). Measured under the
#: AVX2 caps (bench/machine.py): the FBGEMM kernel's probe 1.41-1.46x, m3e-small 1.40-1.43x float32 encoding
#: within 0.13 Spearman of float32; with VNNI the probe reads ~2x; `torch._int_mm` without VNNI read 1.2x.
INT8_MIN_SPEEDUP = 1.3

#: torch.qint8 stands for "int8": the linear layers' weights are int8, their inputs quantised on the fly.
DTYPE_NAMES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int8": torch.qint8,
}


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


# oneDNN's instruction-set names, oldest first (its "CPU dispatcher control" page; the order is partial, but
# linear from AVX512_CORE on, which is all the checks below compare).
_ONEDNN_ISAS = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16",
)


def onednn_allows(isa: str) -> bool:
    """Whether oneDNN may use `isa`: not when ONEDNN_MAX_CPU_ISA (or its old name DNNL_MAX_CPU_ISA) caps it
    lower. torch's bf16 products run in oneDNN, so under such a cap (how one machine stands in for an older
    one) bf16 is emulated however new the CPU is: the flags alone would have `--dtype auto` time a product
    that takes seconds."""
    cap = _onednn_cap()
    return cap is None or _ONEDNN_ISAS.index(cap) >= _ONEDNN_ISAS.index(isa)


def _onednn_cap() -> str | None:
    """ONEDNN_MAX_CPU_ISA (or its old name DNNL_MAX_CPU_ISA); None when unset, ALL, DEFAULT or a name
    `_ONEDNN_ISAS` does not know."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return cap if cap in _ONEDNN_ISAS else None


def cpu_has_int8_dot() -> bool:
    """VNNI (AVX512-VNNI, AVX-VNNI or AMX-INT8) that oneDNN may use: int8 products summed straight into int32.
    Without it oneDNN's int8 x int8 product (`torch._int_mm`) sums pairs of products in saturating 16-bit
    registers (`vpmaddubsw`), which loses accuracy on full 8-bit inputs (simcli/models/int8.py)."""
    flags = cpu_flags()
    if "amx_int8" in flags and onednn_allows("AVX512_CORE_AMX"):
        return True
    if "avx512_vnni" in flags and onednn_allows("AVX512_CORE_VNNI"):
        return True
    # AVX-VNNI sits beside the AVX-512 levels, not under them: a cap at AVX512_CORE turns it off too
    cap = _onednn_cap()
    return "avx_vnni" in flags and (cap is None or cap.startswith("AVX2_VNNI"))


def int8_kernel() -> str:
    """The int8 product this CPU computes without saturating (simcli/models/int8.py): `torch._int_mm` with VNNI,
    else FBGEMM's with 7-bit weights (where this torch has FBGEMM)."""
    if cpu_has_int8_dot() or "fbgemm" not in torch.backends.quantized.supported_engines:
        return "int_mm"
    return "fbgemm"


def cpu_has_amx() -> bool:
    """AMX tiles make bf16 matrix products several times faster than fp32 (Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags() and onednn_allows("AVX512_CORE_AMX")


def cpu_has_bf16() -> bool:
    """Native bf16 dot products (AVX512-BF16 or AMX) that oneDNN may use; without them bf16 is emulated and
    slow."""
    return cpu_has_amx() or ("avx512_bf16" in cpu_flags() and onednn_allows("AVX512_CORE_BF16"))


def speedup(baseline: Callable[[], object], candidate: Callable[[], object], rounds: int = 5) -> float:
    """The fastest time of `baseline` over the fastest time of `candidate`, on one thread: the load-time probes
    of `--dtype auto`.

    Both steps keep the reading steady on a shared machine. One thread: a kernel on all cores waits for its
    slowest thread, so another process on one core slows it by a factor that varies from call to call. In turn:
    one untimed call of each (the kernels pick and cache their blocking), then `rounds` timed calls of each,
    alternating, so that a burst of load slows both alike. On a 2-core AMX Xeon with another job on both cores,
    40 readings of the bf16 probe: timed on 2 threads one block after the other (as before) 0.52-34x, 3 of 40
    under the 1.5x that makes auto choose bf16 (one such reading had auto take int8 at 1,135 sentences/s over
    bf16 at 2,355); on one thread, in turn: 4.1-8.9x, none under 1.5x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        baseline()
        candidate()
        best = [float("inf"), float("inf")]
        for _ in range(rounds):
            for i, fn in enumerate((baseline, candidate)):
                start = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return best[0] / best[1]


def recorded_dtype(computed_with: list[dict[str, str]], device: str) -> str:
    """The dtype that `--dtype auto` means for more vectors of an artefact: the one its vectors were computed
    with (`computed_with` entries) on this kind of device (cpu / cuda), so that queries rank near-ties as the
    corpus was built for and a resumed store continues as it began, whatever auto's probe reads today; "auto"
    when they were computed on another kind of device, with several dtypes, or unknown."""
    kind = resolve_device(device).type
    found = {e.get("dtype") for e in computed_with if str(e.get("device", "")).split(":")[0] == kind}
    if len(found) == 1:
        (dtype,) = found
        if dtype in DTYPE_NAMES:
            return str(dtype)
    return "auto"


def remembered_speedup(probe: str, measure: Callable[[], float], threshold: float) -> float:
    """`measure()`, remembered for this machine (CPU model and flags, torch, instruction-set caps) when it is
    at least twice `threshold`: such a reading chooses the fast dtype however noisy the machine was, while a
    reading nearer the threshold (or under it, which a burst of load can cause) is taken again at every start
    (once for all the processes of a run on one machine: `once_per_run`)."""
    from simcli.models.remembered import machine_key, once_per_run, recall, remember
    from simcli.models.sources import measured_folder

    key = {"probe": probe, "machine": machine_key()}
    saved = recall(measured_folder(), key)
    if isinstance(saved, float) and saved >= 2 * threshold:
        return saved
    value = float(once_per_run(key, measure))  # one reading for a server's workers, a store's actors
    if value >= 2 * threshold:
        remember(measured_folder(), key, value)
    return value


@lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """float32 time / bfloat16 time of a BERT-base feed-forward product (256 x 768 x 3072) on this CPU.

    The flags alone do not tell: AVX512-BF16 without AMX measured 0.5x on one Intel part and 4x on an AMD
    EPYC (Zen 4). About 0.08 s, once per process, or remembered (remembered_speedup); 0.0 without native bf16
    (emulated bf16 is always slower).
    """
    if not cpu_has_bf16():
        return 0.0

    def measure() -> float:
        with torch.inference_mode():
            a, b = torch.randn(256, 768), torch.randn(768, 3072)
            a16, b16 = a.bfloat16(), b.bfloat16()
            return speedup(lambda: torch.mm(a, b), lambda: torch.mm(a16, b16))

    return remembered_speedup("bf16 mm 256x768x3072", measure, BF16_MIN_SPEEDUP)


@lru_cache(maxsize=1)
def cpu_int8_speedup() -> float:
    """float32 time / int8 time of the same BERT-base feed-forward product (256 x 768 x 3072) through simcli's
    int8 linear layer on this CPU: about 0.1 s, once per process, or remembered (remembered_speedup); 0.0
    without quantized kernels."""
    return remembered_speedup("int8 linear 256x768x3072", int8_linear_speedup, INT8_MIN_SPEEDUP)


def int8_linear_speedup(rows: int = 256, n_in: int = 768, n_out: int = 3072) -> float:
    """float32 time / int8 time of one linear layer of `rows` tokens through simcli's int8 layer (default: the
    BERT-base feed-forward product `cpu_bf16_speedup` times); 0.0 where this torch has no int8 matrix product on
    the CPU."""
    from simcli.models.int8 import Int8Linear  # imported by the probe only: int8 is not loaded for float32

    with torch.inference_mode():
        x, w, b = torch.randn(rows, n_in), torch.randn(n_out, n_in) / n_in**0.5, torch.randn(n_out)
        try:
            q = Int8Linear(w, b, int8_kernel())
            return speedup(lambda: torch.nn.functional.linear(x, w, b), lambda: q(x))
        except RuntimeError:  # e.g. a build without oneDNN
            return 0.0


def choose_cpu_dtype(bf16_speedup: float, int8_speedup: float | None) -> tuple[torch.dtype, str]:
    """`--dtype auto`'s rule on a CPU, from the two probes: bf16 where its matrix products run at least
    BF16_MIN_SPEEDUP x float32; else int8 where its linear layers run at least INT8_MIN_SPEEDUP x float32;
    else float32. `bf16_speedup` 0.0 means no native bf16; `int8_speedup` None: not measured (int8 not
    allowed). The caller still checks either one's accuracy against float32.

    Returns:
        (dtype, reason) where reason is a short phrase for the user.
    """
    if bf16_speedup >= BF16_MIN_SPEEDUP:
        return torch.bfloat16, f"auto: bf16 matmul {bf16_speedup:.1f}x float32 on this CPU"
    bf16 = (
        f"bf16 matmul only {bf16_speedup:.1f}x float32 on this CPU"
        if bf16_speedup > 0
        else "CPU has no native bf16"
    )
    if int8_speedup is None:
        return torch.float32, f"auto: {bf16}"
    if int8_speedup >= INT8_MIN_SPEEDUP:
        return torch.qint8, f"auto: {bf16}; int8 linear layers {int8_speedup:.1f}x float32"
    return torch.float32, f"auto: {bf16}, int8 linear layers only {int8_speedup:.1f}x float32"


def dtype_candidates(name: str, device: torch.device, *, int8: bool = True) -> tuple[torch.dtype, str]:
    """The dtype to try and why. For `auto` the caller still checks accuracy against float32.

    Args:
        int8: whether `auto` may choose int8 (training may not: it keeps float32 weights).

    Returns:
        (dtype, reason) where reason is a short phrase for the user.
    """
    if name != "auto":
        if name not in DTYPE_NAMES:
            raise UsageError(f"--dtype {name!r} is not one of auto, {', '.join(DTYPE_NAMES)}")
        if name == "float16" and device.type == "cpu":
            # fp16 matmuls on CPU are emulated on most parts; allowed because asked for.
            return torch.float16, "asked for (slow on most CPUs)"
        if name == "int8" and device.type != "cpu":
            raise UsageError(
                f"--dtype int8 runs on the CPU only (torch's int8 kernels are CPU kernels), not on "
                f"{device}: use --device cpu, or --dtype float16 / auto on CUDA"
            )
        return DTYPE_NAMES[name], "asked for"
    if device.type == "cuda":
        return torch.float16, "auto: float16 on CUDA"
    bf16 = cpu_bf16_speedup() if cpu_has_bf16() else 0.0  # emulated bf16 is never timed
    if bf16 >= BF16_MIN_SPEEDUP or not int8:
        return choose_cpu_dtype(bf16, None)
    return choose_cpu_dtype(bf16, cpu_int8_speedup())
