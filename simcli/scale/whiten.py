"""`simcli whiten fit STORE --ray`: the moments of groups of shards in parallel Ray tasks, merged pairwise.

Each task reads only its shards' vectors (memory: one shard at a time, plus O(d^2) for the moments) and
returns a MomentAccumulator; the driver merges them in id order with `MomentAccumulator.merge`, the same
pairwise update of centred sums a single-process fit applies between batches, so the fit equals the
single-process one up to float64 round-off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from simcli.whitening import MomentAccumulator

TASKS_PER_CPU = 2


def _moments(shards: Sequence[tuple[Path, dict[str, Any]]], dim: int, store_dtype: str, eps: float) -> Any:
    from simcli.store import load_shard_vectors

    acc = MomentAccumulator(dim, eps=eps)
    for folder, entry in shards:
        acc.add(load_shard_vectors(folder, entry, dim, store_dtype))
    return acc


def groups(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """`items` cut into at most `parts` runs of consecutive items of near-equal length."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(list(items[start:end]))
        start = end
    return [g for g in out if g]


def moments_on_ray(ray: Any, cpus_per_task: float = 1.0) -> Any:
    """A `moments(store, eps)` for `simcli.whitening.fit_store` that spreads the shards over Ray tasks."""
    from simcli.scale.runtime import cluster_cpus

    def moments(store: Any, eps: float) -> MomentAccumulator:
        task = ray.remote(num_cpus=cpus_per_task, max_retries=3)(_moments)
        parts = groups(store.shard_files(), TASKS_PER_CPU * cluster_cpus(ray))
        futures = [task.remote(part, store.dim, store.store_dtype, eps) for part in parts]
        acc = MomentAccumulator(store.dim, eps=eps)
        for future in futures:  # in id order, whatever order they finish in
            acc.merge(ray.get(future))
        return acc

    return moments


def store_moments_on_ray(ray: Any, store: Any) -> Callable[[], MomentAccumulator]:
    """The moments of a whole store gathered on Ray, for the whitening `index build --ray` fits
    (`simcli.index.space.fit_whitening`), with the store dtype's precision as `simcli whiten fit` uses it."""
    import numpy as np

    eps = float(np.finfo(np.dtype(store.store_dtype)).eps)
    return lambda: moments_on_ray(ray)(store, eps)
