"""`simcli index build STORE --ray`: fill copies of the trained index in parallel, then merge them.

The driver trains the index once on a sample (coarse quantizer, OPQ, PQ codebooks: `simcli.index.pipeline`);
each Ray task gets that trained, empty index, reads only its run of shards from the store, puts their
vectors in index space (the same whitening and normalisation) and adds them; the driver merges the tasks'
inverted lists in id order (faiss `merge_from`, ids shifted by what is already there), as autofaiss
distributes a build. A worker's memory is its shards and its part of the index, not the corpus. The
tuning of the search parameters and the folder written are those of a single-process build.

Indexes without inverted lists to merge (HNSW graphs) are filled on the driver, as without --ray.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from simcli.scale.whiten import TASKS_PER_CPU, groups


def _fill(
    trained: Any, whitening: Any, shards: Sequence[tuple[Path, dict[str, Any]]], dim: int, store_dtype: str
) -> Any:
    import faiss

    from simcli.index import faiss_ops as builder
    from simcli.index.space import to_index_space
    from simcli.store import load_shard_vectors

    index = faiss.deserialize_index(trained)
    for folder, entry in shards:
        builder.add(index, [to_index_space(load_shard_vectors(folder, entry, dim, store_dtype), whitening)])
    return faiss.serialize_index(index)


def mergeable(index: Any) -> bool:
    """Whether faiss can merge filled copies of this index (IVF lists, flat codes), not an HNSW graph."""
    import faiss

    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return isinstance(faiss.downcast_index(index), faiss.IndexFlat)


def build_hooks_on_ray(
    ray: Any, store_path: str | Path, log: Callable[[str], None]
) -> tuple[Callable[[], Any], Callable[[Any, Any], Any]]:
    """The `moments` and `fill` hooks of `simcli.Index.build` for a store on Ray: the whitening's moments gathered by
    Ray tasks, and the store's shards added by Ray tasks into copies of the trained index, merged in id order."""
    from simcli.scale.runtime import cluster_cpus
    from simcli.scale.whiten import store_moments_on_ray
    from simcli.store import VectorStore

    store = VectorStore.open(store_path)

    def fill(trained: Any, whitening: Any) -> Any:
        import faiss

        if not mergeable(trained):
            log("note: an HNSW graph cannot be merged from parts: the driver fills it, as without --ray")
            return None
        parts = groups(store.shard_files(), TASKS_PER_CPU * cluster_cpus(ray))
        serialized = faiss.serialize_index(trained)
        blob = ray.put(serialized)
        task = ray.remote(num_cpus=1, max_retries=3)(_fill)
        futures = [task.remote(blob, whitening, part, store.dim, store.store_dtype) for part in parts]
        merged = faiss.deserialize_index(serialized)  # the parts' own class (a factory's Flat is IndexFlatIP)
        flat = isinstance(faiss.downcast_index(merged), faiss.IndexFlat)
        for future in futures:  # in id order: part p's ids follow those of parts 0..p-1
            part_index = faiss.deserialize_index(ray.get(future))
            merged.merge_from(part_index, 0 if flat else merged.ntotal)
            del part_index
        log(f"filled on Ray: {len(parts)} parts merged")
        return merged

    return store_moments_on_ray(ray, store), fill
