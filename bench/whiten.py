"""Whitening fit: simcli's streaming float64 moments against the in-memory numpy recipe, side by side.

    python bench/whiten.py                  # 1M x 768 float32 (3 GB data file in /tmp), and 100k for scaling
    python bench/whiten.py --n 200000 --small 20000

The data (seeded, anisotropic, far from centred like BERT vectors) is generated once, in chunks, into a raw
float32 file. Each contender then runs in its own subprocess so that its peak RSS (ru_maxrss) is its own:
- simcli: `Whitening.fit` over chunks read from the file (never holding all of it);
- numpy: the published recipe, `np.cov(X, rowvar=False)` + `np.linalg.svd` on X loaded whole.
Both read the same file; the printed fit time of numpy excludes loading, simcli's includes reading.
The two fits are compared (eigenvalues, top-k subspace) so the speed is not bought with accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    """Peak RSS of this process's own address space (VmHWM; ru_maxrss would include the parent's peak,
    which Linux carries over fork + exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def generate(path: Path, n: int, d: int, chunk: int = 50_000, seed: int = 0) -> None:
    """Seeded anisotropic float32 vectors: a random rotation of decaying scales, plus a large offset."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    mix = (np.logspace(0, -2, d)[:, None] * q.T).astype(np.float32)  # (d, d): scale, then rotate
    offset = (3 * rng.standard_normal(d)).astype(np.float32)
    with open(path, "wb") as f:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            (rng.standard_normal((m, d), dtype=np.float32) @ mix + offset).tofile(f)


def read_chunks(path: Path, n: int, d: int, chunk: int):  # type: ignore[no-untyped-def]
    """Plain reads (no mmap), so the RSS shows only what the fit holds."""
    with open(path, "rb") as f:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            yield np.fromfile(f, dtype=np.float32, count=m * d).reshape(m, d)


def worker(kind: str, path: Path, n: int, d: int, k: int, chunk: int, out: Path) -> None:
    from simcli.whitening import Whitening

    base = current_rss_mb()
    if kind == "simcli":
        t0 = time.perf_counter()
        w = Whitening.fit(read_chunks(path, n, d, chunk), dim=k)
        fit = time.perf_counter() - t0
        load = 0.0
        lam, W = w.eigenvalues, w.W
    else:
        t0 = time.perf_counter()
        x = np.fromfile(path, dtype=np.float32, count=n * d).reshape(n, d)
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        cov = np.cov(x, rowvar=False)
        u, s, _ = np.linalg.svd(cov)
        W = (u / np.sqrt(s))[:, :k]
        fit = time.perf_counter() - t0
        lam = s * (n - 1) / n  # np.cov divides by N-1, simcli by N
    np.save(out.with_suffix(".lam.npy"), lam)
    np.save(out.with_suffix(".W.npy"), W)
    out.write_text(json.dumps({"fit_s": fit, "load_s": load, "peak_mb": peak_rss_mb(), "base_mb": base}))


def run_worker(kind: str, path: Path, n: int, d: int, k: int, chunk: int, tmp: Path) -> dict:  # type: ignore[type-arg]
    out = tmp / f"{kind}-{n}.json"
    cmd = [sys.executable, __file__, "--worker", kind, "--data", str(path), "--n", str(n), "--dim", str(d),
           "--k", str(k), "--chunk", str(chunk), "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT)
    res = json.loads(out.read_text())
    res["lam"] = np.load(out.with_suffix(".lam.npy"))
    res["W"] = np.load(out.with_suffix(".W.npy"))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=100_000, help="a second N for the memory-vs-N comparison")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=8192, help="rows per chunk read by the streamed fit")
    ap.add_argument("--data", type=Path, default=None, help="data file (default: a temporary file)")
    ap.add_argument("--worker", choices=["simcli", "numpy"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.data, a.n, a.dim, a.k, a.chunk, a.out)
        return

    with tempfile.TemporaryDirectory(prefix="simcli-bench-") as tmpdir:
        tmp = Path(tmpdir)
        path = a.data or tmp / "vectors.f32"
        if not path.exists() or path.stat().st_size < a.n * a.dim * 4:
            t0 = time.perf_counter()
            generate(path, a.n, a.dim)
            print(f"generated {a.n} x {a.dim} float32 ({path.stat().st_size / 2**30:.2f} GiB) "
                  f"in {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
        rows = []
        for n in (a.small, a.n):
            for kind in ("simcli", "numpy"):
                r = run_worker(kind, path, n, a.dim, a.k, a.chunk, tmp)
                rows.append((n, kind, r))
                print(
                    f"  done: {kind} N={n}: fit {r['fit_s']:.1f} s, peak RSS {r['peak_mb']:.0f} MB",
                    flush=True,
                )
        print()
        print(
            f"Whitening fit, d={a.dim}, k={a.k}, float32 input ({os.cpu_count()} CPUs, numpy {np.__version__})"
        )
        print(
            f"{'N':>9} {'method':<34} {'fit s':>7} {'load s':>7} {'peak RSS MB':>12} {'above start MB':>15}"
        )
        for n, kind, r in rows:
            label = (
                "simcli Whitening.fit (streamed)" if kind == "simcli" else "numpy np.cov + svd (in memory)"
            )
            print(f"{n:>9} {label:<34} {r['fit_s']:>7.2f} {r['load_s']:>7.2f} {r['peak_mb']:>12.0f} "
                  f"{r['peak_mb'] - r['base_mb']:>15.0f}")  # fmt: skip
        by = {(n, kind): r for n, kind, r in rows}
        for n in (a.small, a.n):
            s, ref = by[(n, "simcli")], by[(n, "numpy")]
            lam_err = np.max(np.abs(s["lam"][: a.k] - ref["lam"][: a.k]) / ref["lam"][: a.k])
            # principal angles between the two top-k subspaces
            qa, _ = np.linalg.qr(s["W"])
            qb, _ = np.linalg.qr(ref["W"])
            cos_min = np.linalg.svd(qa.T @ qb, compute_uv=False).min()
            print(f"N={n}: numpy/simcli fit time {ref['fit_s'] / s['fit_s']:.2f}x, "
                  f"(numpy load+fit)/simcli {(ref['fit_s'] + ref['load_s']) / s['fit_s']:.2f}x, "
                  f"peak RSS numpy/simcli {ref['peak_mb'] / s['peak_mb']:.1f}x; "
                  f"max rel. eigenvalue diff (top {a.k}) {lam_err:.1e}, "
                  f"smallest cosine of principal angles {cos_min:.6f}")  # fmt: skip
        s_small, s_big = by[(a.small, "simcli")], by[(a.n, "simcli")]
        g_small, g_big = by[(a.small, "numpy")], by[(a.n, "numpy")]
        print(f"memory growth from N={a.small} to N={a.n}: simcli {s_big['peak_mb'] - s_small['peak_mb']:+.0f} MB, "
              f"numpy {g_big['peak_mb'] - g_small['peak_mb']:+.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
