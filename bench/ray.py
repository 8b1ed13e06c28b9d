"""Encoding on Ray against one process, at the same total cores: Ray's overhead.

    python bench/ray.py                        # 200,000 sentences, m3e-small, each run once
    python bench/ray.py --n 20000 --repeat 2   # smaller, repeated (the spread is printed)

Real sentences (both sides of the sentence-pair sets beside the checkout, as bench/encode.py reads them;
distinct, cycled up to --n) in one .txt file, encoded by whole `simcli encode` processes with real trained
weights (--model, default m3e-small):

    single    simcli encode corpus.txt --model M --out X                       (torch uses every core)
    ray 1x2   ... --ray local --workers 1 --cpus-per-worker CORES               (one actor, every core)
    ray 2x1   ... --ray local --workers 2 --cpus-per-worker CORES/2             (two actors, half each)

Two rates per run: the whole process (start, imports, Ray runtime and actors, model loads, encoding, writing)
and the steady state (the shards landing after each worker's first, over the time from the W-th landing
to the last, W the number of workers: what a long run converges to). Ray's overhead is single's rate over Ray's, minus 1. The machine
may be shared: compare runs of one invocation, and read the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def sentences(n: int) -> list[str]:
    """n sentences: the distinct ones of the pair sets, cycled (a shard never holds a sentence twice while
    there are more distinct sentences than --shard-size)."""
    pool: dict[str, None] = {}
    for path in sorted(DATA.glob("*/*.data")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                for s in line.rstrip("\n").split("\t")[:2]:
                    if s.strip():
                        pool[s.strip()] = None
    distinct = list(pool)
    return [distinct[i % len(distinct)] for i in range(n)]


def steady_rate(store: Path, workers: int) -> float:
    """Rows of the shards that landed after each worker's first over the time from the `workers`-th landing
    to the last (file mtimes): the start-up and each worker's first shard are left out."""
    manifest = json.loads((store / "manifest.json").read_text(encoding="utf-8"))
    landed = sorted(((store / f"{s['name']}.npy").stat().st_mtime, s["count"]) for s in manifest["shards"])
    if len(landed) <= workers:
        return float("nan")
    rows = sum(count for _, count in landed[workers:])
    span = landed[-1][0] - landed[workers - 1][0]
    return rows / span if span > 0 else float("nan")


def run(label: str, args: list[str], out: Path, n: int, workers: int) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "simcli", "encode", *args, "--out", str(out), "--overwrite"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{label} failed:\n{done.stderr}")
    whole, steady = n / wall, steady_rate(out, workers)
    print(
        f"  {label:<10} {whole:8.1f} sentences/s whole process ({wall:6.1f} s)   {steady:8.1f} steady",
        flush=True,
    )
    return whole, steady


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--model", default="m3e-small")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument(
        "--dtype",
        default="bfloat16",
        help="one dtype for every run: `auto` decides per process and per actor (a noisy probe), which would "
        "compare bfloat16 with float32",
    )
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("".join(s + "\n" for s in sentences(a.n)), encoding="utf-8")
        common = [str(corpus), "--model", a.model, "--shard-size", str(a.shard_size), "--dtype", a.dtype]
        configs = {
            "single": common,
            "ray 1x2": [*common, "--ray", "local", "--workers", "1", "--cpus-per-worker", str(cores)],
            "ray 2x1": [
                *common,
                "--ray",
                "local",
                "--workers",
                "2",
                "--cpus-per-worker",
                str(max(1, cores // 2)),
            ],
        }
        print(f"{a.n:,} sentences, {a.model} ({a.dtype}), {cores} cores, shards of {a.shard_size:,}")
        rates: dict[str, list[tuple[float, float]]] = {k: [] for k in configs}
        for r in range(a.repeat):
            print(f"run {r + 1}/{a.repeat}")
            for label, args in configs.items():  # alternating, so a busy spell of the machine hits all
                workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
                rates[label].append(run(label, args, Path(tmp) / "out.vec", a.n, workers))
    print("medians (spread min..max):")
    base = [statistics.median(x[i] for x in rates["single"]) for i in (0, 1)]
    for label, got in rates.items():
        med = [statistics.median(x[i] for x in got) for i in (0, 1)]
        spread = [f"{min(x[i] for x in got):.1f}..{max(x[i] for x in got):.1f}" for i in (0, 1)]
        overhead = (
            ""
            if label == "single"
            else (
                f"   overhead vs single: {base[0] / med[0] - 1:+.1%} whole, {base[1] / med[1] - 1:+.1%} steady"
            )
        )
        print(
            f"  {label:<10} whole {med[0]:7.1f} ({spread[0]})  steady {med[1]:7.1f} ({spread[1]}){overhead}"
        )


if __name__ == "__main__":
    main()
