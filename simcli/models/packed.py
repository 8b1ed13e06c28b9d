"""bf16 linear layers with weights packed once for oneDNN: the CPU inference path of `--dtype bfloat16`.

A plain bf16 `nn.Linear` on CPU hands oneDNN a row-major weight at every call, which it reorders into the
blocked layout its AMX / AVX512-BF16 kernels read before multiplying. At sentence shapes (a few hundred
tokens a batch) that reorder is a large part of the product. Packing the weight once at load, as
`torch.compile`'s freezing pass does for CPU (it emits the same two oneDNN ops), removes it without a
compile: measured 1.6x on one layer of 1,024 tokens (1.7x at 16), and 1.10x (base shape) / 1.15x (m3e-small)
on the whole forward on an Intel Xeon with AMX (docs/performance.md). The query, key and value products of a
layer are fused into one packed product (one larger matrix, no concatenation of the three outputs afterwards).

Inference only (no gradients go through the packed weights); everything else stays as it was.
"""

from __future__ import annotations

import torch
from torch import nn

from simcli.models.native import SelfAttention


def packing_available() -> bool:
    """Whether this torch has oneDNN's packed linear ops and the CPU runs bf16 in oneDNN natively."""
    ops = torch.ops.mkldnn
    try:
        return (
            torch.backends.mkldnn.is_available()
            and hasattr(ops, "_linear_pointwise")
            and hasattr(ops, "_reorder_linear_weight")
            and bool(ops._is_mkldnn_bf16_supported())
        )
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(nn.Module):
    """A bf16 `nn.Linear` whose weight oneDNN has reordered once (`mkldnn::_reorder_linear_weight`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.detach().to(torch.bfloat16).contiguous()
        self.out_features, self.in_features = w.shape
        self._packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        self._bias = None if bias is None else bias.detach().to(torch.bfloat16).contiguous()

    @classmethod
    def from_linears(cls, *linears: nn.Linear) -> PackedLinear:
        """One packed layer computing the given layers' outputs side by side (e.g. query, key, value)."""
        weight = torch.cat([lin.weight for lin in linears])
        biases = [lin.bias for lin in linears]
        bias = None if any(b is None for b in biases) else torch.cat(biases)  # type: ignore[arg-type]
        return cls(weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: a strided input took another oneDNN path with different rounding
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self._packed, self._bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16 packed"


def pack_linear_layers(module: nn.Module) -> int:
    """Replace every `nn.Linear` inside `module` by a `PackedLinear` (in place), fusing each attention's
    query, key and value into one; the module must already be bf16 on the CPU.

    Returns:
        the number of packed layers.
    """
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, PackedLinear(child.weight, child.bias))
            count += 1
        elif isinstance(child, SelfAttention) and child.qkv is None:
            child.qkv = PackedLinear.from_linears(child.query, child.key, child.value)
            del child.query, child.key, child.value
            count += 1
        else:
            count += pack_linear_layers(child)
    return count


def is_packed(module: nn.Module) -> bool:
    """Whether `module` holds packed bf16 linear layers."""
    return any(isinstance(m, PackedLinear) for m in module.modules())
