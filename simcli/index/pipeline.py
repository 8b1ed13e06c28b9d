"""Building and growing an index folder: the write side of simcli.index.

Build: source (raw vectors) -> whitening (fitted, given or none) -> `prepare`: every vector whitened and
L2-normalised ONCE into one array -> train on a sample of it, add it, tune the search parameter against exact
search over it, keep it for lossy indexes -> the folder (`persist.write_generation`). `add` prepares the new
vectors the same way, with the recorded whitening. When the vectors are added elsewhere (`fill`, on Ray), the
driver streams them instead (`Streamed`): its memory is a chunk and the samples, not the corpus.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from simcli.errors import BadInput, ManifestMismatch, UsageError
from simcli.index import faiss_ops, persist
from simcli.index.choose import IndexChoice
from simcli.index.gpu import GpuIndex, to_gpu
from simcli.index.inputs import Source, distinct
from simcli.index.manifest import IndexManifest, IndexRecord, SearchRecord
from simcli.index.search import (
    TARGET_RECALL,
    TUNE_K,
    TUNE_QUERIES,
    drop_self,
    ground_truth,
    set_search_params,
    tune,
)
from simcli.index.space import to_index_space, whitening_record
from simcli.index.stored import is_lossless, sample_ids
from simcli.manifest import check_same_model
from simcli.types import Log

SEED = 0
#: Prepared vectors past this size go to a memory-mapped scratch file in the index folder, not to RAM.
IN_MEMORY_BYTES = 2 << 30
SCRATCH = ".prepared.npy"


@dataclass
class Prepared:
    """A source's vectors in index space, and the sizes of the source's chunks."""

    vectors: np.ndarray
    sizes: list[int]

    def blocks(self) -> Iterator[np.ndarray]:
        """The vectors in the source's own chunks: faiss gets the same batches whatever the source (an
        HNSW graph depends on how its insertions are batched)."""
        start = 0
        for size in self.sizes:
            yield self.vectors[start : start + size]
            start += size

    def take(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of sorted ids (a training or tuning sample)."""
        return self.vectors[ids]


