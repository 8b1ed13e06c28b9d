"""RoFormer and BERT encoders (and their masked-LM head) in plain PyTorch, built from a checkpoint's config and weights.

Why this exists: a cold `simcli query` took ~6 s, of which ~3 s was importing transformers' modeling stack
(`from transformers import RoFormerModel` pulls in scipy.optimize through transformers.loss, 550 ms;
torch._dynamo through masking_utils, 525 ms; torch.distributed.tensor and sympy, ~700 ms; jinja2 for chat
templates), none of which encoding uses (`import torch` itself is 1.4 s). This module computes the same
forward pass as transformers' `RoFormerModel` / `BertModel` (models/roformer/modeling_roformer.py,
models/bert/modeling_bert.py) with torch alone, so encoding never imports transformers.

UniLM generation (simcli/models/unilm.py) runs here too: `NativeBackbone.decode` feeds new tokens through
the same layers with a `KVCache` and per-row positions, and `MLMHead` is the masked-LM head, so
`simcli generate` never imports transformers either.

transformers' modules remain the reference: tests/models/test_native.py checks every layer's output against them,
tests/generate/test_generate.py checks cached decoding against a full transformers forward with the explicit UniLM
mask, and encoding configurations this module does not implement fall back to them (`unsupported`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# transformers' ACT2FN entries that have an exact torch equivalent (activations.py): "gelu" is the erf GELU,
# "gelu_new" (a Python tanh formula) and "gelu_pytorch_tanh" are both the tanh approximation.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": functools.partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": functools.partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}

# The defaults of transformers' RoFormerConfig / BertConfig for fields a config.json may omit.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "roformer": {"vocab_size": 50000, "max_position_embeddings": 1536},
    "bert": {"vocab_size": 30522, "max_position_embeddings": 512},
}
_COMMON_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}

#: Weights the checkpoint may omit: the hub RoFormer files drop the sinusoidal table (the JunnYu/RoFormer_pytorch hub port), which
#: is computed instead; `embeddings.position_ids` is a buffer that old BERT saves carried.
OPTIONAL_KEYS = frozenset({"encoder.embed_positions.weight", "embeddings.position_ids"})


@dataclass(frozen=True)
class BackboneConfig:
    """The fields of a config.json that decide the encoder's shapes and arithmetic."""

    model_type: str  # "roformer" (rotary positions) | "bert" (absolute position embeddings)
    vocab_size: int
    embedding_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    max_position_embeddings: int
    type_vocab_size: int
    rotary_value: bool
    hidden_dropout_prob: float = 0.1  # dropout is active only in training mode (`simcli train`)
    attention_probs_dropout_prob: float = 0.1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary(self) -> bool:
        return self.model_type == "roformer"

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> BackboneConfig:
        """Read a checkpoint's config.json; ValueError when this module does not implement it."""
        reason = unsupported(config)
        if reason is not None:
            raise ValueError(reason)
        model_type = str(config["model_type"])
        c = {**_COMMON_DEFAULTS, **_DEFAULTS[model_type]}
        c.update({k: v for k, v in config.items() if k in c and v is not None})
        hidden = int(c["hidden_size"])
        # RoFormerConfig: embedding_size defaults to hidden_size; BertModel has no embedding_size at all.
        emb = config.get("embedding_size") if model_type == "roformer" else None
        return cls(
            model_type=model_type,
            vocab_size=int(c["vocab_size"]),
            embedding_size=hidden if emb is None else int(emb),
            hidden_size=hidden,
            num_hidden_layers=int(c["num_hidden_layers"]),
            num_attention_heads=int(c["num_attention_heads"]),
            intermediate_size=int(c["intermediate_size"]),
            hidden_act=str(c["hidden_act"]),
            layer_norm_eps=float(c["layer_norm_eps"]),
            max_position_embeddings=int(c["max_position_embeddings"]),
            type_vocab_size=int(c["type_vocab_size"]),
            rotary_value=model_type == "roformer" and bool(config.get("rotary_value", False)),
            # transformers' default where the config omits them
            hidden_dropout_prob=float(config.get("hidden_dropout_prob", 0.1) or 0.0),
            attention_probs_dropout_prob=float(config.get("attention_probs_dropout_prob", 0.1) or 0.0),
        )


