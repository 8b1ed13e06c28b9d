"""Sentence vectors in bulk: the one encode stream every stage uses, and the one L2 normalisation.

The stream (`encode_blocks`) cuts any iterable into blocks and hands each block to `Encoder.encode`, which
tokenises the next chunk in a background thread while the model runs, removes duplicates, sorts by length,
batches under the token budget and reports progress as (sentences, tokens). The store (one block a shard),
index sources, whitening fit and evaluation all go through it, so memory, counts and progress mean the same
everywhere. numpy is imported on first use: the CLI imports this module at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from simcli.errors import SimcliError

if TYPE_CHECKING:
    import numpy as np

    from simcli.types import EncodeStats, ProgressFn, SentenceEncoder

T = TypeVar("T")

#: Sentences handed to one `Encoder.encode` call by streams that do not choose their own block size.
BLOCK_SENTENCES = 8192


def l2_normalize(x: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Rows scaled to unit length, in x's float dtype. A zero row stays zero (never NaN): cosine with it is 0.

    `inplace=True` scales x itself (it must be a float array) and returns it.
    """
    import numpy as np

    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    norms[norms == 0] = 1.0
    if inplace:
        x /= norms
        return x
    return x / norms


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter; none is empty)."""
    if size < 1:
        raise ValueError(f"block size must be at least 1, got {size}")
    block: list[T] = []
    for item in items:
        block.append(item)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def encode_blocks(
    encoder: SentenceEncoder,
    blocks: Iterable[Sequence[T]],
    *,
    text: Callable[[T], str] | None = None,
    normalize: bool = False,
    stats: EncodeStats | None = None,
    progress: ProgressFn | None = None,
) -> Iterator[tuple[Sequence[T], np.ndarray]]:
    """Each block with the float32 (len(block), dim) vectors of its texts, in order.

    Args:
        encoder: anything with the `simcli.types.SentenceEncoder` interface.
        blocks: lists of texts, or of records whose text `text(record)` gives (e.g. `chunked(records, n)`).
        normalize: L2-normalise the vectors (raw pooled vectors otherwise; whitening wants them raw).
        stats: an EncodeStats the encoder adds its counts to (read it between blocks for per-block counts).
        progress: called with (sentences, tokens) as batches finish.
    """
    for block in blocks:
        texts: Sequence[Any] = block if text is None else [text(r) for r in block]
        vectors = encoder.encode(texts, normalize=normalize, stats=stats, progress=progress)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise SimcliError(f"encoder returned shape {vectors.shape} for {len(texts)} sentences")
        yield block, vectors
