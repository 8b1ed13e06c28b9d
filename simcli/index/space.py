"""The index's vector space: which whitening (if any) a build applies, and raw vectors -> index vectors.

Corpus and queries pass through the same `to_index_space` (whitened when there is a whitening, then
L2-normalised), so a query always lands where the corpus vectors were put.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simcli.errors import BadInput, ManifestMismatch, UsageError
from simcli.index.inputs import Source
from simcli.index.manifest import WhiteningRecord
from simcli.types import Log, ModelSpec
from simcli.vectors import l2_normalize

if TYPE_CHECKING:
    from simcli.whitening import MomentAccumulator

WHITEN_AUTO_DIM = (
    256  # kexue.fm/archives/8069: whitening to 256-d cut memory 3x and search time ~4x at equal quality
)


def whiten_auto_dim(dim: int) -> int:
    """The usual cut for a model of this width (kexue.fm/archives/8069): 128 for small/tiny (<= 384), 384 for large
    (>= 1024), WHITEN_AUTO_DIM for base."""
    if dim <= 384:
        return min(128, dim)
    return 384 if dim >= 1024 else WHITEN_AUTO_DIM


def supervised(spec: ModelSpec) -> bool:
    """Vectors trained for cosine, which whitening does not help (kexue.fm/archives/8069): RoFormer-Sim's, a sentence-bert's
    (m3e, sentence-transformers folders), and SimBERT's pooler (a BERT's `pooler` vectors: auto pooling picks it
    only for SimBERT, Checkpoint.similarity_trained)."""
    return spec.family in ("roformer-sim", "sentence-bert") or (
        spec.family == "bert" and spec.pooling == "pooler"
    )


def whiten_value(whiten: str | int) -> str | int:
    """`--whiten` checked: "auto", "none", "full" or a number of output dimensions."""
    if isinstance(whiten, int):
        return whiten
    w = str(whiten).strip().lower()
    if w.isdigit():
        return int(w)
    if w not in ("auto", "none", "full"):
        raise UsageError(f"--whiten must be auto, none, full or a number of dimensions K, got {whiten!r}")
    return w


def to_index_space(x: np.ndarray, whitening: Any) -> np.ndarray:
    """Raw vectors as the index holds them: whitened (when there is a whitening), L2-normalised float32.

    A zero vector stays zero (its cosine with everything is 0).
    """
    if whitening is not None:
        return np.asarray(whitening.transform(x, normalize=True), dtype=np.float32)
    return l2_normalize(np.asarray(x, dtype=np.float32))


def fit_whitening(
    src: Source,
    whiten: str | int,
    whitening: str | Path | None,
    log: Log,
    moments: Callable[[], MomentAccumulator] | None = None,
) -> Any:
    """The Whitening to apply before normalising (None for none), following `--whiten` / `--whitening`.

    auto: none for supervised RoFormer-Sim and for plain arrays (no model to judge by); otherwise a fit on the
    corpus with the usual cut for the model's width, capped below the covariance rank (kexue.fm/archives/8069; the faiss wiki).
    `moments()` gathers the source's moments some other way (on Ray: simcli.scale.whiten) instead of a pass
    over its chunks here.
    """
    from simcli.whitening import Whitening

    def fitted(dim: int | None, clamp: bool = False) -> Any:
        if moments is not None:
            return Whitening.from_moments(moments(), dim=dim, spec=src.spec, clamp=clamp, source=src.describe)
        return Whitening.fit(src.chunks(), dim=dim, spec=src.spec, clamp=clamp, source=src.describe)

    how = whiten_value(whiten)
    if whitening is not None:
        if how != "auto":
            raise UsageError("give --whiten or --whitening FILE, not both")
        w = Whitening.load(whitening)
        if src.spec is not None:
            w.check_fits(src.spec, f"the corpus {src.describe}")
        elif w.dim_in != src.dim:
            raise ManifestMismatch(
                f"whitening {whitening} expects dim {w.dim_in}, the vectors have {src.dim}"
            )
        return w
    if how == "none":
        return None
    if how == "auto":
        if src.spec is None or supervised(src.spec):
            return None
        if src.normalized:
            log(
                f"note: {src.describe} holds L2-normalised vectors; whitening needs raw ones, so none is applied"
            )
            return None
        w = fitted(whiten_auto_dim(src.dim), clamp=True)
        clamped = f" (lowered from {w.clamped_from}: rank {w.rank})" if w.clamped_from else ""
        log(f"whitening fitted on {w.n} vectors: {w.dim_in} -> {w.dim_out} dimensions{clamped}")
        return w
    if src.normalized:
        raise BadInput(f"{src.describe}: L2-normalised vectors; whitening must be fitted on raw vectors")
    w = fitted(None if how == "full" else int(how))
    log(f"whitening fitted on {w.n} vectors: {w.dim_in} -> {w.dim_out} dimensions")
    return w


def whitening_record(w: Any) -> WhiteningRecord | None:
    """The manifest's record of a Whitening (None for none)."""
    if w is None:
        return None
    return WhiteningRecord(
        sha256=w.sha256,
        dim_in=w.dim_in,
        dim_out=w.dim_out,
        n=w.n,
        beta=w.beta,
        gamma=w.gamma,
        source=str(w.path) if w.path is not None else w.source,
    )
