"""The one encode stream and the one L2 normalisation (simcli/vectors.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from simcli.errors import SimcliError
from simcli.types import EncodeStats
from simcli.vectors import chunked, encode_blocks, l2_normalize


def test_l2_normalize_keeps_zero_rows_zero() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]], dtype=np.float64)
    y = l2_normalize(x)
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]])
    assert y.dtype == np.float64 and x[0, 0] == 3.0, "a copy unless inplace"
    f = np.array([[0.0, 2.0]], dtype=np.float32)
    assert l2_normalize(f, inplace=True) is f and f.tolist() == [[0.0, 1.0]] and f.dtype == np.float32


def test_chunked() -> None:
    assert list(chunked(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunked([], 3)) == []
    with pytest.raises(ValueError):
        list(chunked([1], 0))


class Lengths:
    """Encoder double: the vector of a text is (its length, 1); counts and progress like the real one."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(
        self, texts: Sequence[str], *, normalize: bool = False, stats: Any = None, progress: Any = None
    ):  # type: ignore[no-untyped-def]
        self.calls.append(len(texts))
        v = np.array([[len(t), 1.0] for t in texts], dtype=np.float32).reshape(len(texts), 2)
        if stats is not None:
            stats.sentences += len(texts)
        if progress is not None:
            progress(len(texts), sum(len(t) for t in texts))
        return l2_normalize(v) if normalize else v


def test_encode_blocks_streams_lazily_in_order() -> None:
    """Blocks go to the encoder one at a time as they are pulled (a generator input is never read ahead),
    records map to their vectors in order, and counts and progress add up."""
    enc = Lengths()
    pulled: list[int] = []

    def records():  # type: ignore[no-untyped-def]
        for i in range(7):
            pulled.append(i)
            yield {"text": "x" * (i + 1)}

    stats, seen = EncodeStats(), []
    stream = encode_blocks(
        enc,
        chunked(records(), 3),
        text=lambda r: r["text"],
        stats=stats,
        progress=lambda n, t: seen.append((n, t)),
    )
    block, vectors = next(stream)
    assert pulled == [0, 1, 2] and enc.calls == [3]
    assert [r["text"] for r in block] == ["x", "xx", "xxx"] and vectors[:, 0].tolist() == [1, 2, 3]
    rest = list(stream)
    assert enc.calls == [3, 3, 1] and [v[:, 0].tolist() for _, v in rest] == [[4, 5, 6], [7]]
    assert stats.sentences == 7 and seen == [(3, 6), (3, 15), (1, 7)]
    normed = next(encode_blocks(enc, [["abc"]], normalize=True))[1]
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, rtol=1e-6)


def test_encode_blocks_refuses_a_wrong_row_count() -> None:
    class Short(Lengths):
        def encode(self, texts, **kw):  # type: ignore[no-untyped-def]
            return super().encode(texts[:-1], **kw)

    with pytest.raises(SimcliError, match=r"encoder returned shape \(1, 2\) for 2 sentences"):
        list(encode_blocks(Short(), [["a", "b"]]))
