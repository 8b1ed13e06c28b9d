"""`simcli generate`: similar questions from RoFormer-Sim's UniLM head, for texts or a whole file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from simcli.cli._app import app, counted, note, read_summary, reported_errors
from simcli.cli.options import (
    DeviceOpt,
    DTypeOpt,
    ErrorsOpt,
    HeaderOpt,
    JsonOpt,
    MaxLengthOpt,
    ModelOpt,
    OverwriteOpt,
    ResumeOpt,
    fields_of,
)
from simcli.cli.progress import count_progress
from simcli.errors import UsageError
from simcli.paraphrase import (
    DEFAULT_K,
    DEFAULT_MAX_LENGTH,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MODEL,
    DEFAULT_N,
    DEFAULT_TOP_P,
)
from simcli.types import dtype_label

if TYPE_CHECKING:
    from simcli.io import Errors
    from simcli.paraphrase import GenerationConfig, Paraphraser


@app.command()
def generate(
    ctx: typer.Context,
    texts: Annotated[
        list[str] | None, typer.Argument(help="Sentences to paraphrase.", show_default=False)
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    n: Annotated[int, typer.Option("-n", help="Samples per sentence, drawn as one batch.")] = DEFAULT_N,
    k: Annotated[
        int, typer.Option("-k", help="Paraphrases kept per sentence (most similar first).")
    ] = DEFAULT_K,
    json_out: JsonOpt = False,
    top_p: Annotated[
        float, typer.Option("--top-p", help="Nucleus sampling mass (1 disables).")
    ] = DEFAULT_TOP_P,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="Sample among the k likeliest tokens only.")
    ] = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Divide the logits by this.")] = 1.0,
    greedy: Annotated[
        bool, typer.Option("--greedy", help="Argmax decoding (one candidate per sentence).")
    ] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Make the samples reproducible.")] = None,
    max_length: MaxLengthOpt = DEFAULT_MAX_LENGTH,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Most generated tokens per sample.")
    ] = DEFAULT_MAX_NEW_TOKENS,
    mask_ratio: Annotated[
        float, typer.Option("--mask-ratio", help="Share of source tokens replaced by [MASK] (more variety).")
    ] = 0.0,
    min_score: Annotated[
        float | None, typer.Option("--min-score", help="Drop paraphrases below this cosine.")
    ] = None,
    max_score: Annotated[
        float | None, typer.Option("--max-score", help="Drop paraphrases above this cosine (near copies).")
    ] = None,
    input: Annotated[
        Path | None, typer.Option("--input", "-i", help="Batch mode: a .tsv, .csv or .jsonl file to augment.")
    ] = None,
    column: Annotated[
        str | None, typer.Option("--column", help="Batch mode: text column or jsonl field (default: text).")
    ] = None,
    header: HeaderOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Batch mode: output file, same format.")
    ] = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    errors: ErrorsOpt = "strict",
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
) -> None:
    """Generate similar sentences (paraphrases) with RoFormer-Sim, ranked by cosine to the input.

    --model must have the UniLM head (RoFormer-Sim, SimBERT). --column, --header, --errors, --resume and
    --overwrite apply to batch mode (--input/--out).

    Example: simcli generate "广州和深圳哪个好？" -n 100 -k 20
    Batch:   simcli generate --input train.tsv --column text --out augmented.tsv -k 5
    """
    with reported_errors():
        from simcli.paraphrase import GenerationConfig

        config = GenerationConfig(**fields_of(ctx, GenerationConfig))
        _check_mode(texts, input, out, json_out, resume, overwrite, column, header, errors)
        from simcli.paraphrase import load_paraphraser

        para = load_paraphraser(model, device=device, dtype=dtype, max_length=max_length)
        enc = para.encoder
        note(f"model {model} ({enc.checkpoint.family}), device {enc.device}, dtype {dtype_label(enc.dtype)}")
        if input is not None and out is not None:
            _generate_file(para, input, out, config, column, header, errors, resume, overwrite)
        else:
            _generate_texts(para, texts or [], config, json_out)


def _check_mode(
    texts: list[str] | None,
    input: Path | None,
    out: Path | None,
    json_out: bool,
    resume: bool,
    overwrite: bool,
    column: str | None,
    header: bool | None,
    errors: str,
) -> None:
    """Sentences on the line, or batch mode (--input and --out): one or the other, with its own flags."""
    from simcli.paraphrase import check_batch_paths

    if input is not None or out is not None:
        if texts:
            raise UsageError("give sentences or --input FILE, not both")
        if input is None or out is None:
            raise UsageError("batch mode needs both --input FILE and --out FILE")
        if json_out:
            raise UsageError("--json prints paraphrases of sentences; batch mode writes --out")
        check_batch_paths(input, out, resume=resume, overwrite=overwrite)
    elif not texts:
        raise UsageError("give one or more sentences, or --input FILE --out FILE")
    elif resume or overwrite or column is not None or header is not None or errors != "strict":
        raise UsageError(
            "--resume, --overwrite, --column, --header and --errors apply to batch mode (--input/--out)"
        )


def _generate_file(
    para: Paraphraser,
    input: Path,
    out: Path,
    config: GenerationConfig,
    column: str | None,
    header: bool | None,
    errors: Errors,
    resume: bool,
    overwrite: bool,
) -> None:
    from simcli.io import count_rows
    from simcli.paraphrase import generate_file

    with count_progress(count_rows([str(input)], column, header), "sentences") as progress:
        summary = generate_file(
            para,
            input,
            out,
            config,
            column=column,
            header=header,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            errors=errors,
        )
    earlier = f" ({summary.resumed} done by the interrupted run)" if summary.resumed else ""
    sentences = counted(summary.sources - summary.empty, "sentence")
    made = f"wrote {counted(summary.paraphrases, 'paraphrase')} of {sentences}{earlier} to {out}"
    note(read_summary(summary.sources, made, summary.empty))


def _generate_texts(para: Paraphraser, texts: list[str], config: GenerationConfig, json_out: bool) -> None:
    with count_progress(len(texts) * config.samples, "samples") as progress:
        results = para.generate(texts, config=config, progress=progress)
    for text, found in zip(texts, results):
        if json_out:
            row = {
                "text": text,
                "paraphrases": [{"text": p.text, "score": round(p.score, 6)} for p in found],
            }
            typer.echo(json.dumps(row, ensure_ascii=False))
            continue
        typer.echo(text)
        for rank, p in enumerate(found, 1):
            typer.echo(f"{rank:>4}  {p.score:.4f}  {p.text}")
        if not found:
            typer.echo("      (no paraphrase passed the filters)")
