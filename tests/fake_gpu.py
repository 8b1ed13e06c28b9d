"""A stand-in for faiss's GPU module on a machine without CUDA, strict where the real one is.

`FakeGpuIndex` is not a faiss CPU index: `extract_index_ivf`, `downcast_index` and `ParameterSpace` do not
reach it (as they do not reach a GpuIndexIVF*); its nprobe is set only through `FakeGpuParameterSpace`; k and
nprobe above 2048 raise, like the GPU k-selection; a search while another one runs raises (the real resources
are not safe for concurrent use); the clone refuses what the real cloner refuses without its options.
`install(monkeypatch, gpus)` puts it on the faiss module: StandardGpuResources, index_cpu_to_gpu,
index_cpu_to_gpu_multiple_py, index_gpu_to_cpu, GpuClonerOptions, GpuMultipleClonerOptions,
GpuParameterSpace, get_num_gpus.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

GPU_MAX = 2048
SHARED_MEMORY = 48 * 1024  # bytes of shared memory a GPU block has for IVF-PQ lookup tables


class FakeResources:
    created = 0

    def __init__(self) -> None:
        FakeResources.created += 1


class FakeClonerOptions:
    def __init__(self) -> None:
        self.useFloat16 = False
        self.allowCpuCoarseQuantizer = False


def _inner(index: Any) -> Any:
    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return inner


class FakeGpuIndex:
    """A GpuIndex: opaque to the CPU helpers, limited to k, nprobe <= 2048, one search at a time."""

    def __init__(self, cpu: Any, device: int) -> None:
        self._cpu = faiss.clone_index(cpu)
        self.device = device
        self.d = cpu.d
        inner = _inner(self._cpu)
        self._ivf = isinstance(inner, faiss.IndexIVF)
        self.nprobe = int(inner.nprobe) if self._ivf else 0
        self._busy = threading.Lock()
        self.searches: list[tuple[int, int]] = []  # (k, nprobe) of each search

    @property
    def ntotal(self) -> int:
        return int(self._cpu.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self._cpu.is_trained)

    def train(self, x: np.ndarray) -> None:
        self._cpu.train(x)

    def add(self, x: np.ndarray) -> None:
        self._cpu.add(x)

    def search(self, x: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("fake GPU: concurrent search on one GPU index and its resources")
        try:
            if params is not None:
                raise RuntimeError("fake GPU: set search parameters with GpuParameterSpace")
            if k > GPU_MAX:
                raise RuntimeError(
                    f"Error: 'k <= GPU_MAX_SELECTION_K' failed: GPU index only supports k <= {GPU_MAX}"
                )
            if self.nprobe > GPU_MAX:
                raise RuntimeError(f"Error: GPU index only supports nprobe <= {GPU_MAX}")
            time.sleep(0.002)  # long enough for an unguarded concurrent search to be caught
            self.searches.append((k, self.nprobe))
            p = None
            if self._ivf:
                p = faiss.SearchParametersIVF()
                p.nprobe = self.nprobe
            return self._cpu.search(np.ascontiguousarray(x, dtype=np.float32), k, params=p)
        finally:
            self._busy.release()

    def back(self) -> Any:
        cpu = faiss.clone_index(self._cpu)
        if self._ivf:
            faiss.extract_index_ivf(cpu).nprobe = self.nprobe
        return cpu


@dataclass
class FakeReplicas:
    """IndexReplicas: one FakeGpuIndex a device, searched through the first."""

    shards: list[FakeGpuIndex] = field(default_factory=list)

    @property
    def d(self) -> int:
        return self.shards[0].d

    @property
    def ntotal(self) -> int:
        return self.shards[0].ntotal

    def search(self, x: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        return self.shards[0].search(x, k, params)


class FakeGpuParameterSpace:
    """GpuParameterSpace: reaches fake GPU indexes (and replicas); CPU indexes go to faiss.ParameterSpace."""

    def set_index_parameter(self, index: Any, name: str, value: float) -> None:
        if isinstance(index, FakeReplicas):
            for shard in index.shards:
                self.set_index_parameter(shard, name, value)
        elif isinstance(index, FakeGpuIndex):
            if name != "nprobe" or not index._ivf:
                raise RuntimeError(f"fake GPU: could not set parameter {name}")
            index.nprobe = int(value)
        else:
            faiss.ParameterSpace().set_index_parameter(index, name, value)


class FakeGpu:
    """What the tests inspect: the moves made, with their devices and options."""

    def __init__(self, gpus: int) -> None:
        self.gpus = gpus
        self.moves: list[tuple[list[int], FakeClonerOptions]] = []
        self.back = 0
        self.refuse: str | None = None  # make every move fail with this message

    def clone(self, index: Any, device: int, co: FakeClonerOptions | None) -> FakeGpuIndex:
        co = co or FakeClonerOptions()
        if self.refuse:
            raise RuntimeError(f"Error in cloning: {self.refuse}")
        inner = _inner(index)
        if isinstance(inner, faiss.IndexRefine | faiss.IndexHNSW):
            raise RuntimeError("Error: This index type is not implemented on GPU")  # noqa: TRY004  # faiss's type
        if isinstance(inner, faiss.IndexIVF):
            flat = isinstance(faiss.downcast_index(inner.quantizer), faiss.IndexFlat)
            if not flat and not co.allowCpuCoarseQuantizer:
                raise RuntimeError("Error: coarse quantizer of this type is not implemented on GPU")
        if (
            isinstance(inner, faiss.IndexIVFPQ)
            and not co.useFloat16
            and inner.pq.M * inner.pq.ksub * 4 > SHARED_MEMORY
        ):
            raise RuntimeError("Error: not enough shared memory for the lookup tables: try useFloat16")
        return FakeGpuIndex(index, device)

    def to_gpu(self, res: Any, device: int, index: Any, co: Any = None) -> FakeGpuIndex:
        assert isinstance(res, FakeResources)
        if not 0 <= device < self.gpus:
            raise RuntimeError(f"Error: invalid device {device}")
        self.moves.append(([device], co))
        return self.clone(index, device, co)

    def to_gpus(self, resources: list[Any], index: Any, co: Any = None, gpus: Any = None) -> FakeReplicas:
        devices = list(gpus if gpus is not None else range(len(resources)))
        assert len(resources) == len(devices) and all(isinstance(r, FakeResources) for r in resources)
        self.moves.append((devices, co))
        return FakeReplicas([self.clone(index, d, co) for d in devices])

    def to_cpu(self, index: Any) -> Any:
        self.back += 1
        return (index.shards[0] if isinstance(index, FakeReplicas) else index).back()


def install(monkeypatch: Any, gpus: int = 1) -> FakeGpu:
    """Put the fake GPU module on faiss (raising=False: faiss-cpu has none of these names)."""
    from simcli.index import gpu as gpu_mod

    fake = FakeGpu(gpus)
    FakeResources.created = 0
    gpu_mod.resources.cache_clear()
    names = {
        "get_num_gpus": lambda: fake.gpus,
        "StandardGpuResources": FakeResources,
        "GpuClonerOptions": FakeClonerOptions,
        "GpuMultipleClonerOptions": FakeClonerOptions,
        "GpuParameterSpace": FakeGpuParameterSpace,
        "index_cpu_to_gpu": fake.to_gpu,
        "index_cpu_to_gpu_multiple_py": fake.to_gpus,
        "index_gpu_to_cpu": fake.to_cpu,
    }
    for name, value in names.items():
        monkeypatch.setattr(faiss, name, value, raising=False)
    return fake
