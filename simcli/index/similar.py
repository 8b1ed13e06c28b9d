"""Cosine similarity of sentences with a model (and optionally a whitening), for `simcli similar`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def cosine_matrix(
    texts: Sequence[str],
    model: str | Any,
    *,
    whitening: str | Path | None = None,
    encoder_options: dict[str, Any] | None = None,
) -> np.ndarray:
    """The (n, n) cosine matrix of `texts`: encoded raw, whitened when a file is given, L2-normalised.

    Args:
        texts: the sentences.
        model: hub id, local folder or a loaded Encoder.
        whitening: a whitening file fitted for this model (checked against the encoder's spec).
        encoder_options: pooling / tokenizer / device / dtype / max_length for `load_encoder`.
    """
    if isinstance(model, str):
        from simcli.models.encoder import load_encoder

        enc = load_encoder(model, **{k: v for k, v in (encoder_options or {}).items() if v is not None})
    else:
        enc = model
    x = enc.encode(list(texts), normalize=False)  # (n, dim) raw: whitening is fitted on raw vectors
    if whitening is not None:
        from simcli.whitening import whitening_for

        x = whitening_for(whitening, enc.spec, f"model {enc.spec.model}").transform(x, normalize=True)
    else:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.clip(x @ x.T, -1.0, 1.0)
