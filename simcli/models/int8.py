"""int8 linear layers for CPUs without fast bf16: dynamic quantisation of an encoder's matrix products.

Weights are quantised once, per output channel (symmetric int8); each call quantises its input on the fly
(one scale and zero point for the whole input, from its min and max), multiplies in int8 with int32 sums and
returns float32. Everything else (embeddings, LayerNorm, softmax, GELU, pooling) stays float32.

It runs on torch's own quantized kernels (`torch.ops.quantized.linear_dynamic`, FBGEMM / oneDNN behind the
`x86` engine), the kernels `torch.ao.quantization.quantize_dynamic` swaps in. That function itself is not
used: its `from_float` accepts only the exact `nn.Linear` class (simcli's native layers subclass it), and its
default quantises weights per tensor, which measured min cosine 0.974 to float32 on m3e-small against 0.985
per channel. docs/performance.md has the measurements behind the choices here.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

# torch 2.13 marks quantized tensor creation deprecated (pytorch/pytorch#184982); the kernels are unchanged.
_DEPRECATION = r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation"


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=UserWarning)
        yield


class Int8Linear(nn.Module):
    """A float `nn.Linear` with int8 weights (per output channel) and dynamically quantised inputs.

    Inputs are quantised to 7 bits (`reduce_range`): on AVX2 the u8 x s8 kernels add pairs of products in
    16 bits (vpmaddubsw), which saturate with full 8-bit inputs (measured min cosine 0.65 to float32 on
    m3e-small without it). CPUs with VNNI do not need it, but FBGEMM's own dynamic Linear uses it throughout.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.detach().float().cpu()  # (out, in)
        self.out_features, self.in_features = w.shape
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()  # (out,)
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        b = None if bias is None else bias.detach().float().cpu()
        with _quiet():
            qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qw, b)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, True)  # reduce_range: see the class doc

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


def _best_seconds(fn: Callable[[], object], reps: int = 3) -> float:
    fn()  # warm-up: the kernels pick and cache their blocking on the first call
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def linear_speedup(rows: int = 256, n_in: int = 768, n_out: int = 3072) -> float:
    """float32 time / int8 time of one linear layer of `rows` tokens (default: a BERT-base feed-forward
    product, as `cpu_bf16_speedup` measures); 0.0 where this torch has no quantized CPU kernels."""
    with torch.inference_mode():
        x, w, b = torch.randn(rows, n_in), torch.randn(n_out, n_in) / n_in**0.5, torch.randn(n_out)
        try:
            q = Int8Linear(w, b)
            int8 = _best_seconds(lambda: q(x))
        except RuntimeError:  # e.g. a build without FBGEMM / oneDNN / QNNPACK
            return 0.0
        return _best_seconds(lambda: nn.functional.linear(x, w, b)) / int8
