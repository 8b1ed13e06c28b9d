"""RoFormer-Sim's (and SimBERT's) UniLM seq2seq mode: the source encoded once, then one token at a time
from a KV cache.

Layout `[CLS] a [SEP] b [SEP]`, token_type 0 on `[CLS] a [SEP]` and 1 on `b`; a attends bidirectionally
within a, b attends to all of a and causally within b (kexue.fm/archives/7427 and 8454; c = cumsum(token_type), i attends j
iff c[j] <= c[i]). With a KV cache that is exactly: the source pass with full attention over the real
source tokens, then each new token (type 1) attending to the whole cache and itself.

The layers are simcli's own (`NativeBackbone.decode` and `MLMHead` in simcli/models/native.py), so
generation never imports transformers (~3 s of a cold start). They take per-row positions, since rows of a
batch have sources of different lengths and each row continues at its own length (kexue.fm/archives/8265), and a
preallocated cache whose rows can be repeated (n samples of one source) and dropped (finished samples) in
one copy. transformers is the test oracle: tests/generate/test_generate.py checks the cached logits against its full
forward pass over `[CLS] a [SEP] b` with the explicit UniLM mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from simcli.errors import ModelError
from simcli.models.native import KVCache, MLMHead, NativeBackbone
from simcli.types import ProgressFn

__all__ = ["KVCache", "UniLM", "build_mlm_head", "check_can_generate", "sample"]

if TYPE_CHECKING:
    from simcli.models.encoder import Encoder
    from simcli.models.loading import Checkpoint


def build_mlm_head(
    backbone: NativeBackbone, state_dict: dict[str, torch.Tensor], weights_path: Any
) -> MLMHead:
    """The masked-LM head with the checkpoint's `cls.predictions.*` weights, on the backbone's device and dtype.

    The decoder is tied to the word embeddings (the JunnYu/RoFormer_pytorch hub port): when the file's decoder weight is absent
    or equal to them, the module shares the backbone's embedding tensor instead of holding a copy.
    """
    from simcli.models.loading import check_weights

    emb = backbone.embeddings.word_embeddings.weight
    with torch.device("meta"):
        head = MLMHead(backbone.config)
    pre = "cls.predictions."
    bias = state_dict.get(pre + "decoder.bias", state_dict.get(pre + "bias"))
    needed = ["transform.dense.weight", "transform.dense.bias", "transform.LayerNorm.weight"]
    needed += ["transform.LayerNorm.bias"]
    missing = [pre + k for k in needed if pre + k not in state_dict]
    if missing or bias is None:
        raise ModelError(f"MLM head weights missing: {', '.join(missing) or pre + 'bias'}")
    file_weights = {f"predictions.{k}": state_dict[pre + k] for k in needed}
    file_weights |= {"predictions.bias": bias, "predictions.decoder.bias": bias}
    decoder = state_dict.get(pre + "decoder.weight")
    tied = decoder is None or torch.equal(decoder.to(emb.dtype).to(emb.device), emb.detach())
    if decoder is not None and not tied:
        file_weights["predictions.decoder.weight"] = decoder
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    weights = check_weights(weights_path, file_weights, expected, optional={"predictions.decoder.weight"})
    owned = {k: v.to(device=emb.device, dtype=emb.dtype, copy=True) for k, v in weights.items()}
    head.load_state_dict(owned, strict=False, assign=True)
    if tied:
        head.predictions.decoder.weight = emb
    return head.eval()


def check_can_generate(ck: Checkpoint) -> None:
    """ModelError unless the checkpoint was trained for UniLM seq2seq: RoFormer-Sim, or a char BERT with a
    trained pooler (SimBERT), with its MLM head (the JunnYu/RoFormer_pytorch hub port; kexue.fm/archives/7427 and 8454)."""
    family, model = ck.family, ck.model
    if not ck.similarity_trained:
        why = {
            "wobert": "WoBERT was trained as a masked LM only",
            "roformer-word": "word RoFormer was trained as a masked LM only",
            "roformer-char": "char RoFormer was trained as a masked LM only",
            "bert": "this BERT checkpoint is not SimBERT (no trained pooler, or its config does not say "
            'the pooler is linear: a SimBERT port without it needs "pooler_activation": "linear" in config.json)',
        }.get(family, f"family {family}")
        raise ModelError(
            f"{model}: cannot generate: {why}, it has no UniLM-trained seq2seq head "
            "(use a RoFormer-Sim checkpoint, e.g. junnyu/roformer_chinese_sim_char_ft_base)"
        )
    if not ck.has_mlm_head:
        raise ModelError(f"{model}: cannot generate: the weights have no MLM head (cls.predictions.*)")


class UniLM:
    """Incremental seq2seq decoding with a RoFormer (or BERT, for SimBERT) backbone with full attention and
    its MLM head (simcli's native modules)."""

    def __init__(self, backbone: NativeBackbone, head: MLMHead) -> None:
        self.backbone = backbone
        self.head = head
        cfg = backbone.config
        self.layers = cfg.num_hidden_layers
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.max_positions = cfg.max_position_embeddings
        self.vocab_size = cfg.vocab_size
        emb = backbone.embeddings.word_embeddings.weight
        self.rotary = cfg.rotary
        self.device: torch.device = emb.device
        self.dtype: torch.dtype = emb.dtype
        self._min = torch.finfo(self.dtype).min

    @classmethod
    def from_encoder(cls, enc: Encoder) -> UniLM:
        """The UniLM decoder of a loaded RoFormer-Sim encoder; ModelError for models without the UniLM head.

        It shares the encoder's native backbone (one copy of the weights for sampling and re-ranking); an
        encoder on transformers' modules gets a native backbone built from the same weights.
        """
        ck = enc.checkpoint
        check_can_generate(ck)
        sd = ck.state_dict()
        backbone = enc.backbone
        if not isinstance(backbone, NativeBackbone):
            from simcli.models.encoder import cast_backbone
            from simcli.models.loading import build_backbone

            try:
                backbone, _ = build_backbone(ck, sd, engine="native")
            except ModelError as e:
                raise ModelError(f"{ck.model}: cannot generate: {e}") from None
            cast_backbone(backbone, enc.device, enc.dtype)  # the same layers as the encoder's
        assert isinstance(backbone, NativeBackbone)
        return cls(backbone, build_mlm_head(backbone, sd, ck.weights_path))

    def key_bias(self, allowed: torch.Tensor) -> torch.Tensor:
        """Additive attention bias (batch, 1, 1, keys) from a boolean (batch, keys): 0 allowed, min blocked.

        transformers' eager RoFormer attention adds the mask to the scores, so it must be additive.
        """
        bias = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        bias.masked_fill_(~allowed, self._min)
        return bias[:, None, None, :]

    def _forward(
        self,
        ids: torch.Tensor,
        token_type: int,
        positions: torch.Tensor,
        bias: torch.Tensor,
        cache: KVCache,
    ) -> torch.Tensor:
        """Run the layers over `ids` (batch, t), writing their keys/values into `cache`; last hidden states."""
        return self.backbone.decode(ids, torch.full_like(ids, token_type), positions, bias, cache)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[KVCache, torch.Tensor]:
        """Encode right-padded sources `[CLS] a [SEP]` (token_type 0, full attention over real tokens).

        Args:
            ids: (sources, longest) token ids, right-padded.
            lengths: (sources,) real lengths.

        Returns:
            The cache (capacity = longest) and float32 logits (sources, vocab) at each source's [SEP], which
            predict the first generated token (kexue.fm/archives/7427 and 8454).
        """
        ids, lengths = ids.to(self.device), lengths.to(self.device)
        s, longest = ids.shape
        cache = KVCache.empty(self.layers, s, self.heads, longest, self.head_dim, self._like())
        allowed = torch.arange(longest, device=self.device)[None, :] < lengths[:, None]
        positions = torch.arange(longest, device=self.device)[None, :]
        hidden = self._forward(ids, 0, positions, self.key_bias(allowed), cache)  # (s, longest, h)
        last = hidden[torch.arange(s, device=self.device), lengths - 1]  # (s, h)
        return cache, self.head(last).float()

    @torch.inference_mode()
    def step(
        self, tokens: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        """Feed one generated token per row (token_type 1) and return float32 logits (rows, vocab).

        Args:
            tokens: (rows,) the tokens just chosen.
            positions: (rows,) their rotary positions (source length + index in the continuation).
            bias: (rows, 1, 1, cache.length + 1) additive key bias (padded source keys blocked).
            cache: the cache; this token's keys/values are appended.
        """
        hidden = self._forward(tokens[:, None], 1, positions[:, None], bias, cache)  # (rows, 1, h)
        return self.head(hidden[:, 0]).float()

    def _like(self) -> torch.Tensor:
        return torch.empty(0, dtype=self.dtype, device=self.device)


# -- sampling ----------------------------------------------------------------------------------------------

#: Size of the top-k prefilter tried before a full sort for nucleus sampling (exact whenever it covers top_p).
NUCLEUS_PREFILTER = 256
#: Finished rows are dropped from the batch once they are this share of it (a drop copies the cache).
COMPACT_SHARE = 0.125


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: temperature, then top-k, then top-p (nucleus), or greedy argmax."""

    top_p: float = 0.95
    top_k: int | None = None
    temperature: float = 1.0
    greedy: bool = False


def choose_tokens(logits: torch.Tensor, sampling: Sampling, uniforms: torch.Tensor | None) -> torch.Tensor:
    """Next token per row from float32 logits (rows, vocab) and one uniform [0, 1) draw per row.

    Sampling by inverting the CDF of the truncated distribution with the given uniforms keeps the random
    stream under the caller's control (one generator per source, see `UniLM.sample`).
    """
    if sampling.greedy:
        return logits.argmax(-1)
    if uniforms is None:
        raise ValueError("sampling needs uniforms")
    if sampling.temperature != 1.0:
        logits = logits / sampling.temperature
    if sampling.top_k is not None:
        values, index = logits.topk(min(sampling.top_k, logits.shape[-1]))  # sorted, descending
        probs = values.softmax(-1)
    else:
        probs = logits.softmax(-1)
        k = min(NUCLEUS_PREFILTER, probs.shape[-1])
        values, index = probs.topk(k)
        if k < probs.shape[-1] and not bool((values.sum(-1) >= sampling.top_p).all()):
            values, index = probs.sort(-1, descending=True)  # the nucleus is wider than the prefilter
        probs = values
    if sampling.top_p < 1.0:
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(before >= sampling.top_p, 0.0)
    cdf = probs.cumsum(-1)  # (rows, kept)
    target = (uniforms.to(cdf) * cdf[:, -1])[:, None]
    pick = torch.searchsorted(cdf, target, right=True).clamp_max(cdf.shape[-1] - 1)
    return index.gather(1, pick)[:, 0]


@dataclass(frozen=True)
class Job:
    """`count` continuations of one tokenised source, with the seed of its random stream."""

    ids: Sequence[int]
    count: int
    seed: int


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    ids = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return ids, lengths


class _Uniforms:
    """One torch.Generator per job: a source's draws depend only on its seed and its own finished rows,
    not on which other sources share the batch."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        self.generators = [torch.Generator().manual_seed(j.seed) for j in jobs]

    def draw(self, job_of_row: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
        live = ~finished
        counts = torch.bincount(job_of_row[live], minlength=len(self.generators)).tolist()
        parts = [torch.rand(c, generator=g) for g, c in zip(self.generators, counts) if c]
        u = torch.zeros(len(finished))
        if parts:
            u[live] = torch.cat(parts)
        return u


def sample_batch(
    model: UniLM, jobs: Sequence[Job], sampling: Sampling, max_new_tokens: int, sep_id: int, pad_id: int
) -> list[list[int]]:
    """Continuations of several sources in one batch: each source encoded once, its cache repeated `count`
    times, rows dropped as they finish. Returns the generated ids per row (jobs in order, [SEP] excluded).
    """
    dev = model.device
    ids, lengths = _pad([j.ids for j in jobs], pad_id)
    cache, logits = model.prefill(ids, lengths)
    longest = ids.shape[1]
    if longest + max_new_tokens - 1 > model.max_positions:
        raise ModelError(f"source ({longest}) + new tokens ({max_new_tokens}) exceed the model's positions")
    job_of_row = torch.repeat_interleave(torch.arange(len(jobs)), torch.tensor([j.count for j in jobs]))
    rows = len(job_of_row)
    # The last chosen token is never fed back, hence capacity longest + max_new_tokens - 1.
    cache = cache.select(job_of_row.to(dev), capacity=longest + max_new_tokens - 1)
    logits = logits.index_select(0, job_of_row.to(dev))
    src_len = lengths[job_of_row]  # (rows,) first generated position of each row
    allowed = torch.ones((rows, cache.capacity), dtype=torch.bool)
    allowed[:, :longest] = torch.arange(longest)[None, :] < src_len[:, None]  # padded source keys never seen
    bias = model.key_bias(allowed.to(dev))  # (rows, 1, 1, capacity)
    positions = src_len.to(dev)
    slot = torch.arange(rows)  # output row of each live row
    finished = torch.zeros(rows, dtype=torch.bool)
    out = torch.full((rows, max_new_tokens), sep_id, dtype=torch.long)
    uniforms = None if sampling.greedy else _Uniforms(jobs)
    for t in range(max_new_tokens):
        u = uniforms.draw(job_of_row, finished) if uniforms is not None else None
        tokens = choose_tokens(logits, sampling, u)
        chosen = tokens.cpu()
        live = ~finished
        out[slot[live], t] = chosen[live]
        finished |= chosen == sep_id
        if t == max_new_tokens - 1 or bool(finished.all()):
            break
        if int(finished.sum()) >= COMPACT_SHARE * len(finished):
            keep = (~finished).nonzero()[:, 0]
            keep_dev = keep.to(dev)
            cache = cache.select(keep_dev)
            bias, positions, tokens = bias[keep_dev], positions[keep_dev], tokens[keep_dev]
            slot, job_of_row, finished = slot[keep], job_of_row[keep], finished[keep]
        logits = model.step(tokens, positions + t, bias[..., : cache.length + 1], cache)
    result = []
    for row in out.tolist():
        end = row.index(sep_id) if sep_id in row else len(row)
        result.append(row[:end])
    return result


def plan_batches(jobs: Sequence[Job], max_rows: int, row_budget: Callable[[int], int]) -> list[list[int]]:
    """Job indices grouped into batches of at most `max_rows` rows, longest sources first.

    `row_budget(longest)` caps the rows of a batch whose longest source has that length (cache memory).
    A job never spans batches: split jobs larger than the cap beforehand.
    """
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i].ids))
    out: list[list[int]] = []
    current: list[int] = []
    rows = cap = 0
    for i in order:
        if not current:
            cap = max(1, min(max_rows, row_budget(len(jobs[i].ids))))
        elif rows + jobs[i].count > cap:
            out.append(current)
            current, rows = [], 0
            cap = max(1, min(max_rows, row_budget(len(jobs[i].ids))))
        current.append(i)
        rows += jobs[i].count
    if current:
        out.append(current)
    return out


