"""`simcli encode --ray`: a Ray Data pipeline of shard plans through a pool of encoder actors.

    driver: read the inputs once (plan.plan_shards) -> shard plans, one Ray Data block each
    actors (--workers of them, each with --cpus-per-worker / --gpus-per-worker): load the model once; per
        plan read the shard's rows, encode them, write both shard files atomically (store.write_shard)
    driver: as results arrive, list the shards in the manifest in id order (store.StoreWriter), then mark
        the store complete

The store is the one a single-process run writes (same ids, texts, sources, lines, counts, manifest); the
folder must be one the driver and every worker see (a shared filesystem). An actor that dies is restarted
by Ray and its shard encoded again (Ray Data's actor pools retry without limit): the shard files are written
atomically, so a retried shard replaces nothing half-written, and the driver lists each shard once.
`resume` skips the shards an interrupted run listed, after checking their files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simcli.errors import ManifestMismatch, SimcliError
from simcli.io import ReadStats, no_sentences
from simcli.scale.plan import ShardPlan, plan_shards, read_shard
from simcli.scale.runtime import cluster_cpus
from simcli.store import (
    RESTART,
    StoreSummary,
    StoreWriter,
    check_finished_files,
    check_same_dtype,
    store_header,
)
from simcli.types import EncoderConfig, ModelSpec, ProgressFn


@dataclass(frozen=True)
class Workers:
    """The actor pool: how many actors and what each one holds."""

    count: int
    cpus: float
    gpus: float

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


def workers_for(ray: Any, workers: int | None, cpus: float | None, gpus: float) -> Workers:
    """The pool from the flags: by default one actor a GPU (with --gpus-per-worker), else one actor a CPU.

    One-thread actors, not a few many-thread ones: a sentence batch is too small a matrix product for torch's
    threads to scale, so separate actors go further (bench/ray.py, 200,000 sentences on 2 cores: two 1-CPU
    actors 302.7 sentences/s, one 2-CPU actor 233.1). Given --workers alone, the CPUs are shared among them."""
    total = cluster_cpus(ray)
    if gpus < 0 or (cpus is not None and cpus <= 0) or (workers is not None and workers < 1):
        raise SimcliError("--workers must be >= 1, --cpus-per-worker > 0, --gpus-per-worker >= 0")
    if workers is None:
        if gpus > 0:
            workers = max(1, int(ray.cluster_resources().get("GPU", 0) // gpus))
        else:
            workers = max(1, int(total // (cpus or 1)))
    if cpus is None:
        cpus = 1.0 if gpus > 0 else max(1.0, float(total // workers))
    return Workers(workers, float(cpus), float(gpus))


def actor_config(config: EncoderConfig) -> EncoderConfig:
    """The config an actor loads: the driver's `cuda:N` names a GPU of the driver's machine, while Ray narrows
    an actor's CUDA_VISIBLE_DEVICES to the GPUs it was given, so inside the actor its GPU is `cuda` (cuda:0)."""
    if config.device.startswith("cuda:"):
        return config.with_options(device="cuda")
    return config


class ShardEncoder:
    """A Ray Data actor: the model loaded once; each call encodes and writes one shard."""

    def __init__(
        self,
        config: EncoderConfig,
        whitening: Any,
        out: str,
        store_dtype: str,
        normalize: bool,
        read_options: dict[str, Any],
        threads: int,
    ) -> None:
        import torch

        from simcli.models.encoder import load_encoder

        torch.set_num_threads(threads)  # actors on one machine must not fight over its cores
        self.encoder: Any = load_encoder(config)
        if whitening is not None:
            from simcli.whitening import WhitenedEncoder

            self.encoder = WhitenedEncoder(self.encoder, whitening, whitening.path or "")
        self.out, self.store_dtype, self.normalize = Path(out), store_dtype, normalize
        self.read_options = read_options

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        import numpy as np

        from simcli.manifest import computed_with
        from simcli.store import write_shard
        from simcli.types import EncodeStats
        from simcli.vectors import encode_blocks

        results: dict[str, list[Any]] = {"entry": [], "tokens": [], "seconds": [], "worker": []}
        for text in batch["plan"]:
            plan = ShardPlan.from_json(str(text))
            rows = read_shard(plan, self.read_options)
            stats = EncodeStats()
            ((_, vectors),) = encode_blocks(
                self.encoder, [rows], text=lambda r: r.text, normalize=self.normalize, stats=stats
            )
            dim = self.encoder.spec.dim
            if vectors.shape != (len(rows), dim):
                raise SimcliError(f"encoder returned shape {vectors.shape}, expected ({len(rows)}, {dim})")
            vectors = np.ascontiguousarray(vectors, dtype=self.store_dtype)
            entry = write_shard(self.out, plan.k, plan.first, rows, vectors)
            entry["truncated"] = stats.truncated
            entry["computed_with"] = computed_with(self.encoder)
            results["entry"].append(json.dumps(entry))
            results["tokens"].append(stats.tokens)
            results["seconds"].append(stats.seconds)
            results["worker"].append(os.getpid())
        return results


