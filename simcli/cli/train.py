"""`simcli train`: fine-tune an encoder on labelled pairs; `simcli train distill`: move a fine-tuned
encoder's similarity into RoFormer-Sim while keeping its generation; `simcli train generator`: make a
similar-sentence generator from positive pairs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from simcli.cli._app import DefaultCommandGroup, app, default_command, note, reported_errors
from simcli.cli.options import DeviceOpt, MaxLengthOpt, ModelOpt, OverwriteOpt, ResumeOpt
from simcli.cli.progress import training_progress
from simcli.errors import UsageError
from simcli.training.options import GENERATOR_DEFAULTS, NOISE_RATE, SIM_SCALE
from simcli.types import DEFAULT_MAX_LENGTH

if TYPE_CHECKING:
    from simcli.training.options import TrainOptions

train_app = typer.Typer(
    cls=DefaultCommandGroup,
    help="Fine-tune an encoder on labelled pairs (simcli train PAIRS... --model M --out O), distil one "
    "into RoFormer-Sim (simcli train distill), or train a paraphrase generator (simcli train generator).",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")


# The hyper-parameters both trainings take (simcli.training.options.TrainOptions), declared once.
PairFilesArg = Annotated[
    list[str],
    typer.Argument(
        help="Labelled pair files: s1<TAB>s2<TAB>label (.data/.txt/.tsv), .csv or .jsonl (see --columns); "
        "labels 0/1, scores, or entailment/neutral/contradiction.",
        show_default=False,
    ),
]
TrainOutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output model folder.", show_default=False)]
KindOpt = Annotated[
    str, typer.Option(help="auto | binary | scores | nli: the label kind (auto: detected per file).")
]
ColumnsOpt = Annotated[
    str | None, typer.Option(help="first,second,label columns: 0-based indexes or header names / jsonl keys.")
]
ThresholdOpt = Annotated[
    float | None, typer.Option(help="Scores above this become label 1, others 0 (STS-B: 2.5).")
]
EvalOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--eval", help="Pair files to score (Spearman) before, every --eval-every steps and at the end."
    ),
]
EvalEveryOpt = Annotated[int | None, typer.Option("--eval-every", help="Steps between evaluations.")]
SaveBestOpt = Annotated[
    bool, typer.Option("--save-best", help="Write the best-scoring weights (mean over --eval), not the last.")
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Pairs per batch.")]
EpochsOpt = Annotated[int, typer.Option(help="Passes over the data.")]
StepsOpt = Annotated[int | None, typer.Option(help="Optimizer steps (overrides --epochs).")]
LrOpt = Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")]
WeightDecayOpt = Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")]
WarmupOpt = Annotated[float, typer.Option(help="Share of the steps spent on linear warm-up.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the data order, dropout and classifier init.")]
GradAccumOpt = Annotated[int, typer.Option("--grad-accum", help="Batches per optimizer step.")]
TrainDTypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="auto | float32 | bfloat16 | float16: mixed precision (weights stay float32). auto: float16 "
        "on CUDA; bfloat16 autocast on CPUs with native bf16 measured >= 1.5x float32; else float32 (never "
        "int8: that is for encoding).",
    ),
]
# Not --batch-tokens: here a batch is --batch-size pairs, and this budget cuts its sentences into passes.
PassTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--pass-tokens", help="Run a batch's sentences in length-sorted passes of this many tokens."
    ),
]
OldPassTokensOpt = Annotated[int | None, typer.Option("--batch-tokens", hidden=True)]  # the old spelling
SaveEveryOpt = Annotated[
    int | None,
    typer.Option("--save-every", help="Steps between resumable states (default: --eval-every, else 500)."),
]

# The CLI parameters that are not TrainOptions fields (or are under another name).
_NOT_OPTIONS = {"files", "out", "model", "teacher", "student", "resume", "overwrite", "eval_files", "columns"}
_NOT_OPTIONS |= {"pass_tokens", "old_pass_tokens"}


def _train_options(ctx: typer.Context, columns: tuple[str, str, str] | None = None) -> TrainOptions:
    """The command's TrainOptions, from its parsed parameters (each named as its TrainOptions field)."""
    from simcli.evaluate import parse_columns
    from simcli.training.options import TrainOptions

    params = ctx.params
    new, old = params.get("pass_tokens"), params.get("old_pass_tokens")
    if new is not None and old is not None and new != old:
        raise UsageError("--batch-tokens is the old name of --pass-tokens: give one of them")
    return TrainOptions(
        **{k: v for k, v in params.items() if k not in _NOT_OPTIONS},
        columns=parse_columns(params["columns"]) if columns is None else columns,
        eval_files=[str(f) for f in params.get("eval_files") or []],
        batch_tokens=new if new is not None else old,
    )


