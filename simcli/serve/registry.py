"""What the server holds: named models (an encoder and the whitening its vectors go through) and index
folders, loaded once at start-up. Several indexes of one model share one loaded encoder; an index folder
changed on disk (`simcli index add` writes a new generation) is reloaded on its next search.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simcli.errors import CorruptArtifact, SimcliError, UsageError
from simcli.serve.api_errors import APIError
from simcli.serve.options import ServeOptions
from simcli.types import Log, dtype_label
from simcli.vectors import l2_normalize

# the name that always means the default model (what the examples in docs/serve.md send)
DEFAULT_NAME = "simcli"


@dataclass
class ServedModel:
    """A model name clients send: an encoder and, when there is one, the whitening of its vectors."""

    name: str
    encoder: Any
    whitening: Any = None
    source: str = ""  # what it is, for /v1/models and the startup line
    _cuts: dict[int, Any] = field(default_factory=dict, repr=False)
    _paraphraser: Any = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.whitening.dim_out if self.whitening is not None else self.encoder.dim)

    @property
    def model_id(self) -> str:
        """What an answer's `model` says: the name whose request gives these vectors again. The model itself
        (as `--model` gave it or the index recorded it) when its raw vectors are served, so that the default
        alias or an unwhitened index's name resolve to a model; the served name when a whitening is applied,
        since the bare model's name would give other vectors."""
        return self.name if self.whitening is not None else str(self.encoder.spec.model)

    @property
    def can_generate(self) -> bool:
        return bool(self.encoder.info()["can_generate"])

    def finish(self, raw: np.ndarray, *, normalize: bool = True, dimensions: int | None = None) -> np.ndarray:
        """Raw pooled vectors -> what the client gets: whitened (when the model has a whitening, keeping
        `dimensions` components), L2-normalised unless `normalize` is False."""
        w = self.whitening
        if dimensions is not None and dimensions != self.dim:
            if w is None or dimensions > w.dim_out:
                have = f"its whitening keeps {w.dim_out}" if w is not None else "it has no whitening"
                raise APIError(
                    400,
                    f"dimensions {dimensions} is not available for model {self.name!r}: it gives "
                    f"{self.dim}-d vectors and {have} (serve it with --whitening FILE to cut dimensions)",
                    param="dimensions",
                    code="invalid_value",
                )
            if dimensions < 1:
                raise APIError(400, "dimensions must be at least 1", param="dimensions", code="invalid_value")
            w = self._cut(dimensions)
        if w is not None:
            return np.asarray(w.transform(raw, normalize=normalize), dtype=np.float32)
        return l2_normalize(raw) if normalize else raw

    def _cut(self, k: int) -> Any:
        # BERT-whitening keeps the top-k components: the first k columns of W (eigenvalues descending)
        if k not in self._cuts:
            w = self.whitening
            self._cuts[k] = dataclasses.replace(w, W=np.ascontiguousarray(w.W[:, :k]), sha256="")
        return self._cuts[k]

    def paraphraser(self) -> Any:
        """The generator of this model (loaded on first use; call on the model thread)."""
        if self._paraphraser is None:
            from simcli.paraphrase import load_paraphraser

            enc = self.encoder
            # the served encoder's weights drive generation too: one copy of the model in memory
            self._paraphraser = load_paraphraser(
                str(enc.checkpoint.path), max_length=enc.max_length, encoder=enc
            )
        return self._paraphraser


