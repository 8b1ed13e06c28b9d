"""Sentence vectors from token vectors (REFERENCE.md 1.2), with padding masked out."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from simcli.errors import ModelError, UsageError
from simcli.types import POOLINGS

# Pooling that needs every layer's output (transformers' hidden_states), not just the last one.
NEEDS_ALL_LAYERS = frozenset({"first-last-avg"})


def resolve_pooling(requested: str, family: str, has_pooler: bool, similarity_trained: bool) -> str:
    """The pooling to use: `auto` is the trained linear pooler for RoFormer-Sim and SimBERT
    (`similarity_trained`), first-last-avg otherwise.

    `pooler` is refused where the checkpoint has no trained pooler weights (WoBERT, RoFormer).
    """
    if requested not in POOLINGS:
        raise UsageError(f"--pooling {requested!r} is not one of {', '.join(POOLINGS)}")
    if requested == "auto":
        return "pooler" if similarity_trained else "first-last-avg"
    if requested == "pooler" and not has_pooler:
        raise ModelError(
            f"--pooling pooler needs trained pooler weights, and this {family} checkpoint has none "
            "(use cls, last-avg or first-last-avg)"
        )
    return requested


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens ([CLS] and [SEP] included, padding excluded). hidden (b, s, h), mask (b, s)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (b, s, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def pool(
    hidden_states: Sequence[torch.Tensor],
    mask: torch.Tensor,
    mode: str,
    pooler: torch.nn.Linear | None = None,
    pooler_activation: str = "linear",
) -> torch.Tensor:
    """One sentence vector per row, in float32.

    Args:
        hidden_states: the last layer only, or (embeddings, block 0, ..., last) as transformers returns them.
        mask: attention mask (b, s), 1 on real tokens.
        mode: a resolved pooling (not "auto").
        pooler: the checkpoint's pooler dense layer, for mode "pooler".
        pooler_activation: "linear" (RoFormer-Sim, SimBERT) or "tanh" (BERT's NSP pooler).
    """
    last = hidden_states[-1]
    if mode == "cls":
        return last[:, 0].float()
    if mode == "pooler":
        if pooler is None:
            raise ModelError("--pooling pooler: this checkpoint has no pooler weights")
        v = pooler(last[:, 0])
        return (torch.tanh(v) if pooler_activation == "tanh" else v).float()
    if mode == "last-avg":
        return masked_mean(last.float(), mask)
    if mode == "first-last-avg":
        # Block 0's output is hidden_states[1]; hidden_states[0] is the embedding layer (REFERENCE 1.2).
        if len(hidden_states) < 3:
            raise ValueError("first-last-avg needs all hidden states")
        return (masked_mean(hidden_states[1].float(), mask) + masked_mean(last.float(), mask)) / 2
    raise UsageError(f"--pooling {mode!r} is not one of {', '.join(p for p in POOLINGS if p != 'auto')}")
