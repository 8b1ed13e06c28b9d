"""One linear layer in int8 against float32, for each int8 kernel torch ships: which one a CPU makes fast.

    python bench/int8_layer.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        FBGEMM_ENABLE_INSTRUCTIONS=AVX2 python bench/int8_layer.py      # as an AVX2-only CPU (bench/machine.py)

Rows: simcli's int8 layer with each of its kernels (simcli/models/int8.py: inputs quantised per token, then
`torch._int_mm`, or FBGEMM with 7-bit weights; "default here" marks the one this CPU gets); oneDNN's bare int8 x int8
product (`torch._int_mm` on already-quantised inputs: the ceiling of that path) and FBGEMM's (static quantisation's
layer: quantised input, 8-bit output; the ceiling of the fbgemm kernel); and torch's dynamic quantised
linear (`quantize_dynamic`, one input scale a batch) on each quantised engine (FBGEMM, x86, oneDNN). Each is
float32 time / its time, timed on one thread, in turn with float32 (`device.speedup`), three readings, and the
largest relative error of one token's output against float32.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from bench.machine import cpu_line
from simcli.models.device import int8_kernel, speedup
from simcli.models.int8 import KERNELS, Int8Linear

# m3e-small's (fused query, key and value; feed-forward), base's
SHAPES = [(512, 512, 1536), (256, 512, 2048), (256, 2048, 512), (256, 768, 3072), (1024, 768, 3072)]


def candidates(
    w: torch.Tensor, b: torch.Tensor, rows: int
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The int8 layers of weight `w` and bias `b` that this torch offers, for `rows` tokens."""
    n_out, n_in = w.shape
    wq = torch.randint(-127, 128, (n_in, n_out), dtype=torch.int8)
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        f"simcli int8 {kernel}{' (default here)' if kernel == int8_kernel() else ''}": Int8Linear(
            w, b, kernel
        )
        for kernel in KERNELS
    }
    out["bare _int_mm"] = lambda x: torch._int_mm(x.to(torch.int8), wq)  # the product alone, on int8 inputs
    if "fbgemm" in torch.backends.quantized.supported_engines:
        # FBGEMM's product alone: an input quantised beforehand, 7-bit weights, output left in 8 bits (static
        # quantisation's layer): the ceiling of the fbgemm kernel, which quantises its input and scales back
        xq = torch.quantize_per_tensor(torch.randn(rows, n_in), 0.05, 128, torch.quint8)
        packed = Int8Linear(w, None, "fbgemm")._packed  # the kernel's own packed 7-bit weights
        out["bare FBGEMM"] = lambda _: torch.ops.quantized.linear(xq, packed, 1.0, 128)
    for engine in ("fbgemm", "x86", "onednn"):
        if engine in torch.backends.quantized.supported_engines:
            torch.backends.quantized.engine = engine  # used when the weights are packed, next line
            linear = torch.nn.Linear(n_in, n_out)
            linear.weight.data, linear.bias.data = w, b
            out[f"dynamic {engine}"] = torch.ao.quantization.quantize_dynamic(
                torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8
            )
    return out


def readings(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, layer: Callable[[torch.Tensor], torch.Tensor]
) -> str:
    x8 = x.round().clamp(-127, 127).to(torch.int8)  # for the bare product (its input needs no quantising)
    arg = x if isinstance(layer, torch.nn.Module) else x8
    got = [speedup(lambda: torch.nn.functional.linear(x, w, b), lambda: layer(arg)) for _ in range(3)]
    if layer is not arg and isinstance(layer, torch.nn.Module):  # how far from float32, per token
        ref = torch.nn.functional.linear(x, w, b).double()
        error = ((layer(x).double() - ref).norm(dim=1) / ref.norm(dim=1)).max().item()
        return f"{min(got):.2f}-{max(got):.2f}x (error {100 * error:.1f}%)"
    return f"{min(got):.2f}-{max(got):.2f}x"


def main() -> None:
    print(f"{cpu_line()}; torch {torch.__version__}")
    print("tokens x in x out: float32 time / int8 time, three readings (largest error of a token's output)")
    torch.manual_seed(0)
    for rows, n_in, n_out in SHAPES:
        x, w, b = torch.randn(rows, n_in), torch.randn(n_out, n_in) / n_in**0.5, torch.randn(n_out)
        with torch.inference_mode():
            cells = [f"{name} {readings(x, w, b, layer)}" for name, layer in candidates(w, b, rows).items()]
        print(f"  {rows} x {n_in} x {n_out}: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
