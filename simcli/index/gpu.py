"""faiss on the GPU: moving an index there (or saying why not), its resources, and searching it safely.

Written for faiss's GPU types as they behave, not as the CPU ones do:
- a GpuIndexIVF* (or an IndexReplicas of them, or an OPQ IndexPreTransform around one) is not a CPU
  IndexIVF: `extract_index_ivf` and `ParameterSpace` do not reach its nprobe. The search parameter and the
  list count are read from the CPU index it was cloned from; nprobe is set through `GpuParameterSpace`.
- k and nprobe are capped by the GPU's k-selection (GPU_MAX_K); above it the search runs on the CPU copy.
- a GPU index and its StandardGpuResources (one scratch stream and memory pool) are not safe for concurrent
  searches, even read-only: every GPU search takes the process's GPU lock. One StandardGpuResources per device, for
  the life of the process (a hot reload reuses it; creating one reserves memory on the device each time).
- some CPU indexes have no GPU form or need cloner options: an HNSW coarse quantizer stays on the CPU
  (`allowCpuCoarseQuantizer`); IVF-PQ lookup tables go to float16 (`useFloat16`), else m=64 with 8-bit codes
  needs 64 KiB of shared memory where a GPU block has 48; IndexRefine and HNSW graphs have no GPU form.
  Whatever fails, the CPU index is kept and the one line saying why goes to the log.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import faiss
import numpy as np

from simcli.errors import UsageError
from simcli.types import Log

GPU_MAX_K = 2048  # faiss's GPU k-selection limit: k and nprobe above it are refused by the GPU kernels


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu, or without CUDA)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def gpu_ids(device: str | None) -> list[int]:
    """The GPUs an index goes to for a --device: cuda:N -> [N]; auto / cuda -> every GPU faiss sees; cpu -> none."""
    n = gpu_count()
    d = (device or "auto").strip().lower()
    if n == 0 or d == "cpu":
        return []
    if d.startswith("cuda:"):
        try:
            i = int(d.removeprefix("cuda:"))
        except ValueError:
            raise UsageError(f"--device {device!r}: expected cuda:N") from None
        if not 0 <= i < n:
            raise UsageError(f"--device {device}: faiss sees {n} GPU{'s' if n != 1 else ''} (0-{n - 1})")
        return [i]
    return list(range(n))


@functools.cache
def resources(gpu: int) -> Any:
    """The process's one StandardGpuResources of a GPU (created on first use, reused by every load)."""
    return faiss.StandardGpuResources()  # type: ignore[attr-defined]


# one lock for every GPU search of the process: indexes on overlapping GPUs share their StandardGpuResources,
# and a server rarely holds indexes on disjoint GPUs
GPU_LOCK = threading.Lock()


def _unwrap(index: Any) -> Any:
    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return inner


def no_gpu_form(index: faiss.Index) -> str | None:
    """Why faiss cannot move this CPU index to a GPU, or None when it can."""
    inner = _unwrap(index)
    if isinstance(inner, faiss.IndexRefine):
        return "IndexRefine has no GPU form in faiss (build without a refine step to search on the GPU)"
    if isinstance(inner, faiss.IndexHNSW):
        return "an HNSW graph has no GPU form in faiss"
    return None


def cloner_options(index: faiss.Index) -> Any:
    """GpuClonerOptions for this CPU index: float16 PQ lookup tables, a CPU coarse quantizer when it is not flat."""
    co = faiss.GpuMultipleClonerOptions()  # type: ignore[attr-defined]  # also a GpuClonerOptions
    if isinstance(_unwrap(index), faiss.IndexIVFPQ):
        co.useFloat16 = True  # the tables of m=64 x 256 codes in float32 overflow a block's shared memory
    if coarse_not_flat(index):
        co.allowCpuCoarseQuantizer = True  # the auto IVF{n}_HNSW32: the HNSW quantizer stays on the CPU
    return co


def coarse_not_flat(index: faiss.Index) -> bool:
    """An IVF index whose coarse quantizer is not flat (HNSW): faiss has no GPU form of that quantizer."""
    inner = _unwrap(index)
    return isinstance(inner, faiss.IndexIVF) and not isinstance(
        faiss.downcast_index(inner.quantizer), faiss.IndexFlat
    )


