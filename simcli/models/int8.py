"""int8 linear layers for CPUs without fast bf16: dynamic quantisation of an encoder's matrix products.

Weights are quantised once, per output channel (symmetric int8, [-127, 127]); each call quantises its input on the
fly with one scale per token (row: symmetric, from its largest magnitude), multiplies in int8 with exact int32
sums (`torch._int_mm`, oneDNN on CPU) and scales back to float32 by the row's and the channel's scale. Everything
else (embeddings, LayerNorm, softmax, GELU, pooling) stays float32.

Why a scale per token: torch's own dynamic quantised linear (`torch.ops.quantized.linear_dynamic`, what
`torch.ao.quantization.quantize_dynamic` swaps in) takes one scale for the whole input, so one token with large
activations coarsens every other token of the batch, and a sentence's vector moves with the batch it is in. On
m3e-small that lost up to 1.03 Spearman x100 in `simcli eval sts` (ATEC) with vectors min cosine 0.980 to
float32; per token: within 0.16 on all five test sets, min cosine 0.998, at the same speed on an AMX Xeon
(docs/performance.md). Full 8-bit inputs are safe here: the products are int8 x int8 into int32 (the 7-bit
`reduce_range` of FBGEMM's u8 x s8 path guarded against 16-bit saturation on AVX2, which this path does not use).
"""

from __future__ import annotations

import torch
from torch import nn


class Int8Linear(nn.Module):
    """A float `nn.Linear` with int8 weights (per output channel) and inputs quantised per token on the fly."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.detach().float().cpu()  # (out, in)
        self.out_features, self.in_features = w.shape
        self._scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)  # (out,)
        self._weight_t = (
            torch.round(w / self._scale[:, None]).clamp(-127, 127).to(torch.int8).t().contiguous()
        )
        self._bias = None if bias is None else bias.detach().float().cpu()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        scale = (rows.abs().amax(dim=1, keepdim=True) / 127).clamp_(min=1e-12)  # (tokens, 1)
        q = torch.div(rows, scale).round_().to(torch.int8)
        y = torch._int_mm(q, self._weight_t).float().mul_(scale).mul_(self._scale)  # in place: fewer passes
        if self._bias is not None:
            y.add_(self._bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_linear_layers(module: nn.Module) -> int:
    """Replace every `nn.Linear` inside `module` (subclasses included) by an `Int8Linear`, in place.

    Returns:
        the number of layers replaced.
    """
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear.from_linear(child))
            count += 1
        else:
            count += quantize_linear_layers(child)
    return count


def is_quantized(module: nn.Module) -> bool:
    """Whether `module` holds int8 linear layers."""
    return any(isinstance(m, Int8Linear) for m in module.modules())
