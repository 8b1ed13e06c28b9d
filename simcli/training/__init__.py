"""Supervised fine-tuning on labelled sentence pairs (`simcli train`) and distillation into RoFormer-Sim
(`simcli train distill`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from simcli.types import EncoderConfig

__all__ = ["distill", "train"]


def train(
    files: Sequence[str | Path],
    model: str | EncoderConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[int, int, float, float], None] | None = None,
    **options: Any,
) -> tuple[Path, dict[str, Any]]:
    """Fine-tune a sentence encoder on labelled pairs and write it to `out` in its own checkpoint layout.

    Args:
        files: labelled pair files (binary 0/1, scores, or NLI labels; see `simcli.io.read_pairs` formats).
        model: hub id, local folder, pip: source or short name (m3e-small), or an EncoderConfig.
        out: the output folder (a checkpoint every simcli command loads, plus training.json).
        resume: continue an interrupted run from its last saved state (`<out>.partial`).
        overwrite: replace an earlier training output at `out`.
        log: called with progress messages (file counts, evaluations).
        on_step: called after each optimizer step with (step, total steps, loss, pairs/s).
        options: `simcli.training.options.TrainOptions` fields: loss ("softmax" | "cosent"), kind, columns,
            threshold, eval_files, eval_every, save_best, batch_size, epochs, steps, lr, weight_decay,
            warmup, max_length, seed, grad_accum, dtype, device, pooling, batch_tokens, save_every.

    Returns:
        (the output folder, the training record also written to its training.json).
    """
    from simcli.training.checkpoint import check_out
    from simcli.training.loop import Trainer
    from simcli.training.options import TrainOptions

    check_out(Path(out), overwrite)  # before the data and the model are read

    if "eval_files" in options:
        options["eval_files"] = tuple(str(f) for f in options["eval_files"])
    trainer = Trainer(files, model, out, TrainOptions(**options), log=log or (lambda _m: None))
    record = trainer.train(resume=resume, overwrite=overwrite, on_step=on_step)
    return Path(out), record


def distill(*args: Any, **kwargs: Any) -> tuple[Path, dict[str, Any]]:
    """See `simcli.training.distillation.distill`."""
    from simcli.training.distillation import distill as run

    return run(*args, **kwargs)
