"""Supervised fine-tuning on labelled sentence pairs (`simcli train`), distillation into RoFormer-Sim
(`simcli train distill`) and training a similar-sentence generator (`simcli train generator`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from simcli.training.options import TrainOptions
from simcli.types import EncoderConfig

__all__ = ["TrainOptions", "distill", "train", "train_generator"]


def train(
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
    """Fine-tune a sentence encoder on labelled pairs and write it to `out` in its own checkpoint layout.

    Args:
        files: labelled pair files (binary 0/1, scores, or NLI labels; see `simcli.io.read_pairs` formats).
        model: hub id, local folder, pip: source or short name (m3e-small), or an EncoderConfig.
        out: the output folder (a checkpoint every simcli command loads, plus training.json).
        options: the hyper-parameters, e.g. `TrainOptions(loss="cosent", epochs=1, eval_files=[...])`
            (default: the published recipe's).
        resume: continue an interrupted run from its last saved state (`<out>.partial`).
        overwrite: replace an earlier training output at `out`.
        log: called with progress messages (file counts, evaluations).
        on_step: called after each optimizer step with (step, total steps, loss, pairs/s).

    Returns:
        (the output folder, the training record also written to its training.json).
    """
    from simcli.training.checkpoint import check_out
    from simcli.training.loop import Trainer

    check_out(Path(out), overwrite)  # before the data and the model are read
    trainer = Trainer(files, model, out, options or TrainOptions(), log=log or (lambda _m: None))
    record = trainer.train(resume=resume, overwrite=overwrite, on_step=on_step)
    return Path(out), record


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
    """Distil `teacher`'s sentence similarities into the RoFormer-Sim `student`, keeping its generation
    (`simcli.training.distillation.distill`, which this loads only when called: it needs torch)."""
    from simcli.training.distillation import distill as run

    return run(
        files, teacher, student, out, options, resume=resume, overwrite=overwrite, log=log, on_step=on_step
    )


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
    """Train a similar-sentence generator (the SimBERT / RoFormer-Sim recipe) from positive pairs, written
    in its family's standard layout (`simcli.training.generator.train_generator`, which this loads only
    when called: it needs torch)."""
    from simcli.training.generator import train_generator as run

    return run(files, model, out, options, resume=resume, overwrite=overwrite, log=log, on_step=on_step)
