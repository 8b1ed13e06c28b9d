"""The encoders an index uses: the build's (from --model and the encoder options) and the queries' (from the
manifest), loaded at most once per Index behind a lock so concurrent searches share one.

All encoder loading of simcli.index happens here.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from simcli.errors import ModelError, UsageError
from simcli.index.manifest import IndexManifest
from simcli.manifest import check_same_model
from simcli.types import EncoderConfig, Log


def build_encoder(model: str | EncoderConfig | Any | None, options: dict[str, Any], log: Log) -> Any:
    """The encoder for a text build: `model` (a name or an EncoderConfig) loaded with the encoder options
    (EncoderConfig fields; None values are ignored), or `model` itself when it is a loaded Encoder."""
    if model is None:
        raise UsageError("text inputs need --model (or give a vector store folder)")
    if not isinstance(model, str | EncoderConfig):
        return model
    from simcli.models.encoder import load_encoder

    config = model if isinstance(model, EncoderConfig) else EncoderConfig(model)
    enc = load_encoder(config.with_options(**options))
    log(
        f"model {enc.spec.model} ({enc.spec.family}, pooling {enc.spec.pooling}, dim {enc.spec.dim}) on {enc.device}"
    )
    return enc


def _model_location(manifest: IndexManifest) -> str:
    spec = manifest.model
    assert spec is not None
    # The path as given may be relative to where the build ran: prefer the resolved folder when it still exists.
    if manifest.model_path and Path(manifest.model_path).is_dir():
        return manifest.model_path
    return spec.model


class QueryEncoder:
    """The index's recorded encoder (model, pooling, tokenizer, max length), loaded on first use, once, even
    when several threads ask at the same time.

    Args:
        device: where it runs.
        dtype: its compute dtype; None: the dtype the index was computed with (`recorded_dtype`).
        model: where the model lives now, when the recorded path moved (its weights must match).
    """

    def __init__(self, path: Path, device: str = "auto", dtype: str | None = None, model: str | None = None):
        self.path, self.device, self.dtype, self.model = path, device, dtype, model
        self._encoder: Any = None
        self._lock = threading.Lock()

    def get(self, manifest: IndexManifest) -> Any:
        """The loaded encoder (UsageError for an index built from plain vectors)."""
        enc = self._encoder
        if enc is not None:
            return enc
        with self._lock:
            if self._encoder is None:
                self._encoder = self._load(manifest)
            return self._encoder

    def _load(self, manifest: IndexManifest) -> Any:
        spec = manifest.model
        if spec is None:
            raise UsageError(f"{self.path} was built from vectors without a model: query it with vectors")
        from simcli.models.device import recorded_dtype
        from simcli.models.encoder import load_encoder

        where = self.model or _model_location(manifest)
        from simcli.models.loading import is_local_name

        if self.model is None and is_local_name(where) and not Path(where).expanduser().is_dir():
            raise ModelError(
                f"{self.path}: its model folder {where} is missing; pass --model with the folder that holds "
                f"those weights (sha256 {spec.weights_sha256[:16]}...)"
            )
        dtype = self.dtype or recorded_dtype(manifest.computed_with, self.device)
        config = EncoderConfig(
            where, pooling=spec.pooling, tokenizer=spec.tokenizer, max_length=spec.max_length,
            device=self.device, dtype=dtype, revision=spec.revision,
        )  # fmt: skip
        enc = load_encoder(config)
        check_same_model(spec, enc.spec, f"model {where}")
        return enc
