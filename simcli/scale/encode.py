"""`simcli encode --ray`: a Ray Data pipeline of shard plans through a pool of encoder actors.

    driver: check the output folder and the inputs, open the model once on the CPU for its spec (`probe`,
        before Ray starts); once connected, choose the actor pool (`encode_on_ray`)
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
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simcli.errors import ManifestMismatch, SimcliError
from simcli.io import ReadStats, no_sentences
from simcli.scale.plan import ShardPlan, absolute, check_inputs, plan_shards, read_shard
from simcli.scale.runtime import cluster_cpus
from simcli.store import (
    RESTART,
    StoreSummary,
    StoreWriter,
    check_finished_files,
    check_input_end,
    check_output_folder,
    check_same_dtype,
    check_shape,
    store_header,
)
from simcli.types import EncoderConfig, ModelSpec, ProgressFn

if TYPE_CHECKING:
    from simcli.whitening import Whitening


@dataclass(frozen=True)
class Workers:
    """The actor pool: how many actors and what each one holds."""

    count: int
    cpus: float
    gpus: float

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))

    def describe(self) -> str:
        """ "2 workers of 1 CPU", "4 workers of 1 CPU and 1 GPUs": what the run's line says of the pool."""
        workers = f"{self.count:,} worker{'' if self.count == 1 else 's'}"
        gpus = f" and {self.gpus:g} GPUs" if self.gpus else ""
        return f"{workers} of {self.cpus:g} CPU{'' if self.cpus == 1 else 's'}{gpus}"


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
        measured: str | None = None,
    ) -> None:
        import torch

        from simcli.models.encoder import load_encoder
        from simcli.models.remembered import RUN_FOLDER_ENV

        torch.set_num_threads(threads)  # actors on one machine must not fight over its cores
        if measured is not None and Path(measured).is_dir():
            # on the driver's machine: one reading of --dtype auto's probes for all the actors there, so that
            # they compute in one dtype (remembered.once_per_run); elsewhere each actor reads its own
            os.environ[RUN_FOLDER_ENV] = measured
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
            check_shape(vectors, len(rows), self.encoder.spec.dim)
            vectors = np.ascontiguousarray(vectors, dtype=self.store_dtype)
            entry = write_shard(self.out, plan.k, plan.first, rows, vectors)
            entry["truncated"] = stats.truncated
            entry["computed_with"] = computed_with(self.encoder)
            results["entry"].append(json.dumps(entry))
            results["tokens"].append(stats.tokens)
            results["seconds"].append(stats.seconds)
            results["worker"].append(os.getpid())
        return results


ProgressBar = Callable[[], AbstractContextManager[ProgressFn | None]]
"""Opens the caller's progress display when encoding starts and gives its (sentences, tokens) callback."""


@dataclass(frozen=True)
class Probe:
    """The model as the driver opened it once, on the CPU, before Ray starts: a bad model, whitening file or
    input fails there, and the ModelSpec goes into the manifest before any actor has loaded the model."""

    config: EncoderConfig  # what the actors load: a local model folder as an absolute path
    spec: ModelSpec
    info: dict[str, Any]  # the probe's Encoder.info()
    whitening: Whitening | None

    @property
    def max_length(self) -> int:
        return int(self.info["max_length"])


def probe(
    inputs: Sequence[str],
    out: Path,
    config: EncoderConfig,
    *,
    whitening: Path | None,
    read_options: Mapping[str, Any],
    resume: bool,
    overwrite: bool,
) -> Probe:
    """Check the output folder and the inputs, then open the model (and its whitening) once on the CPU."""
    from simcli.models.encoder import load_encoder
    from simcli.whitening import WhitenedEncoder

    check_output_folder(out, resume=resume, overwrite=overwrite)
    # a typo in a path or column fails before the model loads
    check_inputs(inputs, read_options["column"], read_options["errors"])
    encoder: Any = load_encoder(config.with_options(device="cpu", dtype="float32"))
    w = None
    if whitening is not None:
        encoder = WhitenedEncoder.from_file(encoder, whitening)
        w = encoder.whitening
    if Path(config.model).exists():  # a local folder: where the workers find it too (a shared filesystem)
        config = config.with_options(model=absolute(config.model))
    return Probe(config, encoder.spec, encoder.info(), w)


