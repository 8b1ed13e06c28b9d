"""`simcli train distill`: the recipe's second step (kexue.fm/archives/8541). A fine-tuned encoder (the
teacher) passes its similarities to RoFormer-Sim (the student) while the student keeps generating:

    L = 100 * mean over the batch's sentence pairs (i, j) of (cos_teacher(i, j) - cos_student(i, j))^2
      + the UniLM seq2seq cross-entropy on the batch's label-1 pairs (first sentence -> second).

The seq2seq input is `[CLS] a [SEP] b [SEP]`, token type 0 on `[CLS] a [SEP]` and 1 on `b [SEP]`; a attends
within a, b to all of a and causally within b (UniLM, arXiv:1905.03197; kexue.fm/archives/7427): with
c = cumsum(token type), position i attends j iff c[j] <= c[i]. The output stays a RoFormer-Sim checkpoint
(MLM head included) that `simcli generate` uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from simcli.errors import ModelError
from simcli.models.native import MLMHead, NativeBackbone
from simcli.models.unilm import build_mlm_head, check_can_generate
from simcli.training.checkpoint import write_checkpoint
from simcli.training.loop import Batch, Trainer
from simcli.training.options import TrainOptions
from simcli.types import EncoderConfig

SIM_WEIGHT = 100.0


def seq2seq_inputs(
    sources: Sequence[list[int]], targets: Sequence[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """UniLM training rows from tokenised sources and targets (each `[CLS] ... [SEP]`).

    Returns:
        ids (rows, t), token types (rows, t), the allowed-attention matrix (rows, t, t) and the labels
        (rows, t): the token each position predicts (the next one, over `b [SEP]`), -100 elsewhere.
    """
    rows = [s + t[1:] for s, t in zip(sources, targets, strict=True)]
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    types = torch.ones((len(rows), longest), dtype=torch.long)  # padding counts as segment b
    real = torch.zeros((len(rows), longest), dtype=torch.bool)
    labels = torch.full((len(rows), longest), -100, dtype=torch.long)
    for i, (s, r) in enumerate(zip(sources, rows, strict=True)):
        ids[i, : len(r)] = torch.as_tensor(r)
        types[i, : len(s)] = 0
        real[i, : len(r)] = True
        # position p predicts token p + 1, from the source's [SEP] to the token before the last [SEP]
        labels[i, len(s) - 1 : len(r) - 1] = torch.as_tensor(r[len(s) :])
    c = types.cumsum(1)
    allowed = (c[:, None, :] <= c[:, :, None]) & real[:, None, :]
    return ids, types, allowed, labels


def unilm_loss(
    backbone: NativeBackbone,
    head: MLMHead,
    sources: Sequence[list[int]],
    targets: Sequence[list[int]],
    pad_id: int,
) -> torch.Tensor:
    """Mean cross-entropy of the target tokens (its [SEP] included) given the source, under the UniLM mask."""
    hidden, labels = unilm_hidden(backbone, sources, targets, pad_id)
    picked = labels != -100
    logits = head(hidden[picked])
    return F.cross_entropy(logits.float(), labels[picked])


def unilm_hidden(
    backbone: NativeBackbone, sources: Sequence[list[int]], targets: Sequence[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states (rows, t, hidden) of `[CLS] a [SEP] b [SEP]` under the UniLM mask, and the labels
    (rows, t) of `seq2seq_inputs`, both on the backbone's device."""
    ids, types, allowed, labels = seq2seq_inputs(sources, targets, pad_id)
    dev = next(backbone.parameters()).device
    bias = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(
        ~allowed, torch.finfo(torch.float32).min
    )
    hidden = backbone(
        ids.to(dev), token_type_ids=types.to(dev), attention_bias=bias[:, None].to(dev)
    ).last_hidden_state
    return hidden, labels.to(dev)


