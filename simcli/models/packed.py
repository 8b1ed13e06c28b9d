"""bf16 linear layers with weights packed once for oneDNN: the CPU inference path of `--dtype bfloat16`.

A plain bf16 `nn.Linear` on CPU hands oneDNN a row-major weight at every call, which it reorders into the
blocked layout its AMX / AVX512-BF16 kernels read before multiplying. At sentence shapes (a few hundred
tokens a batch) that reorder is a large part of the product. Packing the weight once at load, as
`torch.compile`'s freezing pass does for CPU (it emits the same two oneDNN ops), removes it without a
compile: measured 1.6x on one layer of 1,024 tokens (1.7x at 16), and 1.10x (base shape) / 1.15x (m3e-small)
on the whole forward on an Intel Xeon with AMX (docs/performance.md). The query, key and value products of a
layer are fused into one packed product (one larger matrix, no concatenation of the three outputs afterwards).

Two memory passes a layer are folded into the products as oneDNN post-ops (what `torch.compile`'s CPU fusion
passes emit too): the feed-forward activation (GELU over intermediate-size rows was 14% of m3e-small's bf16
forward, as long as the product before it) and the residual add before each LayerNorm.

Inference only (no gradients go through the packed weights); everything else stays as it was.
"""

from __future__ import annotations

import torch
from torch import nn

from simcli.models.native import ACTIVATIONS, SelfAttention, _DenseNorm, _Layer

# An activation oneDNN applies to the product's output in place (post-op): attr, algorithm of
# `mkldnn::_linear_pointwise`.
POST_OPS = {
    "gelu": ("gelu", "none"),  # erf
    "gelu_new": ("gelu", "tanh"),
    "gelu_pytorch_tanh": ("gelu", "tanh"),
    "relu": ("relu", ""),
}


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

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None = None
    ) -> None:
        super().__init__()
        w = weight.detach().to(torch.bfloat16).contiguous()
        self.out_features, self.in_features = w.shape
        self._packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        self._bias = None if bias is None else bias.detach().to(torch.bfloat16).contiguous()
        self.activation = activation  # applied by oneDNN to the output (a key of POST_OPS), or None
        self._post = POST_OPS[activation] if activation else ("none", "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attr, algorithm = self._post
        # contiguous: a strided input took another oneDNN path with different rounding
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), self._packed, self._bias, attr, [], algorithm
        )

    def plus(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """self(x) + other, the add done by oneDNN as it writes the product."""
        return torch.ops.mkldnn._linear_pointwise.binary(
            x.contiguous(), other.contiguous(), self._packed, self._bias, "add"
        )

    def extra_repr(self) -> str:
        act = f", then {self.activation}" if self.activation else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16 packed{act}"


class PackedDenseNorm(nn.Module):
    """LayerNorm(dense(x) + residual) with the add inside the packed product (native `_DenseNorm`, inference)."""

    def __init__(self, layer: _DenseNorm) -> None:
        super().__init__()
        self.dense = PackedLinear(layer.dense.weight, layer.dense.bias)
        self.LayerNorm = layer.LayerNorm

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense.plus(x, residual))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def pack_linear_layers(module: nn.Module) -> int:
    """Replace every `nn.Linear` inside `module` by a `PackedLinear` (in place), fusing each attention's
    query, key and value into one, each native block's feed-forward activation into its product and the
    residual adds before its LayerNorms into theirs; the module must already be bf16 on the CPU.

    Returns:
        the number of packed layers.
    """
    count = 0
    if isinstance(module, _Layer):  # the activation goes into the feed-forward product
        act = next((k for k in POST_OPS if ACTIVATIONS[k] is module.act), None)
        dense = module.intermediate.dense
        if act is not None and isinstance(dense, nn.Linear):
            module.intermediate.dense = PackedLinear(dense.weight, dense.bias, act)
            module.act = _identity
            count += 1
    for name, child in list(module.named_children()):
        if isinstance(child, _DenseNorm):
            setattr(module, name, PackedDenseNorm(child))
            count += 1
        elif isinstance(child, nn.Linear):
            setattr(module, name, PackedLinear(child.weight, child.bias))
            count += 1
        elif isinstance(child, SelfAttention) and child.qkv is None:
            child.fuse(PackedLinear)
            count += 1
        else:
            count += pack_linear_layers(child)
    return count


def is_packed(module: nn.Module) -> bool:
    """Whether `module` holds packed bf16 linear layers."""
    return any(isinstance(m, PackedLinear) for m in module.modules())