def sample(
    model: UniLM,
    jobs: Sequence[Job],
    sampling: Sampling,
    *,
    max_new_tokens: int,
    sep_id: int,
    pad_id: int,
    max_rows: int,
    cache_bytes: int,
    progress: ProgressFn | None = None,
) -> list[list[list[int]]]:
    """Generated ids of every job (job order; `count` rows each), batched under a row and cache-memory cap.

    Args:
        model: the UniLM decoder.
        jobs: sources with their sample counts and seeds (a job must fit one batch: count <= max_rows).
        sampling: how tokens are chosen.
        max_new_tokens: most tokens per continuation ([SEP] stops earlier).
        sep_id, pad_id: the tokenizer's [SEP] and [PAD].
        max_rows: most rows (samples) in one batch.
        cache_bytes: memory budget of one batch's KV cache.
        progress: called with (rows, tokens they generated) after each batch.
    """
    elem = torch.finfo(model.dtype).bits // 8
    per_position = 2 * model.layers * model.heads * model.head_dim * elem

    def row_budget(longest: int) -> int:
        return cache_bytes // (per_position * (longest + max_new_tokens))

    # A job larger than one batch is split; chunk c > 0 gets its own seed derived from the job's.
    pieces: list[Job] = []
    owner: list[int] = []
    for i, j in enumerate(jobs):
        cap = max(1, min(max_rows, row_budget(len(j.ids))))
        for c, start in enumerate(range(0, j.count, cap)):
            seed = j.seed if c == 0 else (j.seed + c * 0x9E3779B97F4A7C15) % (1 << 63)
            pieces.append(Job(j.ids, min(cap, j.count - start), seed))
            owner.append(i)
    results: list[list[list[int]]] = [[] for _ in jobs]
    for batch in plan_batches(pieces, max_rows, row_budget):
        rows = sample_batch(model, [pieces[i] for i in batch], sampling, max_new_tokens, sep_id, pad_id)
        done: dict[int, list[list[int]]] = {}
        start = 0
        for i in batch:
            done[i] = rows[start : start + pieces[i].count]
            start += pieces[i].count
        for i in sorted(done):  # pieces of a job are consecutive in `pieces`: keep their order
            results[owner[i]].extend(done[i])
        if progress is not None:
            progress(start, sum(map(len, rows)))
    return results