def unsupported(config: Mapping[str, Any]) -> str | None:
    """Why this module cannot run `config` (then the transformers backbone is used), or None."""
    model_type = config.get("model_type")
    if model_type not in _DEFAULTS:
        return f"model_type {model_type!r}"
    act = config.get("hidden_act", _COMMON_DEFAULTS["hidden_act"])
    if not isinstance(act, str) or act not in ACTIVATIONS:
        return f"hidden_act {act!r} (implemented: {', '.join(ACTIVATIONS)})"
    hidden = config.get("hidden_size", _COMMON_DEFAULTS["hidden_size"])
    heads = config.get("num_attention_heads", _COMMON_DEFAULTS["num_attention_heads"])
    if not isinstance(hidden, int) or not isinstance(heads, int) or heads <= 0 or hidden % heads:
        return f"hidden_size {hidden!r} is not a multiple of num_attention_heads {heads!r}"
    if model_type == "roformer" and (hidden // heads) % 2:
        return f"rotary positions need an even head size, got {hidden // heads}"
    position = config.get("position_embedding_type", "absolute")
    if model_type == "bert" and position not in (None, "absolute"):
        return f"position_embedding_type {position!r}"
    return None


def sinusoidal_table(positions: int, dim: int) -> torch.Tensor:
    """RoFormer's rotary table (positions, dim): sin(m * theta_i) in the first half, cos in the second,
    theta_i = 10000^(-2i/dim) (kexue.fm/archives/8265), computed as transformers' `create_weight` does (float64
    numpy, then float32)."""
    j = np.arange(dim)
    angles = np.arange(positions)[:, None] / np.power(10000, 2 * (j // 2) / dim)[None, :]
    out = torch.empty(positions, dim, dtype=torch.float32)
    out[:, : dim // 2] = torch.from_numpy(np.sin(angles[:, 0::2]))
    out[:, dim // 2 :] = torch.from_numpy(np.cos(angles[:, 1::2]))
    return out


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, dropout: float = 0.0
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v over (batch, heads, seq, head_dim); bias (batch, 1, 1, seq) is additive
    (or (batch, 1, seq, seq) for a per-query mask such as UniLM's); `dropout` on the attention probabilities
    (training only).

    On CPU, at inference, over few keys (sentence lengths: `attention_kernel`): the scores are laid out keys first.
    Otherwise torch's fused kernel (SDPA) where it is the faster one: on GPUs, and in float32 on CPU (measured on
    2 cores at sentence lengths, 8-64 tokens: up to 1.4x the eager attention with an additive mask, a boolean
    mask was slower; the base model's forward ~4% faster). On CPU in bfloat16 / float16 its flash kernel was
    1.1x-3.5x slower than the plain matmul-softmax-matmul at sentence lengths (the base model's forward ~10%),
    so that is used there, computed as transformers' eager RoFormer attention does, up to `SDPA_MIN_KEYS_HALF`
    keys, from where the flash kernel is the faster one.
    """
    kernel = attention_kernel(q.device.type, q.dtype, k.shape[-2], grad=torch.is_grad_enabled())
    if kernel == "keys-first":
        return _attention_keys_first(q, k, v, bias)
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    probs = scores.softmax(dim=-1)
    return torch.matmul(F.dropout(probs, dropout) if dropout else probs, v)


# The most keys for which the keys-first layout was the faster (below): float32 loses at 16 keys, where each
# score row fills whole AVX-512 registers; bf16 (only ever chosen on AVX-512 CPUs) wins up to 31 and loses at 32
# (`python bench/attention.py` prints the three kernels by length on the CPU at hand).
KEYS_FIRST_MAX_FLOAT32 = 15
KEYS_FIRST_MAX_HALF = 31
# bf16 on CPU from this many keys: SDPA's flash kernel, 1.2-1.5x the eager attention at 48-128 keys (1.8x and more
# at 256), while eager is the faster at 32-40 (same bench, two runs)
SDPA_MIN_KEYS_HALF = 48


def attention_kernel(device_type: str, dtype: torch.dtype, keys: int, *, grad: bool) -> str:
    """How `attention` computes over `keys` keys: "keys-first", "sdpa" (torch's fused kernel) or "eager"
    (matmul, softmax, matmul). Keys first only without autograd (its `out=` writes have none)."""
    if device_type != "cpu":
        return "sdpa"
    if not grad and keys <= (KEYS_FIRST_MAX_FLOAT32 if dtype == torch.float32 else KEYS_FIRST_MAX_HALF):
        return "keys-first"
    return "sdpa" if dtype == torch.float32 or keys >= SDPA_MIN_KEYS_HALF else "eager"


def _attention_keys_first(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    # torch's softmax over the last dimension runs row by row, and a row of a dozen scores is mostly overhead
    # (the scalar tail of a vector loop): over half of the eager bf16 attention at 12 keys on 2 AVX-512 cores.
    # Over the first dimension it runs across all the rows at once, in full vectors. So the scaled, masked scores
    # are written keys first in the same pass that scales and masks them, the softmax runs over dim 0, and the
    # probabilities go into the second product as a transposed view (no copy): 2.1-2.4x the eager attention
    # (bf16) and 2.8x torch's SDPA (float32) at 12 keys (inference only: `out=` has no autograd).
    scores = torch.matmul(q, k.transpose(-1, -2))  # (batch, heads, queries, keys)
    keys_first = scores.new_empty(scores.shape[-1], *scores.shape[:-1])
    scale = 1 / math.sqrt(q.shape[-1])
    if bias is None:
        torch.mul(scores.permute(3, 0, 1, 2), scale, out=keys_first)
    else:
        torch.add(bias.permute(3, 0, 1, 2), scores.permute(3, 0, 1, 2), alpha=scale, out=keys_first)
    return torch.matmul(keys_first.softmax(0).permute(1, 2, 3, 0), v)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Interleaved pairs: (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), as transformers'
    # `apply_rotary_position_embeddings`, which is the complex product (x0 + i x1)(cos + i sin): one fused
    # kernel instead of slicing, stacking and three elementwise passes (the same float32 results; 3-25x faster
    # on 2 cores at decoding and sentence shapes). Half-precision inputs are rotated in float32.
    cis = torch.complex(cos[..., ::2].float(), sin[..., ::2].float())
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * cis).flatten(-2).to(x.dtype)


def _rotate_heads(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, parts: int, heads: int
) -> tuple[torch.Tensor, ...]:
    """The first `parts` thirds (query, key[, value]) of fused projections x (batch, seq, 3 * hidden) rotated
    as `_rotate` does (the same float32 results), each returned contiguous (batch, heads, seq, head_dim): all
    parts in one product, and the cast back written straight into the layout the attention products read
    (measured 1.16x the attention block outside its products, base shape, bf16, 2 cores)."""
    b, t, _ = x.shape
    hd = cos.shape[-1]
    cis = torch.complex(cos[..., ::2].float(), sin[..., ::2].float())[:, None, :]  # (seq, 1, head_dim / 2)
    wide = x[..., : parts * heads * hd].float()
    pairs = torch.view_as_complex(wide.view(b, t, parts * heads, hd // 2, 2))
    # in place where .float() made a copy; a float32 x (its own storage, maybe needed by autograd) is not written
    rotated = torch.view_as_real(pairs.mul_(cis) if x.dtype != torch.float32 else pairs * cis)
    out = x.new_empty(parts, b, heads, t, hd)
    out.permute(1, 3, 0, 2, 4).copy_(rotated.view(b, t, parts, heads, hd))
    return out.unbind(0)


# Modules whose weights are always loaded, so never initialised: random init costs time, and on the meta
# device it goes through torch._refs, which imports torch._dynamo (~0.5 s).
class _Linear(nn.Linear):
    def reset_parameters(self) -> None:
        pass


class _Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        pass


class _LayerNorm(nn.LayerNorm):
    def reset_parameters(self) -> None:
        pass


class SelfAttention(nn.Module):
    """The query, key and value projections; `qkv` is set where one fused product replaces the three
    (simcli/models/packed.py)."""

    def __init__(self, h: int) -> None:
        super().__init__()
        self.query, self.key, self.value = _Linear(h, h), _Linear(h, h), _Linear(h, h)
        self.qkv: nn.Module | None = None

    def fuse(self, make: Callable[[torch.Tensor, torch.Tensor | None], nn.Module]) -> None:
        """Replace the three projections by `make(weight, bias)` of their weights and biases stacked (query,
        key, value): one product over the input instead of three, and no concatenation of their outputs."""
        linears = (self.query, self.key, self.value)
        weight = torch.cat([lin.weight.detach() for lin in linears])
        biases = [lin.bias for lin in linears]
        bias = None if any(b is None for b in biases) else torch.cat([b.detach() for b in biases])  # type: ignore[union-attr]
        self.qkv = make(weight, bias)
        del self.query, self.key, self.value


class _DenseNorm(nn.Module):
    """dense, then LayerNorm of (its output + the residual): attention.output and output of a block."""

    def __init__(self, n_in: int, h: int, eps: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.dense = _Linear(n_in, h)
        self.LayerNorm = _LayerNorm(h, eps=eps)
        self.dropout = nn.Dropout(dropout)  # identity in eval mode (inference)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, c: BackboneConfig) -> None:
        super().__init__()
        self.self = SelfAttention(c.hidden_size)
        self.output = _DenseNorm(c.hidden_size, c.hidden_size, c.layer_norm_eps, c.hidden_dropout_prob)


class _Intermediate(nn.Module):
    def __init__(self, c: BackboneConfig) -> None:
        super().__init__()
        self.dense: nn.Module = _Linear(c.hidden_size, c.intermediate_size)  # packed.py may replace it


class _Layer(nn.Module):
    """One post-LayerNorm transformer block, named as transformers' RoFormerLayer / BertLayer."""

    def __init__(self, c: BackboneConfig) -> None:
        super().__init__()
        self.heads, self.head_dim, self.rotary_value = c.num_attention_heads, c.head_dim, c.rotary_value
        self.attention_dropout = c.attention_probs_dropout_prob
        self.act = ACTIVATIONS[c.hidden_act]
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseNorm(c.intermediate_size, c.hidden_size, c.layer_norm_eps, c.hidden_dropout_prob)

    def forward(
        self,
        x: torch.Tensor,  # (batch, seq, hidden)
        bias: torch.Tensor | None,  # (batch, 1, 1 or seq, keys) additive mask: 0 or dtype min; None = none
        rotary: tuple[torch.Tensor, torch.Tensor] | None,  # cos, sin: (seq, head_dim) or (batch, 1, seq, hd)
        cache: KVCache | None = None,  # earlier keys/values (decoding): this pass's are appended
        index: int = 0,  # this layer's index in the cache
        packing: Packing | None = None,  # x holds only the real tokens of a padded batch (no cache then)
    ) -> torch.Tensor:
        att = self.attention.self
        if packing is None and att.qkv is None:
            b, t, h = x.shape
            q, k, v = (
                proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (batch, heads, seq, head_dim)
                for proj in (att.query, att.key, att.value)
            )
        else:  # packed: x (tokens, hidden), the projections on real tokens, attention on the padded layout
            b, t, h = (packing.batch, packing.seq, x.shape[-1]) if packing is not None else x.shape
            qkv = (
                att.qkv(x) if att.qkv is not None else torch.cat([att.query(x), att.key(x), att.value(x)], -1)
            )
            qkv = packing.spread(qkv) if packing is not None else qkv
            q, k, v = qkv.view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            if rotary is not None and rotary[0].dim() == 2:
                rotated = _rotate_heads(
                    qkv.view(b, t, 3 * h), *rotary, 3 if self.rotary_value else 2, self.heads
                )
                q, k, v = rotated if self.rotary_value else (*rotated, v)
                rotary = None  # applied
        if rotary is not None:
            cos, sin = rotary
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            if self.rotary_value:
                v = _rotate(v, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, index)
        dropout = self.attention_dropout if self.training else 0.0
        # full attention, whatever the config's is_decoder (the JunnYu/RoFormer_pytorch hub port)
        ctx = attention(q, k, v, bias, dropout).transpose(1, 2).reshape(b, t, h)
        x = self.attention.output(ctx if packing is None else packing.pack(ctx), x)
        return self.output(self.act(self.intermediate.dense(x)), x)


class _Embeddings(nn.Module):
    def __init__(self, c: BackboneConfig) -> None:
        super().__init__()
        e = c.embedding_size
        self.word_embeddings = _Embedding(c.vocab_size, e)
        self.token_type_embeddings = _Embedding(c.type_vocab_size, e)
        # BERT's learned absolute positions; RoFormer has none (rotary, in the attention).
        self.position_embeddings = None if c.rotary else _Embedding(c.max_position_embeddings, e)
        self.LayerNorm = _LayerNorm(e, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)  # identity in eval mode (inference)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embedded tokens; `positions` (batch or 1, seq) for BERT rows that do not start at position 0."""
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        if self.position_embeddings is not None:
            pos = self.position_embeddings.weight
            x = x + (pos[: input_ids.shape[1]] if positions is None else pos[positions])
        return self.dropout(self.LayerNorm(x))


class _RotaryTable(nn.Module):
    """Holds RoFormer's sinusoidal table as `encoder.embed_positions.weight` (a buffer: cast, never trained)."""

    weight: torch.Tensor

    def __init__(self, positions: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.empty(positions, dim))

    def forward(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (t, dim) for positions 0..t-1, pair-interleaved: [a0, a0, a1, a1, ...] (kexue.fm/archives/8265)."""
        return _interleave(self.weight[:t])

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (rows, 1, t, dim) for per-row positions (rows, t): each row continues at its own length."""
        cos, sin = _interleave(self.weight[positions])
        return cos[:, None], sin[:, None]


def _interleave(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sin, cos = table.chunk(2, dim=-1)
    shape = (*table.shape[:-1], -1)
    return torch.stack([cos, cos], -1).reshape(shape), torch.stack([sin, sin], -1).reshape(shape)


@dataclass(frozen=True)
class Packing:
    """The real tokens of a right-padded (batch, seq) batch, in row order ("unpadding", as
    text-embeddings-inference and FlashAttention's varlen kernels do it): the position-wise layers (the
    projections, the feed-forward block, LayerNorm, dropout), ~all of the FLOPs at sentence lengths, run on
    the real tokens only; attention runs on the padded layout with the padding keys masked. The real tokens'
    results are those of the padded pass; a padding position's output is zero (pooling never reads it)."""

    index: torch.Tensor | None  # (tokens,) flat positions row * seq + column of the real tokens; None: all
    batch: int
    seq: int
    # Packed rows rounded up to a multiple (`rounded`; the extra rows' results are never read): oneDNN builds a
    # kernel for each new row count of a packed product (packed.py), so fewer row counts, fewer builds.
    gather: torch.Tensor | None = None  # `index`, then copies of its last position up to the multiple
    rows: int = 0  # the packed rows, real and extra
    # (batch * seq,) the packed row each padded position reads in `spread`: its own token, or for padding the
    # row's last real token (any real token would do: padding keys are masked, padding queries dropped)
    source: torch.Tensor | None = None

    @classmethod
    def whole(cls, batch: int, seq: int, multiple: int) -> Packing:
        """A batch without padding, its rows rounded up to a multiple of `multiple` (zero rows at the end)."""
        return cls(None, batch, seq).rounded(multiple)

    @classmethod
    def of(cls, attention_mask: torch.Tensor, multiple: int = 1) -> Packing:
        real = attention_mask.flatten()
        source = (real.cumsum(0) - 1).clamp_(min=0)  # each position's latest real token in the packed order
        batch, seq = attention_mask.shape
        return cls(real.nonzero().squeeze(1), batch, seq, source=source).rounded(multiple)

    @classmethod
    def of_lengths(cls, lengths: Sequence[int], seq: int, device: torch.device, multiple: int = 1) -> Packing:
        """The same packing from each row's length, known on the host: no `nonzero()` (a device sync on CUDA);
        the index goes over from pinned memory without waiting."""
        counts = torch.tensor(lengths, dtype=torch.long)[:, None]
        columns = torch.arange(seq)[None, :]
        index = (torch.arange(len(lengths))[:, None] * seq + columns)[columns < counts]
        starts = counts.cumsum(0) - counts  # each row's first token in the packed order
        # position c of a row reads its token min(c, last)
        source = (starts + torch.minimum(columns, counts - 1)).flatten()
        return cls(to_device(index, device), len(lengths), seq, source=to_device(source, device)).rounded(
            multiple
        )

    @property
    def tokens(self) -> int:
        return self.batch * self.seq if self.index is None else self.index.numel()

    def rounded(self, multiple: int) -> Packing:
        """This packing with its packed rows rounded up to a multiple of `multiple`."""
        rows = -(-self.tokens // multiple) * multiple
        if rows == self.tokens or self.index is None:
            return replace(self, rows=rows)
        extra = self.index[-1:].expand(rows - self.tokens)
        return replace(self, gather=torch.cat([self.index, extra]), rows=rows)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seq, ...) -> (tokens, ...)"""
        flat = x.reshape(self.batch * self.seq, *x.shape[2:])
        if self.index is None:
            extra = self.rows - self.tokens
            return torch.cat([flat, flat.new_zeros(extra, *flat.shape[1:])]) if extra > 0 else flat
        return flat.index_select(0, self.index if self.gather is None else self.gather)

    def spread(self, x: torch.Tensor) -> torch.Tensor:
        """(tokens, ...) -> (batch, seq, ...) for attention, a padding position holding a copy of a real token
        (its key is masked, its query's output never packed back): one gather, where `unpack` fills zeros and
        scatters (3.4-3.7x the time of the gather, bf16 and float32, at sentence shapes on 2 cores)."""
        if self.source is None:
            return self.unpack(x)
        return x.index_select(0, self.source).view(self.batch, self.seq, *x.shape[1:])

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(tokens, ...) -> (batch, seq, ...), zeros at the padding."""
        x = x[: self.tokens]
        if self.index is None:
            return x.view(self.batch, self.seq, *x.shape[1:])
        out = x.new_zeros(self.batch * self.seq, *x.shape[1:])
        return out.index_copy(0, self.index, x).view(self.batch, self.seq, *x.shape[1:])


class _Encoder(nn.Module):
    def __init__(self, c: BackboneConfig) -> None:
        super().__init__()
        self.embed_positions = _RotaryTable(c.max_position_embeddings, c.head_dim) if c.rotary else None
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


@dataclass
class BackboneOutput:
    """What `Encoder.forward` reads, named as in transformers' model outputs."""

    last_hidden_state: torch.Tensor  # (batch, seq, hidden)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings output, then each block's output


class NativeBackbone(nn.Module):
    """A RoFormer (rotary) or BERT (absolute positions) encoder with full attention, for inference and
    training (dropout in train mode; the packed pass has the padded pass's gradients).

    Parameter names are transformers' `RoFormerModel` / `BertModel` state dict keys (without the
    `roformer.` / `bert.` prefix). Create with `from_config`, then `load_weights`.
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        c = self.config = config
        self.embeddings = _Embeddings(c)
        project = c.rotary and c.embedding_size != c.hidden_size
        self.embeddings_project = _Linear(c.embedding_size, c.hidden_size) if project else None
        self.encoder = _Encoder(c)
        # packed rows rounded up to this (Packing.rounded): bf16 packed for oneDNN sets it (encoder.cast_backbone)
        self.token_multiple = 1

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NativeBackbone:
        """The module's skeleton (weights not yet allocated); ValueError for an unsupported config."""
        with torch.device("meta"):
            return cls(BackboneConfig.from_dict(config))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight key this module reads, with its shape (as transformers' state dict would have it)."""
        return {k: tuple(v.shape) for k, v in self.state_dict().items()}

    def load_weights(self, weights: Mapping[str, torch.Tensor]) -> NativeBackbone:
        """Take the (already checked) weights as float32 tensors; compute the rotary table if absent."""
        # Copies (as transformers' load_state_dict does): the weights file is memory-mapped, and a file
        # rewritten in place under a running encoder must not change or crash it.
        owned = {k: v.to(torch.float32, copy=True) for k, v in weights.items()}
        self.load_state_dict(owned, strict=False, assign=True)
        table = self.encoder.embed_positions
        if table is not None and "encoder.embed_positions.weight" not in weights:
            table.weight = sinusoidal_table(*table.weight.shape)
        left = [k for k, v in self.state_dict().items() if v.is_meta]
        if left:
            raise ValueError(f"weights not loaded: {', '.join(left)}")
        return self.eval()  # trainable: inference runs under torch.inference_mode instead of frozen weights

    def forward(
        self,
        input_ids: torch.Tensor,  # (batch, seq)
        attention_mask: torch.Tensor | None = None,  # (batch, seq), 1 = real token, 0 = padding
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        attention_bias: torch.Tensor | None = None,
        lengths: Sequence[int] | None = None,
    ) -> BackboneOutput:
        """`attention_bias` (batch, 1, seq, seq), additive, replaces the padding mask: e.g. the UniLM seq2seq
        mask for training generation (simcli/training/distillation.py). `lengths`: each row's real tokens
        when the caller knows them (right padding): whether there is padding, and where, is then decided on
        the host instead of by two device syncs a batch (`mask.all()`, `nonzero()`)."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)
        table = self.encoder.embed_positions
        rotary = table(input_ids.shape[1]) if table is not None else None
        bias = attention_bias.to(x.dtype) if attention_bias is not None else None
        packing = None
        padded = [x]  # every layer's output in the (batch, seq, hidden) layout, when asked for
        seq = input_ids.shape[1]
        if lengths is not None:
            padded_batch = min(lengths) < seq
        else:
            padded_batch = attention_mask is not None and not bool(attention_mask.all())
        multiple = self.token_multiple
        if bias is None and attention_mask is not None and padded_batch:
            # Padding keys blocked; padded queries still see the real keys, so no row is fully masked.
            bias = torch.zeros(attention_mask.shape, dtype=x.dtype, device=x.device)
            bias = bias.masked_fill_(attention_mask == 0, torch.finfo(x.dtype).min)[:, None, None, :]
            # the position-wise layers run on the real tokens only
            packing = (
                Packing.of(attention_mask, multiple)
                if lengths is None
                else Packing.of_lengths(lengths, seq, x.device, multiple)
            )
            x = packing.pack(x)
        elif bias is None and multiple > 1 and input_ids.numel() % multiple:
            packing = Packing.whole(input_ids.shape[0], seq, multiple)  # no padding: only the rows rounded
            x = packing.pack(x)
        for layer in self.encoder.layer:
            x = layer(x, bias, rotary, packing=packing)
            if output_hidden_states:
                padded.append(x if packing is None else packing.unpack(x))
        last = padded[-1] if output_hidden_states else x if packing is None else packing.unpack(x)
        return BackboneOutput(last, tuple(padded) if output_hidden_states else None)

    def decode(
        self,
        input_ids: torch.Tensor,  # (rows, t)
        token_type_ids: torch.Tensor,  # (rows, t)
        positions: torch.Tensor,  # (rows or 1, t): each row's own positions (sources differ in length)
        bias: torch.Tensor,  # (rows, 1, 1, cache.length + t) additive key mask over cached + new keys
        cache: KVCache,
    ) -> torch.Tensor:
        """Last hidden states (rows, t, hidden) of `t` new tokens per row that attend to the cache and to
        each other as `bias` allows; their keys/values are written into the cache and its length advanced.
        The same arithmetic as `forward` (UniLM decoding, simcli/models/unilm.py)."""
        x = self.embeddings(input_ids, token_type_ids, None if self.config.rotary else positions)
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)
        table = self.encoder.embed_positions
        rotary = table.at(positions) if table is not None else None
        for i, layer in enumerate(self.encoder.layer):
            x = layer(x, bias, rotary, cache, i)
        cache.advance(input_ids.shape[1])
        return x


class KVCache:
    """Keys and values of every layer, preallocated to a capacity and filled left to right.

    `update` stores one layer's keys/values of a pass (the part of transformers' Cache protocol its
    attention calls); the length advances once per pass (`advance`), after every layer has written its slice.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], length: int) -> None:
        self.keys = keys  # per layer (batch, heads, capacity, head_dim)
        self.values = values
        self.length = length

    @classmethod
    def empty(
        cls, layers: int, batch: int, heads: int, capacity: int, head_dim: int, like: torch.Tensor
    ) -> KVCache:
        shape = (batch, heads, capacity, head_dim)
        make = [like.new_empty(shape) for _ in range(2 * layers)]
        return cls(make[:layers], make[layers:], 0)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this pass's keys/values of one layer; return all keys/values so far (views, no copy)."""
        end = self.length + key.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache full: {end} > capacity {self.capacity}")
        self.keys[layer_idx][:, :, self.length : end] = key
        self.values[layer_idx][:, :, self.length : end] = value
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def advance(self, steps: int) -> None:
        self.length += steps

    def select(self, rows: torch.Tensor, capacity: int | None = None) -> KVCache:
        """A new cache holding `rows` (repeats allowed: n samples of one source), optionally with more room."""
        capacity = self.capacity if capacity is None else capacity
        n, used = len(rows), self.length

        def take(t: torch.Tensor) -> torch.Tensor:
            out = t.new_empty((n, t.shape[1], capacity, t.shape[3]))
            out[:, :, :used] = t[:, :, :used].index_select(0, rows)
            return out

        return KVCache([take(k) for k in self.keys], [take(v) for v in self.values], used)


class _HeadTransform(nn.Module):
    def __init__(self, c: BackboneConfig) -> None:
        super().__init__()
        self.dense = _Linear(c.hidden_size, c.embedding_size)
        self.act = ACTIVATIONS[c.hidden_act]
        self.LayerNorm = _LayerNorm(c.embedding_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class _Predictions(nn.Module):
    def __init__(self, c: BackboneConfig) -> None:
        super().__init__()
        self.transform = _HeadTransform(c)
        self.decoder = _Linear(c.embedding_size, c.vocab_size)  # weight tied to the word embeddings
        self.bias = nn.Parameter(torch.empty(c.vocab_size))  # the checkpoint's; forward uses decoder.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class MLMHead(nn.Module):
    """The masked-LM head (`cls.*` keys): transform (dense, activation, LayerNorm), then the decoder tied to
    the word embeddings; named and computed as transformers' RoFormerOnlyMLMHead / BertOnlyMLMHead."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.predictions = _Predictions(config)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (..., vocab) from last hidden states (..., hidden)."""
        return self.predictions(hidden)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to CUDA through pinned memory without blocking the host (the copy is
    ordered before later kernels on the same stream)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