def _signature(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ServedIndex:
    """An index folder and the encoder of its queries; reloaded when its manifest changes on disk."""

    def __init__(
        self, name: str, path: Path, index: Any, model: ServedModel, load: Callable[[], Any]
    ) -> None:
        from simcli.index.persist import MANIFEST

        self.name = name
        self.path = path
        self.index = index
        self.model = model
        self._load = load
        self._manifest = path / MANIFEST
        self._seen = _signature(self._manifest)
        self._lock = threading.Lock()
        self.reload_error: str | None = None

    @property
    def generation(self) -> int:
        return int(self.index.manifest.generation)

    def current(self, force: bool = False) -> Any:
        """The loaded index, reloaded first when the folder holds a newer generation (checked by a stat)."""
        try:
            seen = _signature(self._manifest)
        except OSError:
            return self.index  # mid-switch or removed: keep serving what is loaded
        if seen == self._seen and not force:
            return self.index
        with self._lock:
            if seen != self._seen or force:
                from simcli.manifest import check_same_model

                try:
                    fresh = self._load()
                    check_same_model(self.model.encoder.spec, fresh.spec, f"index {self.path}")
                except (SimcliError, OSError) as e:
                    self.reload_error = (
                        f"{self.path}: reload failed, serving generation {self.generation}: {e}"
                    )
                    return self.index
                self.index, self._seen, self.reload_error = fresh, seen, None
        return self.index

    def search(
        self,
        raw: np.ndarray,
        k: int,
        min_score: float | None,
        params: dict[str, int] | None = None,
        rerank: str = "none",
        candidates: int | None = None,
    ) -> tuple[int, list[list[Any]]]:
        """(generation, hits) of raw query vectors (the index whitens and normalises them as it was built);
        rerank "csls" re-ranks `candidates` cosine candidates by CSLS (UsageError when the index has no radii).

        Safe from the thread pool: on the CPU search parameters are per call and nothing shared changes; a GPU
        index searches one call at a time behind its device's lock, and a k, CSLS candidate count or nprobe
        above the GPU's limit (2048) is answered from the index's CPU copy (simcli.index.gpu).
        """

        def run(index: Any) -> tuple[int, list[list[Any]]]:
            step = index.csls(candidates) if rerank == "csls" else "none"
            return index.manifest.generation, index.search(
                raw, k=k, min_score=min_score, params=params, rerank=step
            )

        try:
            return run(self.current())
        except (FileNotFoundError, CorruptArtifact):
            # `index add` removed this generation's files between our check and the read: reload, retry once
            return run(self.current(force=True))

    def info(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "path": str(self.path),
            "count": self.index.count,
            "dim": self.index.dim,
            "generation": self.generation,
            "model": self.model.encoder.spec.model,
        }
        if self.reload_error:
            out["reload_error"] = self.reload_error
        return out


def parse_index_arg(value: str) -> tuple[str, Path]:
    """ "NAME=DIR" or "DIR" (named after the folder without its .idx suffix)."""
    name, sep, folder = value.partition("=")
    if sep and name and not os.path.exists(value):
        return name, Path(folder)
    path = Path(value)
    return path.name.removesuffix(".idx") or path.resolve().name, path


def check_servable(options: ServeOptions) -> None:
    """The usage errors found without loading anything (UsageError): checked before any worker starts."""
    if options.model is None and options.whitening is not None:
        raise UsageError("--whitening applies to --model (an index brings its own whitening)")
    if options.model is None and not options.indexes:
        raise UsageError("give --model M and/or --index DIR: there is nothing to serve")
    names: set[str] = set()
    for arg in options.indexes:
        name, path = parse_index_arg(arg)
        if name in names:
            raise UsageError(f"two indexes are named {name!r}: give one as --index NAME=DIR")
        names.add(name)
        if not path.is_dir():
            raise UsageError(f"--index {arg}: {path} is not a folder")


def _encoder_key(spec: Any) -> tuple[Any, ...]:
    return (spec.weights_sha256, spec.pooling, spec.max_length, spec.tokenizer)


class Registry:
    """The models and indexes of one server process."""

    def __init__(self) -> None:
        self.models: dict[str, ServedModel] = {}
        self.indexes: dict[str, ServedIndex] = {}
        self.default: ServedModel | None = None
        self.encoders: list[Any] = []

    @classmethod
    def load(cls, options: ServeOptions, log: Log | None = None) -> Registry:
        """Load `options.model` (with its whitening) and every index, sharing encoders where they match.

        Raises:
            SimcliError: a model, whitening or index that cannot be loaded, or clashing names.
        """
        check_servable(options)
        reg = cls()
        shared: dict[tuple[Any, ...], Any] = {}
        if options.model is not None:
            from simcli.models.encoder import load_encoder

            # the server's token budget goes to its batcher, not to the encoder's own encode() calls
            enc = load_encoder(dataclasses.replace(options.encoder, batch_tokens=None))
            w = None
            if options.whitening is not None:
                from simcli.whitening import whitening_for

                w = whitening_for(options.whitening, enc.spec, f"model {options.model}")
            reg._add_encoder(enc, shared)
            reg._add_model(ServedModel(options.model, enc, w, source="model"))
        for arg in options.indexes:
            reg._add_index(arg, options, shared)
        return reg

    def _add_encoder(self, enc: Any, shared: dict[tuple[Any, ...], Any]) -> None:
        shared.setdefault(_encoder_key(enc.spec), enc)
        if enc not in self.encoders:
            self.encoders.append(enc)

    def _add_model(self, model: ServedModel) -> None:
        if model.name in self.models or model.name in self.indexes:
            raise UsageError(
                f"two things to serve are named {model.name!r}: name the index with --index NAME=DIR"
            )
        self.models[model.name] = model
        if self.default is None:
            self.default = model
            self.models.setdefault(DEFAULT_NAME, model)

    def _add_index(self, arg: str, options: ServeOptions, shared: dict[tuple[Any, ...], Any]) -> None:
        from simcli.index import Index

        name, path = parse_index_arg(arg)
        override = None
        default = self.default
        if default is not None and default.source == "model":
            from simcli.index.persist import read

            recorded = read(path).model
            if recorded is not None and recorded.weights_sha256 == default.encoder.spec.weights_sha256:
                override = options.model  # the index's model is the one given: load it from there

        # dtype "auto": the index's own rule (the dtype its vectors were computed with on this kind of device)
        dtype = None if options.encoder.dtype == "auto" else options.encoder.dtype

        def load() -> Any:
            return Index.load(path, device=options.encoder.device, dtype=dtype, model=override)

        idx = load()
        spec = idx.spec
        if spec is None:
            raise UsageError(
                f"--index {arg}: built from vectors without a model, so it cannot take text queries"
            )
        enc = shared.get(_encoder_key(spec))
        if enc is None:
            enc = idx.encoder()  # the model, pooling, tokenizer and max length recorded in the manifest
        self._add_encoder(enc, shared)
        model = ServedModel(name, enc, idx.whitening, source=f"index {path}")
        self._add_model(model)
        self.models.setdefault(spec.model, ServedModel(spec.model, enc, None, source="model"))
        self.indexes[name] = ServedIndex(name, path, idx, model, load)

    # -- lookups ----------------------------------------------------------------------------------------
    def model(self, name: str | None) -> ServedModel:
        if name is None:
            assert self.default is not None
            return self.default
        found = self.models.get(name)
        if found is None:
            raise APIError(
                404,
                f"model {name!r} is not served here (served: {', '.join(self.models)})",
                param="model",
                code="model_not_found",
            )
        return found

    def index(self, name: str) -> ServedIndex:
        found = self.indexes.get(name)
        if found is None:
            served = ", ".join(sorted(self.indexes)) or "none"
            raise APIError(
                404,
                f"index {name!r} is not served here (served: {served})",
                param="index",
                code="index_not_found",
            )
        return found

    def describe(self) -> str:
        """One line for the startup message: models, indexes, device and dtype."""
        models = ", ".join(sorted({m.name for m in self.models.values()}))
        indexes = ", ".join(f"{i.name} ({i.index.count} vectors, {i.path})" for i in self.indexes.values())
        devices = ", ".join(sorted({f"{e.device} {dtype_label(e.dtype)}" for e in self.encoders}))
        import torch

        threads = torch.get_num_threads()
        return f"models: {models}; indexes: {indexes or 'none'}; device/dtype: {devices}; model threads: {threads}"