@dataclass
class Streamed:
    """A source's vectors put in index space chunk by chunk on every pass: memory is one chunk plus the
    samples taken, at the price of a whitening pass per use. For builds whose vectors are added elsewhere
    (`index build --ray`), where the driver must not hold, or spill to disk, the whole corpus."""

    src: Source
    whitening: Any

    def blocks(self) -> Iterator[np.ndarray]:
        for chunk in self.src.chunks():
            yield to_index_space(chunk, self.whitening)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of sorted ids, bit for bit those of `Prepared.take` (whole chunks are transformed)."""
        parts, start = [], 0
        for block in self.blocks():
            lo, hi = np.searchsorted(ids, [start, start + len(block)])
            if hi > lo:
                parts.append(block[ids[lo:hi] - start])
            start += len(block)
        dim = self.whitening.dim_out if self.whitening is not None else self.src.dim
        return np.concatenate(parts) if parts else np.empty((0, dim), np.float32)


@contextlib.contextmanager
def prepare(src: Source, whitening: Any, folder: Path) -> Iterator[Prepared]:
    """The source's vectors in index space (whitened, L2-normalised), computed once: an (n, d) float32 array,
    in memory or (past IN_MEMORY_BYTES) memory-mapped from a scratch file removed afterwards."""
    dim = whitening.dim_out if whitening is not None else src.dim
    scratch = folder / SCRATCH
    if src.count * dim * 4 > IN_MEMORY_BYTES:
        folder.mkdir(parents=True, exist_ok=True)
        out: np.ndarray = np.lib.format.open_memmap(
            scratch, mode="w+", dtype=np.float32, shape=(src.count, dim)
        )
    else:
        out = np.empty((src.count, dim), dtype=np.float32)
    try:
        sizes: list[int] = []
        filled = 0
        for chunk in src.chunks():
            if filled + len(chunk) > src.count:
                raise BadInput(f"{src.describe}: more vectors than the {src.count} announced")
            out[filled : filled + len(chunk)] = to_index_space(chunk, whitening)
            sizes.append(len(chunk))
            filled += len(chunk)
        if filled != src.count:
            raise BadInput(f"{src.describe}: {filled} vectors, {src.count} announced")
        yield Prepared(out, sizes)
    finally:
        del out
        scratch.unlink(missing_ok=True)


def build(
    src: Source,
    whitening: Any,
    choice: IndexChoice,
    out: Path,
    *,
    model_path: str | None,
    overwrite: bool,
    log: Log,
    fill: Callable[[faiss.Index], faiss.Index | None] | None = None,
    device: str | None = "auto",
) -> IndexManifest:
    """Build the index folder `out` from a source and its whitening; returns the manifest written.

    `device`: where faiss trains, adds and tunes (auto: the GPUs faiss sees; cuda:N: that one; cpu).

    `fill(trained)` adds the source's vectors to the trained, empty index some other way and returns the
    filled index (on Ray: simcli.scale.index), or None to add them here.
    """
    vectors: contextlib.AbstractContextManager[Prepared | Streamed] = (
        contextlib.nullcontext(Streamed(src, whitening)) if fill is not None else prepare(src, whitening, out)
    )
    with vectors as prepared:
        dim = whitening.dim_out if whitening is not None else src.dim
        index = faiss_ops.make_index(choice, dim)
        gpu = to_gpu(index, device, log, building=True)
        log(f"building on {'GPU ' + ','.join(map(str, gpu.gpus)) if gpu else 'CPU'}")
        start = time.perf_counter()
        tune_ids = sample_ids(src.count, TUNE_QUERIES, SEED)
        train_ids, faiss_said = _train(index, gpu, choice, src.count, prepared, start, log)
        queries = np.ascontiguousarray(prepared.take(tune_ids))
        cpu, gpu = _fill(index, gpu, prepared, fill, device, log)
        params, recall = _tune(index, cpu, gpu, queries, tune_ids, prepared, log)
        build_s = time.perf_counter() - start
        # the saved index carries the tuned values as its defaults, for faiss users of the file
        set_search_params(cpu, params)
        log(
            f"built in {build_s:.1f}s; search {params or 'exact'}: recall@{TUNE_K} {recall:.3f} on {len(tune_ids)} sample queries"
        )
        shortfall = tuning_shortfall(choice, params, recall, len(train_ids), faiss_said)
        if shortfall:
            log(shortfall)
        out.mkdir(parents=True, exist_ok=True)
        index_record = IndexRecord(
            kind=choice.kind,
            factory=choice.factory,
            nlist=choice.nlist,
            train_size=len(train_ids),
            reason=choice.reason,
            metric="inner_product",
            lossless=is_lossless(cpu, tune_ids, queries),
            built_on="gpu" if gpu is not None else "cpu",
            build_seconds=round(build_s, 3),
        )
        search_record = SearchRecord(
            params=params,
            tuned_recall=round(recall, 4),
            tune_queries=len(tune_ids),
            target_recall=TARGET_RECALL,
            target_reached=recall >= TARGET_RECALL,
            warning=shortfall,
        )
        manifest = IndexManifest(
            model=src.spec,
            model_path=model_path,
            source=src.describe,
            whitening=whitening_record(whitening),
            index=index_record,
            search=search_record,
            count=int(cpu.ntotal),
            dim=int(cpu.d),
            generation=_next_generation(out, overwrite),
            # informational: which device/dtype computed the vectors (auto may pick bf16); queries follow it
            computed_with=distinct(src.computed_with),
        )
        return persist.write_generation(out, manifest, cpu, src.rows(), prepared.blocks, whitening=whitening)


def _next_generation(out: Path, overwrite: bool) -> int:
    previous = 0
    if overwrite and (out / persist.MANIFEST).is_file():
        # the new files take the next generation's names: the old index stays whole until the manifest switches
        previous = persist.read(out).generation
    return previous + 1


def _train(
    index: faiss.Index,
    gpu: GpuIndex | None,
    choice: IndexChoice,
    count: int,
    prepared: Prepared | Streamed,
    start: float,
    log: Log,
) -> tuple[np.ndarray, list[str]]:
    """Train an untrained index on a sample; returns the sample's ids and what faiss said meanwhile."""
    train_ids = (
        sample_ids(count, choice.train_size, SEED + 2) if not index.is_trained else np.empty(0, np.int64)
    )
    faiss_said: list[str] = []
    if len(train_ids):
        with faiss_ops.faiss_stderr() as faiss_said:
            faiss_ops.train(gpu.index if gpu else index, prepared.take(train_ids))
        log(f"trained on {len(train_ids)} vectors in {time.perf_counter() - start:.1f}s")
    return train_ids, faiss_said


def _fill(
    index: faiss.Index,
    gpu: GpuIndex | None,
    prepared: Prepared | Streamed,
    fill: Callable[[faiss.Index], faiss.Index | None] | None,
    device: str | None,
    log: Log,
) -> tuple[faiss.Index, GpuIndex | None]:
    """Add the vectors, here or through `fill`; returns the filled CPU index and its GPU form, if any."""
    filled = fill(gpu.to_cpu() if gpu else index) if fill is not None else None
    if filled is None:
        faiss_ops.add(gpu.index if gpu else index, prepared.blocks())
        cpu = gpu.to_cpu() if gpu else index
    else:
        cpu, gpu = filled, to_gpu(filled, device, log)
    if gpu is not None:
        gpu = GpuIndex(gpu.index, cpu, gpu.gpus)  # the filled CPU copy: parameters, saving, large k
    return cpu, gpu


