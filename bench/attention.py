"""Attention at sentence lengths on CPU: the three ways simcli can compute it, by number of keys, on this CPU.

    python bench/attention.py [--lengths 6,8,12,16,24,31,32,48,64] [--dtypes float32,bfloat16]

Rows: eager (matmul, scale, mask, softmax over the last dimension, matmul: transformers' eager attention),
torch's fused `scaled_dot_product_attention` (SDPA) and simcli's keys-first layout (softmax over the first
dimension: simcli/models/native.py, `_attention_keys_first`), each on a batch of ~2,048 tokens (12 heads of
64, a third of the rows with two padding keys), milliseconds, best of 20 calls taken in turn; `picks` is what
`native.attention` runs at that length (`native.attention_kernel`). torch's last-dimension softmax is fast where a row fills whole vector
registers (16 float32 on AVX-512, 8 on AVX2) and slow between, so the picture differs by CPU: re-run it on
yours (bench/machine.py shows how to cap an AMX CPU to AVX2).
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_line
from simcli.models.device import cpu_has_bf16
from simcli.models.native import _attention_keys_first, attention_kernel


def eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + bias
    return torch.matmul(scores.softmax(-1), v)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "eager": eager,
    "sdpa": sdpa,
    "keys-first": _attention_keys_first,
}


def best_times(calls: Mapping[str, Callable[[], object]], rounds: int = 20) -> dict[str, float]:
    for fn in calls.values():
        fn()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):  # in turn, so that a burst of load slows all alike
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="6,8,12,16,20,24,31,32,48,64")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    print(cpu_line(), f"| torch {torch.__version__}, {torch.get_num_threads()} threads")
    torch.manual_seed(0)
    heads, head_dim = 12, 64
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        if dtype == torch.bfloat16 and not cpu_has_bf16():
            print("bfloat16: skipped (no native bf16 on this CPU: simcli never runs bf16 here)")
            continue
        print(
            f"\n{name}: ms per call | {'keys':>4} " + " ".join(f"{k:>10}" for k in KERNELS) + "  picks   best"
        )
        for t in (int(x) for x in args.lengths.split(",")):
            b = max(1, 2048 // t)
            q, k, v = (torch.randn(b, heads, t, head_dim).to(dtype) for _ in range(3))
            bias = torch.zeros(b, 1, 1, t, dtype=dtype)
            bias[::3, ..., -2:] = torch.finfo(dtype).min
            with torch.inference_mode():
                calls = {n: functools.partial(f, q, k, v, bias) for n, f in KERNELS.items()}
                ms = {n: s * 1e3 for n, s in best_times(calls).items()}
            picked = attention_kernel("cpu", dtype, t, grad=False)
            best = min(ms, key=ms.__getitem__)
            print(
                f"{'':16} | {t:>4} "
                + " ".join(f"{ms[n]:>10.3f}" for n in KERNELS)
                + f"  {picked:<10} {best}"
                + ("" if picked == best else f" ({ms[picked] / ms[best]:.2f}x slower)")
            )


if __name__ == "__main__":
    main()
