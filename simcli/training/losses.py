"""The training losses: the recipe's masked softmax classifier and CoSENT.

softmax (kexue.fm/archives/8541, as sentence-transformers' SoftmaxLoss): features concat(u, v, |u - v|) of
the two sentence vectors, one Dense with 5 outputs and no bias; binary pairs are scored on logits 0-1 only
and NLI pairs on logits 2-4 (contradiction, entailment, neutral), the other logits masked out, then softmax
cross-entropy.

cosent (kexue.fm/archives/8847): log(1 + sum over pairs (i, j) with label_i < label_j of
exp(scale (cos_i - cos_j))), scale 20, cos the cosine of each labelled pair's two vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("softmax", "cosent")
BINARY_LOGITS = slice(0, 2)
NLI_LOGITS = slice(2, 5)
COSENT_SCALE = 20.0


class SoftmaxHead(nn.Module):
    """One bias-free Dense(3 dim -> 5) on concat(u, v, |u - v|)."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        self.dense = nn.Linear(3 * dim, 5, bias=False)
        g = torch.Generator().manual_seed(seed)
        bound = 1.0 / (3 * dim) ** 0.5  # nn.Linear's own uniform init, drawn from a seeded generator
        with torch.no_grad():
            self.dense.weight.uniform_(-bound, bound, generator=g)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Logits (batch, 5)."""
        return self.dense(torch.cat([u, v, (u - v).abs()], dim=-1))


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half-precision values (autocast) widened to float32 for the loss; float32/64 kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def masked_softmax_loss(logits: torch.Tensor, nli: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the rows; a binary row (nli False, target 0/1) sees logits 0-1 only, an NLI
    row (target 0-2) logits 2-4 only: the other logits get no probability and so no gradient."""
    allowed = torch.zeros_like(logits, dtype=torch.bool)
    allowed[:, BINARY_LOGITS] = ~nli[:, None]
    allowed[:, NLI_LOGITS] = nli[:, None]
    masked = _wide(logits).masked_fill(~allowed, float("-inf"))
    index = targets.long() + torch.where(nli, 2, 0)
    return F.cross_entropy(masked, index)


def cosent_loss(cos: torch.Tensor, labels: torch.Tensor, scale: float = COSENT_SCALE) -> torch.Tensor:
    """log(1 + sum_{label_i < label_j} exp(scale (cos_i - cos_j))) over a batch of labelled pairs."""
    cos = _wide(cos)
    diff = scale * (cos[:, None] - cos[None, :])  # [i, j] = scale (cos_i - cos_j)
    ordered = labels[:, None] < labels[None, :]
    terms = diff[ordered]
    zero = torch.zeros(1, dtype=cos.dtype, device=cos.device)  # the "1 +": exp(0)
    return torch.logsumexp(torch.cat([zero, terms]), dim=0)