def _report(path: Path, record: dict[str, Any]) -> None:
    """The output folder and its speed (stderr), then the scores before and after (stdout)."""
    rate = record.get("pairs_per_second")
    note(
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


@default_command(train_app)
def train(
    ctx: typer.Context,
    files: PairFilesArg,
    out: TrainOutOpt,
    model: ModelOpt,
    loss: Annotated[
        str, typer.Option(help="softmax (classifier on concat(u, v, |u-v|), the recipe) | cosent.")
    ] = "softmax",
    kind: KindOpt = "auto",
    columns: ColumnsOpt = None,
    threshold: ThresholdOpt = None,
    eval_files: EvalOpt = None,
    eval_every: EvalEveryOpt = None,
    save_best: SaveBestOpt = False,
    batch_size: BatchSizeOpt = 32,
    epochs: EpochsOpt = 1,
    steps: StepsOpt = None,
    lr: LrOpt = 2e-5,
    weight_decay: WeightDecayOpt = 0.01,
    warmup: WarmupOpt = 0.1,
    max_length: MaxLengthOpt = DEFAULT_MAX_LENGTH,
    seed: SeedOpt = 42,
    grad_accum: GradAccumOpt = 1,
    dtype: TrainDTypeOpt = "auto",
    device: DeviceOpt = "auto",
    pooling: Annotated[str, typer.Option(help="Sentence vector pooling (auto: the model's own).")] = "auto",
    pass_tokens: PassTokensOpt = None,
    old_pass_tokens: OldPassTokensOpt = None,
    save_every: SaveEveryOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fine-tune a sentence encoder on labelled pairs.

    Example: simcli train pairs.tsv --model M --out ./tuned --eval dev.tsv --epochs 1

    --resume continues from the last state an interrupted run saved (OUT.partial).

    To distil a fine-tuned encoder into RoFormer-Sim: simcli train distill --help
    """
    with reported_errors():
        from simcli.training import train as run

        options = _train_options(ctx)
        with training_progress("training") as on_step:
            path, record = run(
                files, model, out, options, resume=resume, overwrite=overwrite, log=note, on_step=on_step
            )
        _report(path, record)


@train_app.command("distill", no_args_is_help=True)
def distill(
    ctx: typer.Context,
    files: PairFilesArg,
    out: TrainOutOpt,
    teacher: Annotated[
        str,
        typer.Option(
            "--teacher", help="The fine-tuned encoder to learn similarities from.", show_default=False
        ),
    ],
    student: Annotated[
        str, typer.Option("--student", help="The RoFormer-Sim checkpoint to train.", show_default=False)
    ],
    kind: KindOpt = "auto",
    columns: ColumnsOpt = None,
    threshold: ThresholdOpt = None,
    eval_files: EvalOpt = None,
    eval_every: EvalEveryOpt = None,
    save_best: SaveBestOpt = False,
    batch_size: BatchSizeOpt = 32,
    epochs: EpochsOpt = 1,
    steps: StepsOpt = None,
    lr: LrOpt = 2e-5,
    weight_decay: WeightDecayOpt = 0.01,
    warmup: WarmupOpt = 0.1,
    max_length: MaxLengthOpt = DEFAULT_MAX_LENGTH,
    seed: SeedOpt = 42,
    grad_accum: GradAccumOpt = 1,
    dtype: TrainDTypeOpt = "auto",
    device: DeviceOpt = "auto",
    pass_tokens: PassTokensOpt = None,
    old_pass_tokens: OldPassTokensOpt = None,
    save_every: SaveEveryOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Distil a fine-tuned encoder's similarities into RoFormer-Sim, keeping its generation.

    Example: simcli train distill pairs.tsv --teacher ./tuned --student ./roformer-sim --out ./sim-ft
    """
    with reported_errors():
        from simcli.training import distill as run

        options = _train_options(ctx)
        with training_progress("distilling") as on_step:
            path, record = run(
                files,
                teacher,
                student,
                out,
                options,
                resume=resume,
                overwrite=overwrite,
                log=note,
                on_step=on_step,
            )
        _report(path, record)


@train_app.command("generator", no_args_is_help=True)
def generator(
    ctx: typer.Context,
    files: Annotated[
        list[str],
        typer.Argument(
            help="Similar-sentence data: pair files as `simcli train` reads them (label-1 rows kept, or "
            "scores above --threshold), .jsonl groups (a JSON list of similar sentences a line), or "
            "triplets (--columns query,title; SimCLUE's are detected).",
            show_default=False,
        ),
    ],
    out: TrainOutOpt,
    model: ModelOpt,
    columns: Annotated[
        str | None,
        typer.Option(
            help="first,second,label columns of pair files, or query,positive of triplet files: 0-based "
            "indexes or header names / jsonl keys."
        ),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Pairs scored above this are similar (score files need it).")
    ] = None,
    scale: Annotated[
        float, typer.Option(help="Scale of the cosines in the in-batch similarity loss.")
    ] = SIM_SCALE,
    noise: Annotated[
        float,
        typer.Option(help="Share of sources corrupted by whole-word masking (BART-style; 0: off)."),
    ] = NOISE_RATE,
    group_by_length: Annotated[
        bool,
        typer.Option(
            "--group-by-length",
            help="Batches of pairs of similar length: less padding, faster steps (the in-batch negatives "
            "then share a length).",
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Pairs per batch (each in both orders: twice the rows).")
    ] = GENERATOR_DEFAULTS["batch_size"],
    epochs: EpochsOpt = 1,
    steps: StepsOpt = None,
    lr: LrOpt = GENERATOR_DEFAULTS["lr"],
    weight_decay: WeightDecayOpt = 0.01,
    warmup: WarmupOpt = 0.1,
    max_length: MaxLengthOpt = DEFAULT_MAX_LENGTH,
    seed: SeedOpt = 42,
    grad_accum: GradAccumOpt = 1,
    dtype: TrainDTypeOpt = "auto",
    device: DeviceOpt = "auto",
    save_every: SaveEveryOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a similar-sentence generator from pairs of similar sentences (SimBERT / RoFormer-Sim).

    Example: simcli train generator bq_train.tsv groups.jsonl --model m3e-small --out ./bq-sim

    The output loads everywhere a SimBERT (from a BERT) or RoFormer-Sim (from a RoFormer) does:
    simcli generate "花呗怎么还款" --model ./bq-sim
    """
    with reported_errors():
        from simcli.training import train_generator as run
        from simcli.training.generator_data import parse_generator_columns

        options = _train_options(ctx, parse_generator_columns(columns))
        with training_progress("training generator") as on_step:
            path, record = run(
                files, model, out, options, resume=resume, overwrite=overwrite, log=note, on_step=on_step
            )
        _report(path, record)
