"""Cosine similarity of sentences with a model (and optionally a whitening), for `simcli similar`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simcli.types import EncoderConfig
from simcli.vectors import l2_normalize


def cosine_matrix(
    texts: Sequence[str],
    model: str | EncoderConfig | Any,
    *,
    whitening: str | Path | None = None,
) -> np.ndarray:
    """The (n, n) cosine matrix of `texts`: encoded raw, whitened when a file is given, L2-normalised.

    Args:
        texts: the sentences.
        model: hub id, local folder, an EncoderConfig or a loaded Encoder.
        whitening: a whitening file fitted for this model (checked against the encoder's spec).
    """
    if isinstance(model, str | EncoderConfig):
        from simcli.models.encoder import load_encoder

        enc = load_encoder(model)
    else:
        enc = model
    x = enc.encode(list(texts), normalize=False)  # (n, dim) raw: whitening is fitted on raw vectors
    if whitening is not None:
        from simcli.whitening import whitening_for

        x = whitening_for(whitening, enc.spec, f"model {enc.spec.model}").transform(x, normalize=True)
    else:
        x = l2_normalize(x)
    return np.clip(x @ x.T, -1.0, 1.0)