def nprobe_of(index: faiss.Index) -> int | None:
    """The nprobe of a CPU index (through pre-transforms), None when it is not IVF."""
    try:
        return int(faiss.extract_index_ivf(index).nprobe)
    except RuntimeError:
        return None


class GpuIndex:
    """A faiss index on the GPU(s) with the CPU index it was cloned from, searched one call at a time.

    `cpu` is the truth for everything but the search: its type gives the search parameter, it is what gets
    saved, and searches beyond GPU_MAX_K (k or nprobe) run on it. After training or adding on the GPU, take
    `to_cpu()` and wrap the pair anew (the build does); an `Index.add` adds on the CPU and moves it again.
    """

    def __init__(self, gpu_index: Any, cpu: faiss.Index, gpus: list[int]) -> None:
        self.index, self.cpu, self.gpus = gpu_index, cpu, list(gpus)
        self.lock = GPU_LOCK
        self._space = faiss.GpuParameterSpace()  # type: ignore[attr-defined]

    @property
    def d(self) -> int:
        return int(self.cpu.d)

    @property
    def ntotal(self) -> int:
        return int(self.cpu.ntotal)

    def fits(self, k: int, params: dict[str, int]) -> bool:
        """Whether the GPU kernels take this search (k and nprobe within GPU_MAX_K)."""
        return k <= GPU_MAX_K and params.get("nprobe", 0) <= GPU_MAX_K

    def search(self, x: np.ndarray, k: int, params: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best, with these search parameters (set under the lock: the GPU index keeps
        them, so two searches with different ones must not interleave)."""
        if not self.fits(k, params):
            from simcli.index.search import SearchParams

            return self.cpu.search(x, k, params=SearchParams(self.cpu, params).faiss)  # type: ignore[call-arg]
        with self.lock:
            for name, value in params.items():
                self._space.set_index_parameter(self.index, name, int(value))
            return self.index.search(x, k)  # type: ignore[call-arg]

    def to_cpu(self) -> faiss.Index:
        """The GPU index's content as a CPU index (after training / adding on the GPU)."""
        with self.lock:
            return faiss.index_gpu_to_cpu(self.index)  # type: ignore[attr-defined]


def to_gpu(
    index: faiss.Index, device: str | None = "auto", log: Log | None = None, *, building: bool = False
) -> GpuIndex | None:
    """The index moved to the GPU(s) of `device` (cuda:N: that one; auto: each GPU faiss sees), or None with
    one logged reason when there is no GPU, the index has no GPU form or faiss refuses the move.

    `building`: the empty index is to be trained there; one with a CPU coarse quantizer (HNSW) is trained on
    the CPU instead (only its search is known to run with the quantizer left behind).
    """
    gpus = gpu_ids(device)
    if not gpus:
        return None
    say = log or (lambda _: None)
    why = no_gpu_form(index)
    if why is None and building and coarse_not_flat(index):
        why = "its coarse quantizer is not flat (trained on the CPU; a load searches it on the GPU)"
    if why is not None:
        say(f"faiss index stays on the CPU: {why}")
        return None
    nprobe = nprobe_of(index)
    if nprobe is not None and nprobe > GPU_MAX_K:
        # the CPU copy keeps its nprobe (searches asking for more than the GPU takes run there)
        say(
            f"note: nprobe {nprobe} is above the GPU limit {GPU_MAX_K}: the GPU index searches at {GPU_MAX_K}"
        )
    try:
        co = cloner_options(index)  # an older faiss without one of its options refuses here, not later
        if len(gpus) == 1:
            moved = faiss.index_cpu_to_gpu(resources(gpus[0]), gpus[0], index, co)  # type: ignore[attr-defined]
        else:
            moved = faiss.index_cpu_to_gpu_multiple_py([resources(g) for g in gpus], index, co, gpus)
        if nprobe is not None:
            faiss.GpuParameterSpace().set_index_parameter(moved, "nprobe", min(nprobe, GPU_MAX_K))  # type: ignore[attr-defined]
    except (RuntimeError, AttributeError, MemoryError) as e:
        from simcli.index.faiss_ops import faiss_message

        say(
            f"faiss index stays on the CPU: moving it to GPU {','.join(map(str, gpus))} failed ({faiss_message(e)})"
        )
        return None
    return GpuIndex(moved, index, gpus)
