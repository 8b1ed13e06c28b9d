"""`simcli train generator`: make a similar-sentence generator from pairs of similar sentences, the first
stage of SimBERT / RoFormer-Sim (kexue.fm/archives/7427 and 8454), on the one training loop.

One forward pass over `[CLS] a [SEP] b [SEP]` under the UniLM mask (a sees a only, b sees a and b's past)
trains both halves of the model, since the [CLS] state of that pass is the [CLS] state of `a` alone:

    L = seq2seq + similarity
    seq2seq    = mean cross-entropy of the MLM head's logits over b's tokens and its final [SEP], each
                 predicted at the position before it (the first at a's [SEP])
    similarity = softmax cross-entropy over the rows of a batch of the scaled cosines of the linear pooler's
                 [CLS] vectors (no tanh), a row's own cosine excluded; row 2i's positive is row 2i+1 and the
                 reverse (each pair sits in the batch in both orders, (a, b) then (b, a)), scale 20.

BART-style noise (RoFormer-Sim): with probability `noise` a row's source is corrupted by whole-word masking
over its jieba words: per word, r < 0.12 masks all its tokens, 0.12 <= r < 0.135 keeps it, 0.135 <= r < 0.15
replaces its tokens by random ids. The target is always the clean sentence: noisy in, similar clean out.
Texts longer than 1.2 x max length characters are cut at sentence punctuation and the first piece kept,
then each sentence is truncated to max length tokens (counted).

Where the starting checkpoint has no MLM head or no pooler (a sentence-embedding BERT such as m3e), they are
created: the head as BERT's (dense, activation, LayerNorm, decoder tied to the word embeddings, zero bias),
the pooler as an identity dense layer. The output is the standard layout of the family: SimBERT for a BERT
(`"pooler_activation": "linear"`), the RoFormer-Sim hub layout for a RoFormer.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simcli.errors import ModelError
from simcli.models.native import MLMHead, NativeBackbone
from simcli.models.unilm import build_mlm_head
from simcli.training.data import PairData
from simcli.training.distillation import unilm_hidden
from simcli.training.generator_data import POSITIVE, read_generator_data
from simcli.training.loop import Batch, Trainer
from simcli.training.options import SIM_SCALE, TrainOptions
from simcli.types import EncoderConfig

# Cumulative per-word thresholds of the noise: masked below the first, kept below the second, random ids
# below the third, untouched above.
MASK_BELOW, KEEP_BELOW, RANDOM_BELOW = 0.12, 0.135, 0.15
CUT_AT = "\n。！？!?；;，, "
NOISE_STREAM = 1  # the noise's random stream, apart from the data order's (stream 0)


def cut_long(text: str, max_length: int) -> str:
    """`text`, or when longer than 1.2 x max_length characters its first piece cut at sentence punctuation
    (pieces joined while they fit; a first piece longer than that is kept whole)."""
    limit = int(1.2 * max_length)
    if len(text) <= limit:
        return text
    first = ""
    for piece in re.split(f"(?<=[{re.escape(CUT_AT)}])", text):
        if first and len(first) + len(piece) > limit:
            break
        first += piece
    return first.strip()


def noise_words(
    words: Sequence[Sequence[int]], rng: np.random.Generator, mask_id: int, vocab_size: int
) -> list[int]:
    """The token ids of `words` (each word's ids) with whole-word masking / random replacement."""
    out: list[int] = []
    for w, r in zip(words, rng.random(len(words)), strict=True):
        if r < MASK_BELOW:
            out += [mask_id] * len(w)
        elif KEEP_BELOW <= r < RANDOM_BELOW:
            out += (rng.integers(1, vocab_size, len(w))).tolist()  # any id but [PAD]
        else:
            out += w
    return out


def noisy_source(
    words: Sequence[Sequence[int]],
    rng: np.random.Generator,
    rate: float,
    *,
    mask_id: int,
    vocab_size: int,
    cls_id: int,
    sep_id: int,
    max_length: int,
) -> list[int] | None:
    """`[CLS] noised words [SEP]` (truncated to max_length) with probability `rate`, else None (clean)."""
    if rate <= 0 or rng.random() >= rate:
        return None
    ids = noise_words(words, rng, mask_id, vocab_size)
    return [cls_id, *ids[: max_length - 2], sep_id]


def similarity_loss(pooled: torch.Tensor, scale: float = SIM_SCALE) -> torch.Tensor:
    """In-batch softmax cross-entropy of scale x cosine between rows, a row's own cosine excluded and the
    positive of row i being row i XOR 1. pooled: (rows, dim), rows even."""
    v = F.normalize(pooled.float(), dim=-1)
    sim = (v @ v.T) * scale
    eye = torch.eye(len(v), dtype=torch.bool, device=v.device)
    sim = sim.masked_fill(eye, float("-inf"))
    partner = torch.arange(len(v), device=v.device) ^ 1
    return F.cross_entropy(sim, partner)


def generator_losses(
    backbone: NativeBackbone,
    pooler: nn.Linear,
    head: MLMHead,
    sources: Sequence[list[int]],
    targets: Sequence[list[int]],
    pad_id: int,
    scale: float = SIM_SCALE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(seq2seq, similarity) of rows `[CLS] source [SEP] target [SEP]` from one UniLM forward pass; rows
    2i and 2i+1 are the two orders of a pair."""
    hidden, labels = unilm_hidden(backbone, sources, targets, pad_id)
    picked = labels != -100
    seq2seq = F.cross_entropy(head(hidden[picked]).float(), labels[picked])
    return seq2seq, similarity_loss(pooler(hidden[:, 0]), scale)


def new_mlm_head(backbone: NativeBackbone, seed: int) -> MLMHead:
    """BERT's MLM head, freshly initialised as BERT's (normal(0, 0.02) dense, LayerNorm (1, 0), zero bias),
    its decoder tied to the word embeddings."""
    emb = backbone.embeddings.word_embeddings.weight
    head = MLMHead(backbone.config).to(device=emb.device, dtype=emb.dtype)
    g = torch.Generator().manual_seed(seed)
    p = head.predictions
    with torch.no_grad():
        w = p.transform.dense.weight
        w.copy_(torch.randn(w.shape, generator=g) * 0.02)
        p.transform.dense.bias.zero_()
        p.transform.LayerNorm.weight.fill_(1.0)
        p.transform.LayerNorm.bias.zero_()
        p.decoder.bias.zero_()
        p.bias.zero_()
    p.decoder.weight = emb
    return head


def identity_pooler(hidden: int, device: torch.device) -> nn.Linear:
    """A dense layer on [CLS] that starts as the identity: the first sentence vectors are the [CLS] states."""
    pooler = nn.Linear(hidden, hidden).to(device)
    with torch.no_grad():
        pooler.weight.copy_(torch.eye(hidden))
        pooler.bias.zero_()
    return pooler


class GeneratorTrainer(Trainer):
    """Trains the encoder, its linear pooler and its MLM head on positive pairs (the loop's generator mode)."""

    mlm: MLMHead
    origin: dict[str, str]  # where the pooler and the MLM head came from

    def read_data(self) -> tuple[dict[str, PairData], Sequence[Any]]:
        o = self.options
        return read_generator_data(self.files, columns=o.columns, threshold=o.threshold, limit=o.limit)

    def prepare(self) -> None:
        ck = self.encoder.checkpoint
        backbone = self.model.backbone
        if ck.family == "wobert":
            raise ModelError(
                f"{ck.model}: a BERT with a word vocab is read as WoBERT, which simcli does not generate "
                "with; start from a char BERT, a RoFormer or a RoFormer-Sim"
            )
        if not isinstance(backbone, NativeBackbone):
            raise ModelError(f"{ck.model}: training a generator needs the native engine for this checkpoint")
        self.origin = {
            "pooler": "checkpoint" if self.model.pooler is not None else "new (identity)",
            "mlm_head": "checkpoint" if ck.has_mlm_head else "new (decoder tied to the word embeddings)",
        }
        if ck.has_mlm_head:
            self.mlm = build_mlm_head(backbone, ck.state_dict(), ck.weights_path)
        else:
            self.mlm = new_mlm_head(backbone, self.options.seed)
        if self.model.pooler is None:
            self.model.pooler = identity_pooler(backbone.config.hidden_size, self.device)
        # the sentence vector of the output: the linear pooler on [CLS], as SimBERT / RoFormer-Sim
        self.model.pooler_activation, self.model.pooling, self.model.normalize = "linear", "pooler", False
        self.encoder.pooling = "pooler"
        self.modules["mlm"] = self.mlm
        self.log(f"pooler: {self.origin['pooler']}; MLM head: {self.origin['mlm_head']}")

    def _tokenize(self) -> dict[str, list[int]]:
        tok, n = self.encoder.tokenizer, self.options.encoder.max_length
        texts = self.texts()
        short = [cut_long(t, n) for t in texts]
        ids = tok.encode_batch(short, n + 1).ids  # n + 1: longer than n means it was cut
        cut = {t for t, s, i in zip(texts, short, ids, strict=True) if s != t or len(i) > n}
        d = self.groups[POSITIVE]
        self.cut_pairs = sum(1 for a, b in zip(d.s1, d.s2, strict=True) if a in cut or b in cut)
        if self.cut_pairs:
            self.log(f"--max-length {n}: cut {self.cut_pairs:,} of {len(d):,} pairs (a sentence was longer)")
        self.words = self._words(texts, short) if self.options.noise > 0 else {}
        tokens = {t: i if len(i) <= n else [*i[: n - 1], tok.sep_id] for t, i in zip(texts, ids, strict=True)}
        if self.options.group_by_length:  # a row is as long as its pair: batches of similar rows pad little
            rows = np.array([len(tokens[a]) + len(tokens[b]) for a, b in zip(d.s1, d.s2, strict=True)])
            self.schedule = dataclasses.replace(self.schedule, lengths=rows)
        return tokens

    def _words(self, texts: list[str], short: list[str]) -> dict[str, list[list[int]]]:
        """Each text's jieba words as token ids (the noise masks whole words)."""
        from simcli.models.word_tokenizer import jieba_segmenter

        jieba = jieba_segmenter()
        words = [jieba.lcut(s) for s in short]
        flat = list(dict.fromkeys(w for ws in words for w in ws))
        ids = self.encoder.tokenizer.encode_batch(flat, 512).ids
        of = {w: i[1:-1] for w, i in zip(flat, ids, strict=True)}
        return {t: [of[w] for w in ws] for t, ws in zip(texts, words, strict=True)}

    def batch(self, index: int) -> Batch:
        """Both orders of each pair as neighbouring rows; `rows` holds the sources, then the targets."""
        o, tok = self.options, self.encoder.tokenizer
        d = self.groups[POSITIVE]
        picked = self.schedule.batch(index)[POSITIVE]
        rng = np.random.default_rng([o.seed, NOISE_STREAM, index])  # a pure function of the step: resumable
        vocab = min(tok.vocab_size, self.mlm.predictions.decoder.out_features)  # random ids: real tokens
        sources: list[list[int]] = []
        targets: list[list[int]] = []
        texts: list[str] = []
        for i in picked:
            for a, b in ((d.s1[i], d.s2[i]), (d.s2[i], d.s1[i])):
                noised = None
                if o.noise > 0:
                    noised = noisy_source(
                        self.words[a], rng, o.noise, mask_id=tok.mask_id, vocab_size=vocab,
                        cls_id=tok.cls_id, sep_id=tok.sep_id, max_length=o.encoder.max_length,
                    )  # fmt: skip
                sources.append(self.tokens[a] if noised is None else noised)
                targets.append(self.tokens[b])
                texts.append(a)
        n = len(picked)
        return Batch(sources + targets, torch.ones(n), torch.zeros(n, dtype=torch.bool), texts)

    def loss(self, b: Batch) -> torch.Tensor:
        m = len(b.rows) // 2
        assert self.model.pooler is not None and isinstance(self.model.backbone, NativeBackbone)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp != torch.float32):
            seq2seq, sim = generator_losses(
                self.model.backbone, self.model.pooler, self.mlm, b.rows[:m], b.rows[m:],
                self.encoder.tokenizer.pad_id, self.options.scale,
            )  # fmt: skip
        return seq2seq.float() + sim.float()

    def fingerprint(self) -> dict[str, Any]:
        o = self.options
        return {
            **super().fingerprint(),
            "scale": o.scale,
            "noise": o.noise,
            "group_by_length": o.group_by_length,
        }

    def write(self, folder: Path, record: dict[str, Any]) -> None:
        from simcli.training.checkpoint import write_generator_checkpoint

        write_generator_checkpoint(folder, self.encoder.checkpoint, self.model, self.mlm, record)

    def training_record(self) -> dict[str, Any]:
        record = super().training_record()
        hp = record["hyperparameters"]
        for unused in ("loss", "kind", "eval_files", "eval_every", "save_best"):
            hp.pop(unused, None)
        hp.update(
            scale=self.options.scale, noise=self.options.noise, group_by_length=self.options.group_by_length
        )
        record.update(
            task="generator",
            loss="UniLM seq2seq cross-entropy + in-batch similarity (softmax of scale x cosine)",
            pooling="pooler",
            heads=self.origin,
            positive_pairs=len(self.groups[POSITIVE]),
            cut_pairs=self.cut_pairs,
            classifier=None,
        )
        return record


def train_generator(
    files: Sequence[str | Path],
    model: str | EncoderConfig,
    out: str | Path,
    options: TrainOptions | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[int, int, float, float], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train a similar-sentence generator (SimBERT / RoFormer-Sim stage 1) from positive pairs.

    Args:
        files: pair files (label 1, or scores above `options.threshold`), groups (.jsonl lines of JSON
            lists of similar sentences) or triplets (`columns=("query", "title", "")`).
        model: any checkpoint simcli loads (BERT, m3e, sentence-transformers, RoFormer, RoFormer-Sim,
            SimBERT), or an EncoderConfig.
        out: the output folder: SimBERT layout for a BERT, RoFormer-Sim's for a RoFormer, plus training.json.
        options: hyper-parameters, e.g. `TrainOptions.generator(steps=1000, scale=20, noise=0.5)` (the
            stage-1 defaults under the given settings); default `TrainOptions.generator()`.
        resume: continue an interrupted run from `<out>.partial`.
        overwrite: replace an earlier training output at `out`.
        log: called with progress messages (file counts, where the heads came from).
        on_step: called after each optimizer step with (step, total steps, loss, pairs/s).

    Returns:
        (the output folder, the training record also written to its training.json).
    """
    from simcli.training.checkpoint import check_out

    check_out(Path(out), overwrite)  # before the data and the model are read
    options = dataclasses.replace(options or TrainOptions.generator(), loss="cosent")  # no classifier
    runner = GeneratorTrainer(files, model, out, options, log=log or (lambda _m: None))
    record = runner.train(resume=resume, overwrite=overwrite, on_step=on_step)
    return Path(out), record
