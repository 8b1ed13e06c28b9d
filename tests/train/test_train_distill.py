"""`simcli train distill`: the student's similarities move towards the teacher's while it still generates."""

from __future__ import annotations

from pathlib import Path

import torch

from simcli.models.encoder import load_encoder
from simcli.models.unilm import Job, Sampling, UniLM, build_mlm_head, sample_batch
from simcli.training import TrainOptions, distill
from simcli.training.distillation import seq2seq_inputs, teacher_student_gap, unilm_loss
from tests import checkpoints
from tests.invoke import simcli
from tests.train_data import pairs, write_pairs

MAX_NEW = 24


def _held_out_unilm_loss(model: Path, rows: list[tuple[str, str, str]]) -> float:
    enc = load_encoder(str(model))
    ck = enc.checkpoint
    head = build_mlm_head(enc.model.backbone, ck.state_dict(), ck.weights_path)  # type: ignore[arg-type]
    positive = [(a, b) for a, b, y in rows if y == "1"]
    ids = enc.tokenizer.encode_batch([x for p in positive for x in p], 64).ids
    with torch.no_grad():
        return float(unilm_loss(enc.model.backbone, head, ids[0::2], ids[1::2], enc.tokenizer.pad_id))  # type: ignore[arg-type]


def test_unilm_rows_follow_the_seq2seq_mask() -> None:
    ids, types, allowed, labels = seq2seq_inputs([[101, 5, 6, 102]], [[101, 7, 102]], pad_id=0)
    assert ids.tolist() == [[101, 5, 6, 102, 7, 102]]
    assert types.tolist() == [[0, 0, 0, 0, 1, 1]]
    a = allowed[0].int().tolist()
    assert a[1] == [1, 1, 1, 1, 0, 0]  # the source sees the source only, both ways
    assert a[4] == [1, 1, 1, 1, 1, 0] and a[5] == [1, 1, 1, 1, 1, 1]  # the target: all the source, causal
    assert labels.tolist() == [[-100, -100, -100, 7, 102, -100]]  # [SEP] predicts the first target token


def test_distill_lowers_the_gap_and_keeps_generation(tmp_path: Path) -> None:
    """The tiny student is built without dropout: with random weights, dropout noise swamps the similarity
    signal of a few dozen steps (real checkpoints train with theirs)."""
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    student = checkpoints.build_roformer_sim(
        tmp_path / "student", sep_bias=checkpoints.OFFLINE_SEP_BIAS, config=no_dropout
    )
    teacher = checkpoints.build_simbert(tmp_path / "teacher", with_pooler=False)
    train = write_pairs(tmp_path / "train.tsv", pairs(400, 1))
    held = pairs(80, 7)
    texts = [x for a, b, _ in held for x in (a, b)]
    t_enc = load_encoder(str(teacher))
    gap_before = teacher_student_gap(t_enc, load_encoder(str(student)), texts)
    gen_before = _held_out_unilm_loss(student, held)

    out, record = distill(
        [train],
        str(teacher),
        str(student),
        tmp_path / "sim-ft",
        TrainOptions(steps=60, batch_size=16, lr=1e-3),
    )
    assert record["task"] == "distill" and record["steps"] == 60
    gap_after = teacher_student_gap(t_enc, load_encoder(str(out)), texts)
    gen_after = _held_out_unilm_loss(out, held)
    assert gap_after < 0.8 * gap_before, (gap_before, gap_after)
    assert gen_after < 1.2 * gen_before, (gen_before, gen_after)  # generation did not blow up

    enc = load_encoder(str(out))
    assert enc.checkpoint.family == "roformer-sim" and enc.checkpoint.has_mlm_head
    unilm = UniLM.from_encoder(enc)
    tok = enc.tokenizer
    jobs = [Job(tok.encode(t, 64), 1, 0) for t in texts[:6]]
    generated = sample_batch(unilm, jobs, Sampling(greedy=True), MAX_NEW, tok.sep_id, tok.pad_id)
    assert all(len(g) < MAX_NEW for g in generated)  # every greedy continuation ended in [SEP]
    result = simcli("generate", texts[0], "--model", str(out), "--greedy")
    assert result.exit_code == 0, result.output
