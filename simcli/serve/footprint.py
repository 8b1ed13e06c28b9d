"""The memory one serve worker will hold, estimated before any worker starts (no model is loaded for it).

A worker's resident memory is the interpreter with torch and the serving stack, plus its models' weights and
its indexes' files, each loaded once per process. Measured with `ps` on an idle worker: 277 MB with an 18 MB
demo model, 364 MB with m3e-small (96 MB of weights); under load the batch buffers add up to ~200 MB
(docs/performance.md, Memory: ~550 MB peak with m3e-small). So BASE_BYTES covers the stack and the
buffers, and each weights or index file counts at its size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from simcli.serve.options import ServeOptions

BASE_BYTES = 512 * 2**20  # interpreter, torch, FastAPI/uvicorn, batch buffers (module docstring)
UNKNOWN_MODEL_BYTES = 512 * 2**20  # a model not on disk yet (a hub id not downloaded): BERT-base in float32
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class Footprint:
    """The estimate, and the models whose size was not known (counted as UNKNOWN_MODEL_BYTES)."""

    bytes: int
    unknown: tuple[str, ...] = ()


def worker_footprint(options: ServeOptions) -> Footprint:
    """BASE_BYTES + the weights of every distinct model served + the files of every index (never raises:
    what cannot be read here counts as unknown, and the workers report the real error when they load it)."""
    from simcli.serve.registry import parse_index_arg

    models: set[str] = set()
    if options.model is not None:
        models.add(options.model)
    total = BASE_BYTES
    for arg in options.indexes:
        folder = parse_index_arg(arg)[1]
        size, model = _index_files(folder)
        total += size
        if model is not None:
            models.add(model)
    unknown, seen = [], set()
    for name in sorted(models):
        weights = weights_file(name)
        if weights is None:
            unknown.append(name)
            total += UNKNOWN_MODEL_BYTES
        elif weights.resolve() not in seen:  # --model and an index of the same model: one copy
            seen.add(weights.resolve())
            total += weights.stat().st_size
    return Footprint(total, tuple(unknown))


def weights_file(model: str) -> Path | None:
    """A model's weights file: in a local folder, a fetched `pip:` source or short name, or a hub id's local
    cache; None when it is not on disk yet."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        cached = _cached_folder(model)
        if cached is None:
            return _hub_cached(model)
        folder = cached
    return next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)


def _cached_folder(model: str) -> Path | None:
    from simcli.errors import SimcliError
    from simcli.models.sources import cached_folder, is_source, parse_source

    if not is_source(model):
        return None
    try:
        folder = cached_folder(parse_source(model))
    except SimcliError:
        return None
    return folder if folder.is_dir() else None


def _hub_cached(model: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in WEIGHT_FILES:
        try:
            found = try_to_load_from_cache(model, name)
        except Exception:  # noqa: BLE001  (a name that is no hub id: unknown, not an error here)
            return None
        if isinstance(found, str):
            return Path(found)
    return None


def _index_files(folder: Path) -> tuple[int, str | None]:
    """(bytes of the files the index folder's manifest names, the model it records)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        files = manifest.get("files", {}).values()
        size = sum(int(f.get("bytes", 0)) for f in files)
        model = (manifest.get("model") or {}).get("model")
    except (OSError, ValueError, AttributeError, TypeError):
        return 0, None
    return size, model if isinstance(model, str) else None
