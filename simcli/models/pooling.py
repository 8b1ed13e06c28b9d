"""Sentence vectors from token vectors (kexue.fm/archives/8321 and 8454), with padding masked out.

Besides the poolings of the published evaluations (pooler, cls, last-avg, first-last-avg), the other modes of
sentence-transformers' Pooling module, computed as it does: max, weighted-mean (position weights 1..n),
last-token, mean-sqrt-len (sum / sqrt(n)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from simcli.errors import ModelError, UsageError
from simcli.models.settings import PoolingStatement
from simcli.types import POOLINGS

# Pooling that needs every layer's output (transformers' hidden_states), not just the last one.
NEEDS_ALL_LAYERS = frozenset({"first-last-avg"})


def resolve_pooling(
    requested: str,
    family: str,
    has_pooler: bool,
    similarity_trained: bool,
    stated: PoolingStatement | None = None,
) -> str:
    """The pooling to use: `auto` is the pooling the checkpoint states (`stated`: sentence-transformers
    modules, m3e's config), else the trained linear pooler for RoFormer-Sim and SimBERT (`similarity_trained`),
    else first-last-avg.

    `pooler` is refused where the checkpoint has no trained pooler weights (WoBERT, RoFormer).
    """
    if requested not in POOLINGS:
        raise UsageError(f"--pooling {requested!r} is not one of {', '.join(POOLINGS)}")
    if requested == "auto":
        if stated is not None:
            return stated.mode
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


def _masked_max(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).max(1).values


def _weighted_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token i (1-based) weighs i: later tokens count more (SGPT; rows are right-padded)."""
    positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype)  # (s,)
    w = (mask.to(hidden.dtype) * positions).unsqueeze(-1)  # (b, s, 1)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)


def _last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    last = (mask.sum(1) - 1).clamp(min=0)  # (b,) rows are right-padded
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


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
        # Block 0's output is hidden_states[1]; hidden_states[0] is the embedding layer (kexue.fm/archives/8321 and 8454).
        if len(hidden_states) < 3:
            raise ValueError("first-last-avg needs all hidden states")
        return (masked_mean(hidden_states[1].float(), mask) + masked_mean(last.float(), mask)) / 2
    if mode == "max":
        return _masked_max(last.float(), mask)
    if mode == "weighted-mean":
        return _weighted_mean(last.float(), mask)
    if mode == "last-token":
        return _last_token(last.float(), mask)
    if mode == "mean-sqrt-len":
        m = mask.float().unsqueeze(-1)  # (b, s, 1)
        return (last.float() * m).sum(1) / m.sum(1).clamp(min=1.0).sqrt()
    raise UsageError(f"--pooling {mode!r} is not one of {', '.join(p for p in POOLINGS if p != 'auto')}")
