"""`simcli encode --ray`: the driver's side (load the model once for its description, join Ray, report).

Imported only when `--ray` is given: Ray, torch and the scale package load here, never at start-up.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simcli.cli._app import counted
from simcli.cli.encode import _describe, _expected_rows, _note, _progress, summarize
from simcli.types import EncoderConfig


def encode_on_ray(
    address: str,
    inputs: Sequence[str],
    out: Path,
    *,
    config: EncoderConfig,
    whitening: Path | None,
    normalize: bool,
    store_dtype: str,
    shard_size: int,
    resume: bool,
    overwrite: bool,
    allow_mixed: bool,
    read_options: dict[str, Any],
    workers: int | None,
    gpus_per_worker: float,
    cpus_per_worker: float | None,
) -> None:
    from simcli.scale.runtime import connect
    from simcli.store import check_output_folder

    check_output_folder(out, resume=resume, overwrite=overwrite)
    from simcli.models.encoder import load_encoder
    from simcli.scale.encode import encode_store, workers_for
    from simcli.scale.plan import absolute, check_inputs

    check_inputs(
        inputs, read_options["column"], read_options["errors"]
    )  # a typo fails before the model loads

    # The model is opened here once, on the CPU: a bad model or whitening fails before Ray starts, and its
    # ModelSpec goes into the manifest before the first actor has loaded it.
    probe: Any = load_encoder(config.with_options(device="cpu", dtype="float32"))
    w = None
    if whitening is not None:
        from simcli.whitening import WhitenedEncoder, Whitening

        w = Whitening.load(whitening)
        probe = WhitenedEncoder(probe, w, whitening)
        normalize = True
    spec, max_length = probe.spec, probe.max_length
    described = _describe(probe).split(", device ")[0]
    del probe
    if Path(config.model).exists():  # a local folder: where the workers find it too (a shared filesystem)
        config = config.with_options(model=absolute(config.model))
    ray = connect(address)
    pool = workers_for(ray, workers, cpus_per_worker, gpus_per_worker)
    _note(
        f"{described}; on Ray: {counted(pool.count, 'worker')} of {pool.cpus:g} CPU{'' if pool.cpus == 1 else 's'}"
        + (f" and {pool.gpus:g} GPUs" if pool.gpus else "")
    )
    local = not any("://" in p or p.lower().endswith(".parquet") for p in inputs)
    total = (
        _expected_rows(inputs, read_options["column"], None, shard_size)
        if local and sys.stderr.isatty()
        else None
    )
    with _progress(total) as progress:
        summary = encode_store(
            ray, inputs, config, spec, out,
            pool=pool, whitening=w, shard_size=shard_size, store_dtype=store_dtype, normalize=normalize,
            resume=resume, overwrite=overwrite, read_options=read_options, allow_mixed=allow_mixed,
            progress=progress,
        )  # fmt: skip
    summarize(summary, store_dtype, max_length)
