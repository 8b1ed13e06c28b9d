"""How steady `--dtype auto`'s bf16 speed probe reads: its way (device.speedup: one thread, the two products in
turn) against timing on every thread, one block after the other (its way before), N readings each, alternating.

    python bench/probe.py --readings 40        # run it while another job holds the cores to see the difference

Prints the spread of each way's readings and how many fall under BF16_MIN_SPEEDUP (where auto would refuse
bf16). Without native bf16 the probe never runs; this script then times the int8 probe's products instead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_line
from simcli.models.device import BF16_MIN_SPEEDUP, cpu_has_bf16, int8_kernel, speedup


def blocks(baseline: Callable[[], object], candidate: Callable[[], object], reps: int = 3) -> float:
    """The old probe: all threads, the best of `reps` calls of one, then of the other."""

    def best(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    return best(baseline) / best(candidate)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=40)
    args = ap.parse_args()
    print(f"{cpu_line()}; torch {torch.__version__}, threads {torch.get_num_threads()}")
    with torch.inference_mode():
        a, b = torch.randn(256, 768), torch.randn(768, 3072)
        if cpu_has_bf16():
            what, a2, b2 = "bf16 matmul", a.bfloat16(), b.bfloat16()
            candidate: Callable[[], object] = lambda: torch.mm(a2, b2)
        else:
            from simcli.models.int8 import Int8Linear

            what, q = "int8 linear layer", Int8Linear(b.t(), None, int8_kernel())
            candidate = lambda: q(a)
        baseline = lambda: torch.mm(a, b)
        readings: dict[str, list[float]] = {"all threads, one block then the other": [], "device.speedup": []}
        for _ in range(args.readings):
            readings["all threads, one block then the other"].append(blocks(baseline, candidate))
            readings["device.speedup"].append(speedup(baseline, candidate))
            time.sleep(0.05)
    print(f"{what} against float32 (256 x 768 x 3072), {args.readings} readings each:")
    for name, values in readings.items():
        v = sorted(values)
        low = sum(x < BF16_MIN_SPEEDUP for x in v)
        print(
            f"  {name:<40} min {v[0]:5.2f}x  median {statistics.median(v):5.2f}x  max {v[-1]:6.2f}x; "
            f"under {BF16_MIN_SPEEDUP}x: {low}/{len(v)}"
        )


if __name__ == "__main__":
    main()