def _tune(
    index: faiss.Index,
    cpu: faiss.Index,
    gpu: GpuIndex | None,
    queries: np.ndarray,
    tune_ids: np.ndarray,
    prepared: Prepared | Streamed,
    log: Log,
) -> tuple[dict[str, int], float]:
    """The search parameters reaching the target recall against exact search, and the recall reached."""
    params: dict[str, int] = {}
    recall = 1.0  # exact search: nothing to tune, and its ground truth would cost a second pass
    if not isinstance(faiss.downcast_index(index), faiss.IndexFlat):
        truth = drop_self(ground_truth(queries, prepared.blocks(), TUNE_K + 1)[1], tune_ids, TUNE_K)
        params, recall = tune(cpu, queries, tune_ids, truth, log=log, search=gpu.search if gpu else None)
    return params, recall


def tuning_shortfall(
    choice: IndexChoice, params: dict[str, int], recall: float, trained_on: int, faiss_said: list[str]
) -> str | None:
    """One warning when tuning stopped below TARGET_RECALL (or faiss complained while training): the recall
    reached, faiss's own complaint folded in, and what would help."""
    said = [line.removeprefix("WARNING").strip() for line in faiss_said]
    distinct_said = list(dict.fromkeys(said))
    complaint = ""
    if distinct_said:
        times = f" ({len(said)} times)" if len(said) > 1 else ""
        complaint = f"; faiss: {distinct_said[0]}{times}"
    if recall >= TARGET_RECALL:
        return f"note: trained on {trained_on} vectors{complaint}" if complaint else None
    m = re.search(r"PQ(\d+)", choice.factory)
    larger_m = (
        f", a larger m (e.g. --index {choice.factory.replace(m.group(0), f'PQ{2 * int(m.group(1))}')})"
        if m
        else ""
    )
    reached = ", ".join(f"{k} {v}" for k, v in params.items()) or "exact"
    return (
        f"warning: {choice.factory} reaches recall@{TUNE_K} {recall:.2f} at best ({reached}), below the "
        f"{TARGET_RECALL} target{complaint}. For more recall: more vectors{larger_m}, or --index flat (exact)"
    )


def add(
    folder: Path,
    manifest: IndexManifest,
    cpu_index: Any,
    whitening: Any,
    src: Source,
    stored: Callable[[], Iterator[np.ndarray]],
    log: Log | None = None,
) -> IndexManifest:
    """Append a source's vectors to a loaded index (its CPU form, changed in place) and write the next
    generation; returns the new manifest.

    Args:
        stored: the vectors already in the index (read for lossy indexes, which keep a vectors file, and
            to refresh the CSLS radii).
        log: one-line notes.
    """
    log = log or (lambda _: None)
    if manifest.model is not None and src.spec is not None:
        check_same_model(manifest.model, src.spec, f"the vectors of {src.describe}")
    raw_dim = whitening.dim_in if whitening is not None else manifest.dim
    if src.dim != raw_dim:
        raise ManifestMismatch(f"{src.describe}: vectors of dim {src.dim}, the index takes {raw_dim}")
    if src.normalized and whitening is not None:
        raise BadInput(f"{src.describe}: L2-normalised vectors cannot be whitened like the corpus")
    factory = manifest.index.factory
    with prepare(src, whitening, folder) as prepared:
        before = cpu_index.ntotal
        try:
            faiss_ops.add(cpu_index, prepared.blocks())
        except RuntimeError as e:
            raise UsageError(
                f"{factory} cannot grow ({faiss_ops.faiss_message(e)}): rebuild the index with `simcli index build`"
            ) from None
        if cpu_index.ntotal != before + src.count:
            raise UsageError(f"{factory} did not take the new vectors: rebuild the index")

        def everything() -> Iterator[np.ndarray]:
            yield from stored()
            yield from prepared.blocks()

        grown = replace(
            manifest,
            generation=manifest.generation + 1,
            computed_with=distinct([*manifest.computed_with, *src.computed_with]),
            files={},
        )
        extra = {}
        if manifest.csls is not None and "radii" in manifest.files:
            extra["radii"] = _refreshed_radii(
                folder, manifest, cpu_index, stored, prepared.vectors, grown.generation, log
            )
        return persist.write_generation(
            folder, grown, cpu_index, src.rows(), everything, base=manifest, extra=extra
        )


def _refreshed_radii(
    folder: Path,
    manifest: IndexManifest,
    grown: Any,
    stored: Callable[[], Iterator[np.ndarray]],
    new: np.ndarray,
    generation: int,
    log: Log,
) -> Any:
    """The CSLS radii once `new` is in the index (simcli.index.neighbourhood.refresh_radii: only the old
    vectors a new one enters are re-searched), written as this generation's radii file."""
    from simcli.index.csls import read_radii, write_radii
    from simcli.index.neighbourhood import refresh_radii

    radii, researched = refresh_radii(
        read_radii(folder, manifest), grown.search, stored, np.ascontiguousarray(new), manifest.count
    )
    log(f"CSLS radii: {len(new)} new, {researched} of {manifest.count} old vectors re-searched")
    return write_radii(folder, generation, radii)