class Distiller(Trainer):
    """Trains the student's encoder (pooler included) and its MLM head."""

    def __init__(
        self,
        files: Sequence[str | Path],
        teacher: str | EncoderConfig,
        student: str | EncoderConfig,
        out: str | Path,
        options: TrainOptions,
        *,
        log: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.teacher_name = teacher
        super().__init__(files, student, out, options, log=log)

    def prepare(self) -> None:
        from simcli.models.encoder import load_encoder

        ck = self.encoder.checkpoint
        check_can_generate(ck)
        backbone = self.model.backbone
        if not isinstance(backbone, NativeBackbone):
            raise ModelError(f"{ck.model}: distillation needs the native engine for this checkpoint")
        self.mlm = build_mlm_head(backbone, ck.state_dict(), ck.weights_path)
        self.modules["mlm"] = self.mlm
        o = self.options
        cfg = (
            self.teacher_name
            if isinstance(self.teacher_name, EncoderConfig)
            else EncoderConfig(self.teacher_name)
        )
        self.teacher = load_encoder(
            cfg.with_options(max_length=o.encoder.max_length, device=o.encoder.device, dtype="float32")
        )
        texts = self.texts()
        self.log(f"teacher {cfg.model}: encoding {len(texts):,} sentences")
        vectors = self.teacher.encode(texts, normalize=True)  # fixed: the teacher is not trained
        self.teacher_vectors = {t: i for i, t in enumerate(texts)}
        self.teacher_matrix = torch.from_numpy(vectors)

    def loss(self, b: Batch) -> torch.Tensor:
        n = len(b.targets)
        vec = F.normalize(self.vectors(b.rows), dim=-1)
        cos_s = vec @ vec.T
        t = self.teacher_matrix[[self.teacher_vectors[x] for x in b.texts]].to(vec.device)
        cos_t = t @ t.T
        loss = SIM_WEIGHT * ((cos_t - cos_s) ** 2).mean()
        positive = (b.targets == 1).nonzero()[:, 0].tolist()
        if positive:
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp != torch.float32):
                gen = unilm_loss(
                    self.model.backbone,  # type: ignore[arg-type]
                    self.mlm,
                    [b.rows[i] for i in positive],
                    [b.rows[n + i] for i in positive],
                    self.encoder.tokenizer.pad_id,
                )
            loss = loss + gen.float()
        return loss

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "teacher": self.teacher.checkpoint.weights_sha256}

    def write(self, folder: Path, record: dict[str, Any]) -> None:
        write_checkpoint(folder, self.encoder.checkpoint, self.model, record, mlm_head=self.mlm)

    def training_record(self) -> dict[str, Any]:
        from simcli.models.loading import recorded_name

        record = super().training_record()
        record.update(
            task="distill",
            teacher=recorded_name(self.teacher.checkpoint.model),
            teacher_weights_sha256=self.teacher.checkpoint.weights_sha256,
            loss="100 * mean (cos_teacher - cos_student)^2 + UniLM seq2seq cross-entropy on label-1 pairs",
        )
        record["hyperparameters"].pop("loss", None)
        return record


def distill(
    files: Sequence[str | Path],
    teacher: str | EncoderConfig,
    student: str | EncoderConfig,
    out: str | Path,
    options: TrainOptions | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[int, int, float, float], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Distil `teacher`'s sentence similarities into the RoFormer-Sim `student`, keeping its generation.

    Args:
        files: labelled pair files; every pair feeds the similarity term, label-1 pairs the seq2seq term
            (scores: give `threshold`).
        teacher: the fine-tuned encoder (any model simcli loads).
        student: a RoFormer-Sim (or SimBERT) checkpoint with its MLM head.
        out: output folder: a RoFormer-Sim checkpoint for `simcli generate`, plus training.json.
        options: the hyper-parameters (batch_size, epochs, steps, lr, seed, eval_files, ...); the loss is
            always the distillation's.

    Returns:
        (the output folder, the training record).
    """
    from simcli.training.checkpoint import check_out

    check_out(Path(out), overwrite)
    # cosent reads every pair with its numeric label, in one group
    options = dataclasses.replace(options or TrainOptions(), loss="cosent")
    runner = Distiller(files, teacher, student, out, options, log=log or (lambda _m: None))
    record = runner.train(resume=resume, overwrite=overwrite, on_step=on_step)
    return Path(out), record


def teacher_student_gap(teacher: Any, student: Any, texts: Sequence[str]) -> float:
    """100 * mean over all sentence pairs of (cos_teacher - cos_student)^2: the distillation's target."""
    a = teacher.encode(list(texts), normalize=True)
    b = student.encode(list(texts), normalize=True)
    return float(SIM_WEIGHT * np.mean((a @ a.T - b @ b.T) ** 2))
