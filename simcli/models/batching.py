"""Length-sorted batching under a token budget; the one home of this mechanism in simcli."""

from __future__ import annotations

from collections.abc import Sequence


def batches(lengths: Sequence[int], batch_tokens: int, max_batch: int = 256) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first.

    Each batch's padded size (its longest length x its row count) stays within `batch_tokens`, and a batch
    never has more than `max_batch` rows; a sentence longer than the budget gets a batch of its own.
    Callers scatter results back by index, which restores the input order.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: equal lengths keep input order
    out: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (longest * (len(current) + 1) > batch_tokens or len(current) >= max_batch):
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    return out