def encode_store(
    ray: Any,
    inputs: Sequence[str],
    config: EncoderConfig,
    spec: ModelSpec,
    out: Path,
    *,
    pool: Workers,
    whitening: Any = None,
    shard_size: int,
    store_dtype: str,
    normalize: bool,
    resume: bool,
    overwrite: bool,
    read_options: dict[str, Any],
    allow_mixed: bool = False,
    progress: ProgressFn | None = None,
    on_shard: Callable[[dict[str, Any]], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> StoreSummary:
    """Encode `inputs` into the store `out` on the Ray runtime `ray` (see the module's docstring).

    Args:
        spec: the ModelSpec of the vectors (the driver opens the model once to know it before any actor
            has loaded it), recorded in the manifest and compared on --resume.
        pool: the actor pool.
        on_shard: called with each result row ({"entry", "tokens", "seconds", "worker"}) as it lands.
        total: called once with the number of rows, once the inputs are planned (for a progress bar).
    """
    stats = ReadStats()
    plans = plan_shards(list(inputs), shard_size=shard_size, stats=stats, **read_options)
    if not plans:
        raise no_sentences(inputs, stats, "encode")
    if total is not None:
        total(sum(p.count for p in plans))
    header = store_header(spec, store_dtype, normalize, shard_size, None, inputs, read_options)
    writer = StoreWriter(out, header, resume=resume, overwrite=overwrite)
    with writer.discarded_on_error():
        earlier = list(writer.done)
        if len(earlier) > len(plans):
            raise ManifestMismatch(
                f"{out}: cannot resume: the input now ends in shard {len(plans)}, the interrupted run wrote "
                f"{len(earlier)} shards (input changed; {RESTART})"
            )
        for plan, entry in zip(plans, earlier):
            _check_finished(out, entry, plan)
            if progress is not None:
                progress(plan.count, 0)
        todo = plans[len(earlier) :]
        tokens, seconds = 0, 0.0
        if todo:
            ds = ray.data.from_items([{"plan": p.to_json()} for p in todo], override_num_blocks=len(todo))
            results = ds.map_batches(
                ShardEncoder,
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=min(pool.count, len(todo))),
                num_cpus=pool.cpus,
                num_gpus=pool.gpus or None,
                fn_constructor_kwargs={
                    "config": actor_config(config),
                    "whitening": whitening,
                    "out": str(out.absolute()),
                    "store_dtype": store_dtype,
                    "normalize": normalize,
                    "read_options": read_options,
                    "threads": pool.threads,
                },
            )
            landed: dict[int, dict[str, Any]] = {}  # shards whose files landed before an earlier shard's
            for row in results.iter_rows():
                entry = json.loads(row["entry"])
                if earlier and not allow_mixed:
                    check_same_dtype(earlier, entry["computed_with"]["dtype"], out)
                landed[int(entry["name"].removeprefix("shard-"))] = entry
                while len(writer.done) in landed:  # listed in id order, as a single-process run lists them
                    writer.add(landed.pop(len(writer.done)))
                tokens += int(row["tokens"])
                seconds += float(row["seconds"])
                if progress is not None:
                    progress(int(entry["count"]), int(row["tokens"]) or 1)
                if on_shard is not None:
                    on_shard(dict(row))
            if len(writer.done) != len(plans):
                raise SimcliError(f"{out}: {len(plans) - len(writer.done)} shards did not land")
    writer.save(complete=True, empty_skipped=stats.empty_skipped)
    done = writer.done
    return StoreSummary(
        out=out,
        count=sum(s["count"] for s in done),
        dim=spec.dim,
        shards=len(done),
        shards_written=len(todo),
        shards_skipped=len(earlier),
        empty_kept=sum(s["empty"] for s in done),
        empty_skipped=stats.empty_skipped,
        truncated=sum(s["truncated"] for s in done),
        tokens=tokens,
        seconds=seconds,
        rows_read=stats.rows,
    )


def _check_finished(out: Path, entry: dict[str, Any], plan: ShardPlan) -> None:
    """A shard of the interrupted run: whole files, the planned ids, and its first row where the plan has it."""
    check_finished_files(out, entry, plan.first, plan.count)
    with open(out / f"{entry['name']}.jsonl", encoding="utf-8") as f:
        row = json.loads(f.readline())
    if (row["source"], row["line"]) != (plan.source, plan.line):
        raise ManifestMismatch(
            f"{out}: cannot resume: id {plan.first} is now {plan.source}:{plan.line}, the interrupted run had "
            f"{row['source']}:{row['line']} (input changed; {RESTART})"
        )
