"""`simcli train`: the losses against independent computations, learning on a synthetic task, the written
checkpoint reloading as the trained model, resume, and label errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from simcli.errors import BadInput, UsageError
from simcli.models.encoder import load_encoder
from simcli.training import train
from simcli.training.data import Schedule, read_labelled, read_training_data
from simcli.training.loop import Trainer, state_folder
from simcli.training.losses import cosent_loss, masked_softmax_loss
from simcli.training.options import TrainOptions
from tests import checkpoints
from tests.invoke import simcli
from tests.layouts import m3e_layout, st_layout
from tests.train_data import pairs, write_pairs

TEXTS = ["花呗怎么还款", "借呗额度怎么提升", "今天天气很好", "我不喜欢北京", "我喜欢北京"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoints.build_simbert(tmp_path_factory.mktemp("bert") / "bert", with_pooler=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pairs")
    return {
        "train": write_pairs(d / "train.tsv", pairs(1200, 1)),
        "dev": write_pairs(d / "dev.tsv", pairs(300, 2)),
        "nli": write_pairs(d / "nli.tsv", pairs(200, 3, nli=True)),
        "scores": write_pairs(d / "scores.tsv", pairs(200, 4, scores=True)),
    }


# -- losses -------------------------------------------------------------------------------------------------
def _log_softmax(x: np.ndarray) -> np.ndarray:
    return x - np.log(np.exp(x - x.max()).sum()) - x.max()


def test_masked_softmax_touches_only_its_logits() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    nli = torch.tensor([False, False, False, True, True, True])
    targets = torch.tensor([0, 1, 1, 0, 2, 1])
    loss = masked_softmax_loss(logits, nli, targets)
    loss.backward()
    grad = logits.grad
    assert grad is not None
    assert torch.all(grad[:3, 2:] == 0) and torch.all(grad[3:, :2] == 0)  # exactly zero, not small
    assert torch.all(grad[:3, :2] != 0) and torch.all(grad[3:, 2:] != 0)
    x = logits.detach().numpy()
    expected = -np.mean(
        [_log_softmax(x[i, :2])[targets[i]] for i in range(3)]
        + [_log_softmax(x[i, 2:])[targets[i]] for i in range(3, 6)]
    )
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-12)


def test_cosent_equals_numpy() -> None:
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(7, 16)), rng.normal(size=(7, 16))
    labels = np.array([0, 1, 2, 1, 0, 5, 3], dtype=np.float64)
    cos = (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
    total = sum(np.exp(20 * (cos[i] - cos[j])) for i in range(7) for j in range(7) if labels[i] < labels[j])
    expected = np.log(1 + total)
    got = cosent_loss(
        torch.nn.functional.cosine_similarity(torch.tensor(u), torch.tensor(v), dim=-1), torch.tensor(labels)
    )
    assert float(got) == pytest.approx(expected, rel=1e-6)


# -- data ----------------------------------------------------------------------------------------------------
def test_kinds_are_detected_and_counted(data: dict[str, Path]) -> None:
    assert read_labelled(data["train"])[0].kind == "binary"
    nli, summary = read_labelled(data["nli"])
    assert nli.kind == "nli" and set(summary.labels) == {"entailment", "neutral", "contradiction"}
    assert sum(summary.labels.values()) == 200
    scores, _ = read_labelled(data["scores"])
    assert scores.kind == "scores" and max(scores.targets) > 1
    cut, summary = read_labelled(data["scores"], threshold=2.5)
    assert cut.kind == "binary" and set(cut.targets) == {0.0, 1.0} and summary.threshold == 2.5
    with pytest.raises(UsageError, match="--threshold"):
        read_training_data([data["scores"]], loss="softmax")


@pytest.mark.parametrize(
    ("rows", "kind", "message"),
    [
        ([("a", "b", "entailment"), ("c", "d", "maybe")], "auto", r"x\.tsv:2: label 'maybe' is not one of"),
        ([("a", "b", "1"), ("c", "d", "0.5")], "binary", r"x\.tsv:2: label '0\.5' is not 0 or 1"),
        ([("a", "b", "1"), ("c", "d", "yes")], "auto", r"x\.tsv:2: label 'yes' is not a number"),
    ],
)
def test_bad_labels_name_file_and_line(tmp_path: Path, rows: list, kind: str, message: str) -> None:
    path = write_pairs(tmp_path / "x.tsv", rows)
    with pytest.raises(BadInput, match=message):
        read_labelled(path, kind=kind)
    result = simcli("train", str(path), "--model", "unused", "--out", str(tmp_path / "o"), "--kind", kind)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simcli: error:") and str(path) + ":2" in lines[0]


def test_binary_and_nli_are_sampled_one_to_one() -> None:
    s = Schedule({"binary": 100, "nli": 30}, batch_size=8, seed=0)
    seen = []
    for i in range(s.batches_per_epoch):
        b = s.batch(i)
        assert len(b["binary"]) == 4 and len(b["nli"]) == 4
        seen += b["binary"].tolist()
    assert sorted(seen) == list(range(100))  # an epoch is one pass over the larger group


def test_length_grouped_passes_cover_every_pair_once_with_little_padding() -> None:
    lengths = np.random.default_rng(0).integers(10, 130, 10_000)
    plain = Schedule({"positive": 10_000}, batch_size=48, seed=42)
    grouped = Schedule({"positive": 10_000}, batch_size=48, seed=42, lengths=lengths)

    def epoch(s: Schedule, e: int) -> list[np.ndarray]:
        return [s.batch(e * s.batches_per_epoch + i)["positive"] for i in range(s.batches_per_epoch)]

    for e in (0, 1):
        batches = epoch(grouped, e)
        assert sorted(np.concatenate(batches).tolist()) == list(range(10_000))  # each pair once a pass
        assert sorted(map(len, batches)) == sorted(map(len, epoch(plain, e)))  # one short batch, 10000 % 48
    # the padded tokens a pass costs (each batch padded to its longest row): over half padding at random
    padded = {
        name: sum(len(b) * lengths[b].max() for b in epoch(s, 0))
        for name, s in (("plain", plain), ("grouped", grouped))
    }
    assert lengths.sum() / padded["plain"] < 0.6 and lengths.sum() / padded["grouped"] > 0.95
    # batches are drawn from all over the data: the first batches of the two passes differ, and long and short
    # batches alternate rather than running longest first
    assert not np.array_equal(epoch(grouped, 0)[0], epoch(grouped, 1)[0])
    means = [lengths[b].mean() for b in epoch(grouped, 0)]
    assert means != sorted(means) and means != sorted(means, reverse=True)
    assert [b.tolist() for b in epoch(grouped, 0)] == [
        b.tolist() for b in epoch(grouped, 0)
    ]  # a pure function


# -- training ------------------------------------------------------------------------------------------------
def test_loss_falls_and_held_out_spearman_rises(
    bert_dir: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    out, record = train(
        [data["train"]], str(bert_dir), tmp_path / "out",
        TrainOptions(steps=200, batch_size=16, lr=3e-3, eval_files=[data["dev"]], eval_every=100),
    )  # fmt: skip
    history = [h["loss"] for h in record["loss_history"]]
    # each point is the mean of 10 steps of 16 pairs: noise ~0.01; seeds 1, 2, 42 fall by 0.04, 0.20, 0.09
    assert np.mean(history[-3:]) < np.mean(history[:3]) - 0.05
    before, after = record["eval"][0], record["eval"][-1]
    assert before["step"] == 0 and after["step"] == 200
    assert after["scores"]["dev"] > before["scores"]["dev"] + 15
    # the written model scores as recorded, through `simcli eval sts`
    result = simcli("eval", "sts", str(data["dev"]), "--model", str(out), "--whiten", "none", "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["spearman"] == pytest.approx(after["scores"]["dev"], abs=1e-3)
    rec = json.loads((out / "training.json").read_text(encoding="utf-8"))
    assert rec["data"][0]["pairs"] == 1200 and len(rec["data"][0]["sha256"]) == 64
    assert rec["hyperparameters"]["lr"] == 3e-3 and rec["steps"] == 200


def _layouts(roformer_sim_dir: Path, bert_dir: Path, tmp: Path) -> dict[str, Path]:
    return {
        "roformer-sim": roformer_sim_dir,
        "bert": bert_dir,
        "sentence-transformers": st_layout(
            bert_dir, tmp / "st", {"pooling_mode_mean_tokens": True}, normalize=True
        ),
        "m3e": m3e_layout(
            bert_dir, tmp / "m3e", {"do_lower_case": False}, uniem_embedding_strategy="last_mean"
        ),
    }


@pytest.mark.parametrize("layout", ["roformer-sim", "bert", "sentence-transformers", "m3e"])
def test_saved_checkpoint_encodes_like_the_trained_model(
    layout: str, roformer_sim_dir: Path, bert_dir: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    src = _layouts(roformer_sim_dir, bert_dir, tmp_path)[layout]
    out = tmp_path / "out"
    trainer = Trainer([data["train"]], str(src), out, TrainOptions(steps=3, batch_size=8, lr=1e-3))
    trainer.train()
    in_memory = trainer.encoder.encode(TEXTS)
    reloaded = load_encoder(str(out))
    np.testing.assert_array_equal(reloaded.encode(TEXTS), in_memory)
    assert not np.allclose(load_encoder(str(src)).encode(TEXTS), in_memory, atol=1e-4)  # it did train
    assert reloaded.checkpoint.family == trainer.encoder.checkpoint.family
    assert reloaded.pooling == trainer.encoder.pooling
    original = set(trainer.encoder.checkpoint.keys)
    assert set(reloaded.checkpoint.keys) == original  # the original's key names, MLM head included
    src_files = {p.name for p in src.iterdir()} - {"pytorch_model.bin", "model.safetensors"}
    assert src_files <= {p.name for p in out.iterdir()}  # tokenizer files, ST modules, configs kept
    assert (out / "classifier.safetensors").is_file() and (out / "training.json").is_file()
    if layout == "roformer-sim":
        assert reloaded.checkpoint.has_mlm_head and reloaded.pooler is not None


def test_resume_after_interruption_equals_an_uninterrupted_run(
    bert_dir: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    opts = TrainOptions(steps=12, batch_size=8, lr=1e-3, save_every=4, grad_accum=2, log_every=5)
    uninterrupted = Trainer([data["train"]], str(bert_dir), tmp_path / "a", opts).train()

    class Killed(Exception):
        pass

    def kill(step: int, *_: float) -> None:
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        Trainer([data["train"]], str(bert_dir), tmp_path / "b", opts).train(on_step=kill)
    assert (state_folder(tmp_path / "b") / "state.pt").is_file() and not (tmp_path / "b").exists()
    resumed = Trainer([data["train"]], str(bert_dir), tmp_path / "b", opts)
    record = resumed.train(resume=True)
    assert record["steps"] == 12 and not state_folder(tmp_path / "b").exists()
    got = [(h["step"], h["loss"]) for h in record["loss_history"]]
    want = [(h["step"], h["loss"]) for h in uninterrupted["loss_history"]]
    assert [s for s, _ in got] == [s for s, _ in want]
    np.testing.assert_allclose([x for _, x in got], [x for _, x in want], rtol=1e-4)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # a state from other settings is refused
    with pytest.raises(Killed):
        Trainer([data["train"]], str(bert_dir), tmp_path / "c", opts).train(on_step=kill)
    other = TrainOptions(steps=12, batch_size=8, lr=2e-3, save_every=4, grad_accum=2)
    with pytest.raises(UsageError, match="other data, model or settings"):
        Trainer([data["train"]], str(bert_dir), tmp_path / "c", other).train(resume=True)


def test_cli_counts_overwrite_and_cosent(bert_dir: Path, data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [
        "train",
        str(data["train"]),
        str(data["nli"]),
        "--model",
        str(bert_dir),
        "--out",
        str(out),
        "--steps",
        "4",
    ]
    result = simcli(*args)
    assert result.exit_code == 0, result.output
    assert "train.tsv: 1,200 pairs, binary (0: 621, 1: 579)" in result.output
    assert "nli.tsv: 200 pairs, nli (contradiction:" in result.output
    again = simcli(*args)
    assert again.exit_code == 1 and "--overwrite" in again.output
    cosent = simcli(*args[:2], str(data["scores"]), *args[3:], "--loss", "cosent", "--overwrite")
    assert cosent.exit_code == 0, cosent.output
    rec = json.loads((out / "training.json").read_text(encoding="utf-8"))
    assert (
        rec["loss"] == "cosent"
        and rec["classifier"] is None
        and not (out / "classifier.safetensors").exists()
    )


def test_resume_on_cuda_of_a_run_started_on_cpu(
    bert_dir: Path, data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU run saves an empty GradScaler state (loss scaling off); resuming it where fp16 loss scaling is on
    (CUDA) starts the scaler afresh instead of crashing. An enabled CPU GradScaler stands in for CUDA's: it
    refuses an empty state the same way."""
    opts = TrainOptions(steps=8, batch_size=8, lr=1e-3, save_every=4, log_every=5)

    class Killed(Exception):
        pass

    def kill(step: int, *_: float) -> None:
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        Trainer([data["train"]], str(bert_dir), tmp_path / "b", opts).train(on_step=kill)
    assert torch.load(state_folder(tmp_path / "b") / "state.pt", weights_only=False)["scaler"] == {}
    real = torch.amp.GradScaler
    with pytest.raises(RuntimeError, match="empty"):  # premise: what the old resume ran into
        real("cpu", enabled=True).load_state_dict({})
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: real("cpu", enabled=True))
    record = Trainer([data["train"]], str(bert_dir), tmp_path / "b", opts).train(resume=True)
    assert record["steps"] == 8 and (tmp_path / "b" / "model.safetensors").is_file()
