"""`simcli train`: fine-tune an encoder on labelled pairs; `simcli train distill`: move a fine-tuned
encoder's similarity into RoFormer-Sim while keeping its generation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from simcli.cli._app import DeviceOpt, app, reported_errors
from simcli.errors import UsageError
from simcli.types import DEFAULT_MAX_LENGTH

DISTILL = "distill"


def _note(message: str) -> None:
    typer.echo(f"simcli: {message}", err=True)


@contextmanager
def _progress(total_hint: str) -> Iterator[Any]:
    """A rich progress bar on stderr (terminals only): steps, loss, pairs/s, ETA."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn(total_hint), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} pairs/s"),
        TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal,
    ) as bar:  # fmt: skip
        task = bar.add_task(total_hint, total=None, loss=0.0, rate=0.0)

        def on_step(step: int, total: int, loss: float, rate: float) -> None:
            bar.update(task, completed=step, total=total, loss=loss, rate=rate)

        yield on_step


@app.command(no_args_is_help=True)
def train(
    files: Annotated[
        list[str],
        typer.Argument(
            help="Labelled pair files: s1<TAB>s2<TAB>label (.data/.txt/.tsv), .csv or .jsonl (see --columns); "
            "labels 0/1, scores, or entailment/neutral/contradiction. `distill FILES...` distils instead.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model folder.", show_default=False)],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="The model to fine-tune: hub id, local folder, pip: source or short name (m3e-small).",
            envvar="SIMCLI_MODEL",
        ),
    ] = None,
    loss: Annotated[
        str, typer.Option(help="softmax (classifier on concat(u, v, |u-v|), the recipe) | cosent.")
    ] = "softmax",
    kind: Annotated[
        str, typer.Option(help="auto | binary | scores | nli: the label kind (auto: detected per file).")
    ] = "auto",
    columns: Annotated[
        str | None,
        typer.Option(help="first,second,label columns: 0-based indexes or header names / jsonl keys."),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Scores above this become label 1, others 0 (STS-B: 2.5).")
    ] = None,
    eval_files: Annotated[
        list[Path] | None,
        typer.Option(
            "--eval", help="Pair files to score (Spearman) before, every --eval-every steps and at the end."
        ),
    ] = None,
    eval_every: Annotated[int | None, typer.Option("--eval-every", help="Steps between evaluations.")] = None,
    save_best: Annotated[
        bool,
        typer.Option("--save-best", help="Write the best-scoring weights (mean over --eval), not the last."),
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Pairs per batch.")] = 32,
    epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 1,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (overrides --epochs).")] = None,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")] = 2e-5,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 0.01,
    warmup: Annotated[float, typer.Option(help="Share of the steps spent on linear warm-up.")] = 0.1,
    max_length: Annotated[
        int, typer.Option("--max-length", help="Tokens per sentence, [CLS] and [SEP] included.")
    ] = DEFAULT_MAX_LENGTH,
    seed: Annotated[int, typer.Option(help="Seed of the data order, dropout and classifier init.")] = 42,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Batches per optimizer step.")] = 1,
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="auto | float32 | bfloat16 | float16: mixed precision (weights stay float32). auto: float16 "
            "on CUDA; bfloat16 autocast on CPUs with native bf16 measured >= 1.5x float32; else float32.",
        ),
    ] = "auto",
    device: DeviceOpt = "auto",
    pooling: Annotated[str, typer.Option(help="Sentence vector pooling (auto: the model's own).")] = "auto",
    batch_tokens: Annotated[
        int | None,
        typer.Option(
            "--batch-tokens", help="Run a batch's sentences in length-sorted passes of this many tokens."
        ),
    ] = None,
    save_every: Annotated[
        int | None,
        typer.Option(
            "--save-every", help="Steps between resumable states (default: --eval-every, else 500)."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue an interrupted run from its last saved state (OUT.partial)."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier training output.")
    ] = False,
    teacher: Annotated[
        str | None,
        typer.Option("--teacher", help="distill: the fine-tuned encoder to learn similarities from."),
    ] = None,
    student: Annotated[
        str | None, typer.Option("--student", help="distill: the RoFormer-Sim checkpoint to train.")
    ] = None,
) -> None:
    """Fine-tune a sentence encoder on labelled pairs, or distil one into RoFormer-Sim.

    Example: simcli train pairs.tsv --model M --out ./tuned --eval dev.tsv --epochs 1

    Distil: simcli train distill pairs.tsv --teacher ./tuned --student ./roformer-sim --out ./sim-ft
    """
    with reported_errors():
        from simcli.evaluate import parse_columns

        cols = parse_columns(columns)
        options: dict[str, Any] = {
            "batch_size": batch_size,
            "epochs": epochs,
            "steps": steps,
            "lr": lr,
            "weight_decay": weight_decay,
            "warmup": warmup,
            "max_length": max_length,
            "seed": seed,
            "grad_accum": grad_accum,
            "dtype": dtype,
            "device": device,
            "columns": cols,
            "save_every": save_every,
            "kind": kind,
            "threshold": threshold,
            "save_best": save_best,
            "batch_tokens": batch_tokens,
            "eval_files": [str(f) for f in eval_files or []],
            "eval_every": eval_every,
        }
        if files and files[0] == DISTILL:
            if teacher is None or student is None:
                raise UsageError("train distill needs --teacher and --student")
            from simcli.training import distill

            with _progress("distilling") as on_step:
                path, record = distill(
                    files[1:], teacher, student, out, resume=resume, overwrite=overwrite, log=_note,
                    on_step=on_step, **options,
                )  # fmt: skip
        else:
            if model is None:
                raise UsageError("give --model (the encoder to fine-tune)")
            if teacher is not None or student is not None:
                raise UsageError("--teacher/--student belong to `simcli train distill`")
            from simcli.training import train as run

            with _progress("training") as on_step:
                path, record = run(
                    files, model, out, resume=resume, overwrite=overwrite, log=_note, on_step=on_step,
                    loss=loss, pooling=pooling, **options,
                )  # fmt: skip
        rate = record.get("pairs_per_second")
        _note(
            f"wrote {path} ({record['steps']} steps, {record['pairs']:,} pairs"
            + (f", {rate:.1f} pairs/s" if rate else "")
            + ")"
        )
        evals = record.get("eval") or []
        if evals:
            first, last = evals[0], evals[-1]
            typer.echo(f"dataset\tstep {first['step']}\tstep {last['step']}")
            for name, score in last["scores"].items():
                typer.echo(f"{name}\t{first['scores'][name]:.2f}\t{score:.2f}")