def encode_on_ray(
    ray: Any,
    probed: Probe,
    inputs: Sequence[str],
    out: Path,
    *,
    workers: int | None,
    cpus_per_worker: float | None,
    gpus_per_worker: float,
    shard_size: int,
    store_dtype: str,
    normalize: bool,
    resume: bool,
    overwrite: bool,
    allow_mixed: bool,
    read_options: dict[str, Any],
    log: Callable[[str], None],
    progress: ProgressBar | None = None,
) -> StoreSummary:
    """`simcli encode --ray` once `probe` has opened the model and `ray` is connected: choose the actor pool,
    say what runs where, and encode the store (whitened vectors are always L2-normalised)."""
    from simcli.models.encoder import describe

    pool = workers_for(ray, workers, cpus_per_worker, gpus_per_worker)
    log(f"{describe(probed.info, device=False)}; on Ray: {pool.describe()}")
    with (progress or nullcontext)() as advance:
        return encode_store(
            ray, inputs, probed.config, probed.spec, out,
            pool=pool, whitening=probed.whitening, shard_size=shard_size, store_dtype=store_dtype,
            normalize=normalize or probed.whitening is not None, resume=resume, overwrite=overwrite,
            read_options=read_options, allow_mixed=allow_mixed, progress=advance,
        )  # fmt: skip


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
    measured: Path | None = None,
) -> StoreSummary:
    """Encode `inputs` into the store `out` on the Ray runtime `ray` (see the module's docstring).

    Args:
        spec: the ModelSpec of the vectors (the driver opens the model once to know it before any actor
            has loaded it), recorded in the manifest and compared on --resume.
        pool: the actor pool.
        on_shard: called with each result row ({"entry", "tokens", "seconds", "worker"}) as it lands.
        total: called once with the number of rows, once the inputs are planned (for a progress bar).
        measured: where the actors on this machine share `--dtype auto`'s probe readings (default: a
            temporary folder of this run).
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
        _check_earlier(out, plans, earlier, progress)
        todo = plans[len(earlier) :]
        landed = _Landed(writer, earlier if not allow_mixed else [], progress, on_shard)
        if todo:
            with _run_folder(measured) as shared:
                actor = {
                    "config": actor_config(config), "whitening": whitening, "out": str(out.absolute()),
                    "store_dtype": store_dtype, "normalize": normalize, "read_options": read_options,
                    "threads": pool.threads, "measured": shared,
                }  # fmt: skip
                for row in _pipeline(ray, todo, pool, actor).iter_rows():
                    landed.add(row)
            if len(writer.done) != len(plans):
                raise SimcliError(f"{out}: {len(plans) - len(writer.done)} shards did not land")
    return writer.finish(
        spec.dim,
        written=len(todo),
        skipped=len(earlier),
        empty_skipped=stats.empty_skipped,
        tokens=landed.tokens,
        seconds=landed.seconds,
        rows_read=stats.rows,
    )


def _run_folder(given: Path | None) -> AbstractContextManager[str]:
    """`given`, or a temporary folder removed when the run ends."""
    return nullcontext(str(given)) if given is not None else tempfile.TemporaryDirectory(prefix="simcli-ray-")


def _check_earlier(
    out: Path, plans: list[ShardPlan], earlier: list[dict[str, Any]], progress: ProgressFn | None
) -> None:
    """The interrupted run's shards fit the input as it is planned now (they are reported as skipped)."""
    check_input_end(out, len(plans), len(earlier))
    for plan, entry in zip(plans, earlier):
        _check_finished(out, entry, plan)
        if progress is not None:
            progress(plan.count, 0)


def _pipeline(ray: Any, todo: list[ShardPlan], pool: Workers, actor: dict[str, Any]) -> Any:
    """The Ray Data pipeline: one block a shard plan, through a pool of `ShardEncoder` actors built from `actor`."""
    ds = ray.data.from_items([{"plan": p.to_json()} for p in todo], override_num_blocks=len(todo))
    return ds.map_batches(
        ShardEncoder,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(pool.count, len(todo))),
        num_cpus=pool.cpus,
        num_gpus=pool.gpus or None,
        fn_constructor_kwargs=actor,
    )


@dataclass
class _Landed:
    """The driver's side of the shards as they land, in any order: listed in the manifest in id order, as a
    single-process run lists them; tokens and encoder time summed."""

    writer: StoreWriter
    earlier: list[dict[str, Any]]  # finished shards whose device dtype the new ones must share
    progress: ProgressFn | None
    on_shard: Callable[[dict[str, Any]], None] | None
    tokens: int = 0
    seconds: float = 0.0
    waiting: dict[int, dict[str, Any]] = field(default_factory=dict)  # landed before an earlier shard

    def add(self, row: dict[str, Any]) -> None:
        entry = json.loads(row["entry"])
        if self.earlier:
            check_same_dtype(self.earlier, entry["computed_with"]["dtype"], self.writer.out)
        self.waiting[int(entry["name"].removeprefix("shard-"))] = entry
        done = self.writer.done
        while len(done) in self.waiting:
            self.writer.add(self.waiting.pop(len(done)))
        self.tokens += int(row["tokens"])
        self.seconds += float(row["seconds"])
        if self.progress is not None:
            self.progress(int(entry["count"]), int(row["tokens"]) or 1)
        if self.on_shard is not None:
            self.on_shard(dict(row))


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
