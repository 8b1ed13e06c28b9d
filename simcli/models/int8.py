"""int8 linear layers for CPUs without fast bf16: dynamic quantisation of an encoder's matrix products.

Weights are quantised once, per output channel (symmetric int8, [-127, 127]; [-63, 63] for the FBGEMM kernel
below); each call quantises its input on the fly with one scale per token (row: symmetric, from its largest
magnitude), multiplies in int8 with exact int32 sums and scales back to float32 by the row's and the channel's
scale. Everything else (embeddings, LayerNorm, softmax, GELU, pooling) stays float32.

Why a scale per token: torch's own dynamic quantised linear (`torch.ops.quantized.linear_dynamic`, what
`torch.ao.quantization.quantize_dynamic` swaps in) takes one scale for the whole input, so one token with large
activations coarsens every other token of the batch, and a sentence's vector moves with the batch it is in. On
m3e-small that lost up to 1.03 Spearman x100 in `simcli eval sts` (ATEC) with vectors min cosine 0.980 to
float32; per token: within 0.16 on all five test sets, min cosine 0.998, at the same speed on an AMX Xeon
(docs/performance.md).

Two kernels, by CPU (`device.int8_kernel`). With VNNI (AVX512-VNNI, AVX-VNNI, AMX) the product is int8 x int8
summed straight into int32 (`torch._int_mm`): exact. Without it (AVX2-only CPUs, AVX-512 before Cascade Lake)
oneDNN's int8 product sums pairs of products in saturating 16-bit registers: `torch._int_mm` of 64 values of 127
by 127 gave 8,160 instead of 1,032,256 under `ONEDNN_MAX_CPU_ISA=AVX2`. There the inputs go to FBGEMM's quantised
linear instead, with 7-bit weights (largest / 63 per channel), so that no pair of its u8 x s8 products can exceed
16 bits (2 x 255 x 63 < 32,767), and 8-bit inputs on the same per-token grid: FBGEMM takes one input scale for the
whole tensor, so each token is first divided by its largest magnitude and the op is given the fixed grid of [-1, 1].
Per layer under the AVX2 caps (`python bench/int8_layer.py`): 1.33-1.53x float32, against 1.00-1.24x for
`torch._int_mm`, at 1.3-1.5% error against its 1.4-2.7%.

A native attention's query, key and value projections become one int8 layer (`SelfAttention.fuse`): their input
is quantised once, for one larger product.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from simcli.models.native import SelfAttention

#: `Int8Linear.kernel`: "int_mm" (int8 x int8 into int32, for CPUs with VNNI) or "fbgemm" (7-bit weights);
#: `device.int8_kernel()` picks the one this CPU computes without saturating
KERNELS = ("int_mm", "fbgemm")


class Int8Linear(nn.Module):
    """A float `nn.Linear` with int8 weights (per output channel) and inputs quantised per token on the fly."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str) -> None:
        super().__init__()
        w = weight.detach().float().cpu()  # (out, in)
        self.out_features, self.in_features = w.shape
        self.kernel = kernel
        if self.kernel not in KERNELS:
            raise ValueError(f"int8 kernel {self.kernel!r} is not one of {', '.join(KERNELS)}")
        self._bias = None if bias is None else bias.detach().float().cpu()
        # 8-bit weights for int_mm; 7-bit for FBGEMM, so that no pair of its u8 x s8 products saturates 16 bits
        levels = 127 if self.kernel == "int_mm" else 63
        self._scale = (w.abs().amax(dim=1) / levels).clamp(min=1e-12)  # (out,)
        qw = torch.round(w / self._scale[:, None]).clamp(-levels, levels).to(torch.int8)
        if self.kernel == "int_mm":
            self._weight_t = qw.t().contiguous()
        else:
            self._packed = _fbgemm_weight(qw, self._scale)

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str) -> Int8Linear:
        return cls(linear.weight, linear.bias, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        y = self._fbgemm(rows) if self.kernel == "fbgemm" else self._int_mm(rows)
        if self._bias is not None:
            y.add_(self._bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _int_mm(self, rows: torch.Tensor) -> torch.Tensor:
        scale = (_peak(rows) / 127).clamp_(min=1e-12)  # (tokens, 1)
        q = torch.div(rows, scale).round_().to(torch.int8)
        # in place: fewer passes
        return torch._int_mm(q, self._weight_t).float().mul_(scale).mul_(self._scale)

    def _fbgemm(self, rows: torch.Tensor) -> torch.Tensor:
        peak = _peak(rows).clamp_(min=1e-12)  # (tokens, 1)
        # Every token within [-1, 1], its largest magnitude at +-1, quantised on one fixed grid, scale 1/127 and
        # zero point 128 (the int_mm kernel's grid, +-1 exact): a token's scale is its own, whatever the batch.
        # This op takes the grid as given (`linear_dynamic` would measure the batch's range for one)
        y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            torch.div(rows, peak), 1 / 127, 128, self._packed
        )
        return y.mul_(peak)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 ({self.kernel})"


def _peak(rows: torch.Tensor) -> torch.Tensor:
    """Each row's largest magnitude, (rows, 1): from its max and min, two reads and no |x| copy (1.4-1.6x faster
    than abs then amax)."""
    return torch.maximum(rows.amax(dim=1, keepdim=True), rows.amin(dim=1, keepdim=True).neg_())


def _fbgemm_weight(qw: torch.Tensor, scale: torch.Tensor) -> torch.ScriptObject:
    """The int8 weights (out, in) with their per-channel scales, packed for FBGEMM (no bias: it is added after
    the per-token scale)."""
    # torch 2.13 deprecates quantized tensors; its quantised linear ops still take them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zeros = torch.zeros(qw.shape[0], dtype=torch.long)
        weight = torch._make_per_channel_quantized_tensor(qw, scale.double(), zeros, 0)
        # The packing follows torch's quantized engine of the moment: x86 (the default) and fbgemm pack linear
        # weights for FBGEMM; others (onednn) do not, and their packed weights lack the op `_fbgemm` calls. Only
        # then is the process-wide engine switched, for this call
        engine = torch.backends.quantized.engine
        if engine not in ("x86", "fbgemm"):
            torch.backends.quantized.engine = "fbgemm"
        try:
            return torch.ops.quantized.linear_prepack(weight, None)
        finally:
            torch.backends.quantized.engine = engine


def quantize_linear_layers(module: nn.Module, kernel: str) -> int:
    """Replace every `nn.Linear` inside `module` (subclasses included) by an `Int8Linear` of `kernel`, in place;
    the query, key and value projections of a native attention by one.

    Returns:
        the number of layers replaced.
    """
    if isinstance(module, SelfAttention) and module.qkv is None:
        # query, key and value read the same input: quantised once, one product (scales are per token and per
        # output channel, so the results are those of the three layers)
        module.fuse(functools.partial(Int8Linear, kernel=kernel))
        return 1
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear.from_linear(child, kernel))
            count += 1
        else:
            count += quantize_linear_layers(child, kernel)
    return count


def is_quantized(module: nn.Module) -> bool:
    """Whether `module` holds int8 linear layers."""
    return any(isinstance(m, Int8Linear) for m in module.modules())
