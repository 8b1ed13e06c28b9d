"""Similar-question generation with RoFormer-Sim's UniLM head, re-ranked by the model's own sentence vectors.

The reference procedure `gen_synonyms(text, n=100, k=20)` (kexue.fm/archives/7427 and 8454): nucleus sampling (top_p 0.95)
of n continuations of `[CLS] text [SEP]` as one batch, source truncated to 64 tokens and at most 64 new
tokens; drop duplicates and copies of the input; rank the rest by the cosine of their linear-pooler vectors
to the input's and keep k. Decoding slices the generated ids (never strips the input from a decoded
string), so spaces and ASCII words survive.

This module imports neither torch nor numpy at import time (the CLI reads its defaults); the model side
lives in `simcli.models.unilm`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simcli.errors import UsageError
from simcli.types import EncoderConfig, ProgressFn

if TYPE_CHECKING:
    from simcli.io import Errors
    from simcli.models.encoder import Encoder
    from simcli.models.unilm import UniLM

DEFAULT_MODEL = "junnyu/roformer_chinese_sim_char_ft_base"
DEFAULT_N = 100
DEFAULT_K = 20
DEFAULT_TOP_P = 0.95
DEFAULT_MAX_LENGTH = 64  # source tokens, [CLS] and [SEP] included (kexue.fm/archives/7427 and 8454)
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_MAX_ROWS = 512  # samples decoded together in one batch (the KV-cache budget may cap it lower)
DEFAULT_CACHE_MB = 1024  # KV-cache memory of one batch


@dataclass(frozen=True)
class Paraphrase:
    """One generated similar sentence and its cosine to the input (linear-pooler vectors)."""

    text: str
    score: float


@dataclass(frozen=True)
class GenerationConfig:
    """How similar sentences are sampled and kept; checked once, when it is made (UsageError naming the flag).

    Attributes:
        n: samples per text, drawn as one batch (1 with greedy).
        k: paraphrases kept per text.
        top_p: nucleus sampling mass (1 disables).
        top_k: keep only the k most likely tokens before top_p (None disables; SimBERT v1 used 5).
        temperature: logits are divided by it before sampling.
        greedy: argmax decoding instead of sampling.
        seed: makes the samples reproducible (per text, independent of the other texts); None draws one.
        max_length: source tokens ([CLS] and [SEP] included); longer input is truncated.
        max_new_tokens: most generated tokens per sample.
        mask_ratio: share of the source tokens replaced by [MASK] (one draw per text) for more varied output.
        min_score, max_score: keep paraphrases with cosine in this range (max_score < 1 drops trivial copies).
    """

    n: int = DEFAULT_N
    k: int = DEFAULT_K
    top_p: float = DEFAULT_TOP_P
    top_k: int | None = None
    temperature: float = 1.0
    greedy: bool = False
    seed: int | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    mask_ratio: float = 0.0
    min_score: float | None = None
    max_score: float | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise UsageError(f"-n must be at least 1, got {self.n}")
        if self.k < 1:
            raise UsageError(f"-k must be at least 1, got {self.k}")
        if not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {self.top_k}")
        if not self.temperature > 0.0:
            raise UsageError(f"--temperature must be above 0, got {self.temperature}")
        if self.max_length < 3:
            raise UsageError(
                f"--max-length must be at least 3 ([CLS], one token, [SEP]), got {self.max_length}"
            )
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise UsageError(f"--mask-ratio must be in [0, 1), got {self.mask_ratio}")
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise UsageError(f"--min-score {self.min_score} is above --max-score {self.max_score}")

    @classmethod
    def of(cls, config: GenerationConfig | None = None, **options: Any) -> GenerationConfig:
        """`config` (default: the defaults) with `options` (GenerationConfig fields) changed, checked."""
        return cls(**options) if config is None else replace(config, **options)

    @property
    def samples(self) -> int:
        """Samples drawn per text."""
        return 1 if self.greedy else self.n


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one source from the run's seed and the source's key (its index or row number)."""
    import numpy as np

    state = np.random.SeedSequence([seed & ((1 << 64) - 1), *keys]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


def fresh_seed() -> int:
    """A random seed, for runs without --seed."""
    import secrets

    return secrets.randbits(63)


class Paraphraser:
    """A loaded RoFormer-Sim: UniLM sampling plus re-ranking by its pooler vectors.

    Create with `load_paraphraser` (cached) or from an already loaded encoder.
    """

    def __init__(
        self, encoder: Encoder, *, max_rows: int = DEFAULT_MAX_ROWS, cache_mb: int = DEFAULT_CACHE_MB
    ) -> None:
        from simcli.models.unilm import UniLM

        self.encoder = encoder
        self.unilm: UniLM = UniLM.from_encoder(encoder)
        self.tokenizer = encoder.tokenizer
        self.max_rows = max_rows
        self.cache_mb = cache_mb

    # -- sampling -------------------------------------------------------------------------------------
    def source_ids(
        self, text: str, max_length: int, mask_ratio: float = 0.0, mask_seed: int = 0
    ) -> list[int]:
        """`[CLS] text [SEP]` truncated to max_length, with round(mask_ratio * len(text tokens)) random
        text tokens replaced by [MASK] (the published trick for more varied outputs, kexue.fm/archives/7427 and 8454)."""
        ids = self.tokenizer.encode(text, max_length)
        inner = len(ids) - 2
        count = round(mask_ratio * inner)
        if count > 0:
            import numpy as np

            rng = np.random.default_rng(mask_seed)
            for p in rng.choice(inner, size=count, replace=False):
                ids[1 + int(p)] = self.tokenizer.mask_id
        return ids

    def sample_ids(
        self,
        texts: Sequence[str],
        config: GenerationConfig | None = None,
        *,
        keys: Sequence[int] | None = None,
        progress: ProgressFn | None = None,
        **options: Any,
    ) -> list[list[list[int]]]:
        """Generated token ids ([SEP] excluded) of `config.samples` continuations per text.

        `keys` (default: the index of each text) and the seed decide each source's random stream, so a
        source's samples do not depend on the other texts of the call. `options` are GenerationConfig fields.
        """
        from simcli.models.unilm import Job, Sampling, sample

        c = GenerationConfig.of(config, **options)
        seed = fresh_seed() if c.seed is None else c.seed
        keys = list(range(len(texts))) if keys is None else list(keys)
        jobs = [
            Job(
                self.source_ids(t, c.max_length, c.mask_ratio, derive_seed(seed, key, 1)),
                c.samples,
                derive_seed(seed, key),
            )
            for t, key in zip(texts, keys)
        ]
        tok = self.tokenizer
        return sample(
            self.unilm,
            jobs,
            Sampling(top_p=c.top_p, top_k=c.top_k, temperature=c.temperature, greedy=c.greedy),
            max_new_tokens=c.max_new_tokens,
            sep_id=tok.sep_id,
            pad_id=tok.pad_id,
            max_rows=self.max_rows,
            cache_bytes=self.cache_mb << 20,
            progress=progress,
        )

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids (the slice after the source, kexue.fm/archives/7427 and 8454)."""
        return self.tokenizer.decode(ids)

    # -- re-ranking -----------------------------------------------------------------------------------
    def clean(self, text: str, candidates: Sequence[str]) -> list[str]:
        """Candidates without empties, duplicates and copies of the input (raw or as the tokenizer
        normalises it, e.g. lower-cased), in first-seen order."""
        src = text.strip()
        normalised = self.tokenizer.decode(self.tokenizer.encode(src, max(3, len(src) + 2)))
        seen = {src, normalised, ""}
        out = []
        for c in candidates:
            c = c.strip()
            if c not in seen:
                seen.add(c)
                out.append(c)
        return out

    def rerank(
        self,
        texts: Sequence[str],
        candidates: Sequence[Sequence[str]],
        *,
        k: int = DEFAULT_K,
        min_score: float | None = None,
        max_score: float | None = None,
    ) -> list[list[Paraphrase]]:
        """The k candidates per text most cosine-similar to it (pooler vectors, kexue.fm/archives/8454),
        within [min_score, max_score], best first (ties keep first-seen order)."""
        import numpy as np

        cleaned = [self.clean(t, c) for t, c in zip(texts, candidates)]
        flat: list[str] = []
        for t, c in zip(texts, cleaned):
            flat.append(t)
            flat.extend(c)
        vectors = self.encoder.encode(flat, normalize=True) if flat else np.zeros((0, 1), np.float32)
        out: list[list[Paraphrase]] = []
        start = 0
        for c in cleaned:
            src, cand = vectors[start], vectors[start + 1 : start + 1 + len(c)]
            start += 1 + len(c)
            scores = cand @ src  # (len(c),) cosines
            keep = np.ones(len(c), dtype=bool)
            if min_score is not None:
                keep &= scores >= min_score
            if max_score is not None:
                keep &= scores <= max_score
            order = [i for i in np.argsort(-scores, kind="stable") if keep[i]][:k]
            out.append([Paraphrase(c[i], float(scores[i])) for i in order])
        return out

    # -- the whole procedure --------------------------------------------------------------------------
    def generate(
        self,
        texts: Sequence[str],
        config: GenerationConfig | None = None,
        *,
        keys: Sequence[int] | None = None,
        progress: ProgressFn | None = None,
        **options: Any,
    ) -> list[list[Paraphrase]]:
        """`gen_synonyms` for several texts at once; `options` are GenerationConfig fields (see `generate`)."""
        c = GenerationConfig.of(config, **options)
        max_pos = self.unilm.max_positions
        if c.max_length + c.max_new_tokens - 1 > max_pos:
            raise UsageError(
                f"--max-length {c.max_length} + --max-new-tokens {c.max_new_tokens} exceed the model's "
                f"{max_pos} positions"
            )
        ids = self.sample_ids(texts, config=c, keys=keys, progress=progress)
        candidates = [[self.decode(r) for r in rows] for rows in ids]
        return self.rerank(texts, candidates, k=c.k, min_score=c.min_score, max_score=c.max_score)


def load_paraphraser(
    model: str = DEFAULT_MODEL,
    *,
    device: str = "auto",
    dtype: str = "auto",
    max_length: int = DEFAULT_MAX_LENGTH,
    max_rows: int = DEFAULT_MAX_ROWS,
    cache_mb: int = DEFAULT_CACHE_MB,
    encoder: Any = None,
) -> Paraphraser:
    """Load a RoFormer-Sim (or SimBERT-layout) checkpoint for generation; ModelError for models without a
    UniLM-trained head (WoBERT, word/char RoFormer, BERT without a trained pooler).

    Args:
        model: hub id or local folder (the JunnYu/RoFormer_pytorch hub port layout).
        device: auto | cpu | cuda | cuda:N.
        dtype: auto | float32 | bfloat16 | float16 | int8.
        max_length: source tokens, also the re-ranking encoder's max length.
        max_rows: samples decoded together in one batch.
        cache_mb: KV-cache memory budget of one batch, in MiB.
        encoder: an Encoder already loaded from `model` (the server's): its weights are shared, not loaded a
            second time (device and dtype are then its own).
    """
    from simcli.errors import ModelError
    from simcli.models.encoder import load_encoder
    from simcli.models.loading import open_checkpoint
    from simcli.models.sources import GENERATE_ALTERNATIVES, SHORT_NAMES
    from simcli.models.unilm import check_can_generate

    if model in SHORT_NAMES:  # refused before the registry is asked for weights that cannot generate
        raise ModelError(f"{model}: cannot generate; {GENERATE_ALTERNATIVES}")
    # refuse before loading the weights
    check_can_generate(
        encoder.checkpoint
        if encoder is not None
        else open_checkpoint(model, alternatives=GENERATE_ALTERNATIVES)
    )
    # The UniLM decoder shares the encoder's native backbone: re-ranking vectors come from the same weights.
    if encoder is not None and encoder.engine == "native":
        return Paraphraser(sharing(encoder, "pooler", max_length), max_rows=max_rows, cache_mb=cache_mb)
    config = EncoderConfig(model, pooling="pooler", device=device, dtype=dtype, max_length=max_length)
    enc = load_encoder(config)
    return Paraphraser(enc, max_rows=max_rows, cache_mb=cache_mb)


@lru_cache(maxsize=2)
def _cached(model: str, device: str, dtype: str, max_length: int) -> Paraphraser:
    return load_paraphraser(model, device=device, dtype=dtype, max_length=max_length)


def generate(
    texts: str | Sequence[str],
    config: GenerationConfig | None = None,
    *,
    model: str | Paraphraser = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    **options: Any,
) -> Any:
    """Similar sentences of each text: n samples from RoFormer-Sim's UniLM head, re-ranked, top k.

    Args:
        texts: one text or several.
        config: how to sample and what to keep (GenerationConfig); `options` change its fields:
            n, k, top_p, top_k, temperature, greedy, seed, max_length, max_new_tokens, mask_ratio,
            min_score, max_score (see GenerationConfig).
        model: hub id, local folder, or a loaded Paraphraser (the loaded model is cached between calls).
        device, dtype: as for `load_encoder`.

    Returns:
        list of Paraphrase (text, score), best first, for a single text; a list of such lists for several.
    """
    c = GenerationConfig.of(config, **options)
    single = isinstance(texts, str)
    batch = [texts] if isinstance(texts, str) else list(texts)
    para = model if isinstance(model, Paraphraser) else _cached(model, device, dtype, c.max_length)
    out = para.generate(batch, config=c)
    return out[0] if single else out


# -- batch mode: a file in, the same format out, one row per paraphrase ----------------------------------

SOURCE_COLUMN = "source_row"  # the input line (1-based) the paraphrase was made from
SCORE_COLUMN = "score"
BATCH_FORMATS = ("tsv", "csv", "jsonl")


@dataclass
class FileSummary:
    """What `generate_file` did."""

    sources: int = 0  # input rows
    empty: int = 0  # empty texts (no paraphrases)
    generated: int = 0  # sources processed in this run
    resumed: int = 0  # sources done by an earlier, interrupted run
    paraphrases: int = 0  # output rows


def _parts_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.parts"


def check_batch_paths(input: str | Path, out: str | Path, *, resume: bool, overwrite: bool) -> str:
    """The format of a batch run, checked before any model loads: tsv/csv/jsonl in, the same out; an existing
    --out only with --overwrite; an interrupted run's parts only with --resume or --overwrite."""
    from simcli.errors import BadInput, OutputExists
    from simcli.io import input_format

    fmt = input_format(input)
    if fmt not in BATCH_FORMATS:
        raise UsageError(f"--input {input}: batch mode reads .tsv, .csv or .jsonl (other columns are copied)")
    if not Path(input).is_file():
        raise BadInput(f"{input}: no such file")
    out = Path(out)
    try:
        out_fmt = input_format(out)
    except BadInput:
        out_fmt = None
    if out_fmt != fmt:
        raise UsageError(f"--out {out}: must be a .{fmt} file like --input (same format out)")
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if out.exists() and not overwrite:
        raise OutputExists(f"{out}: exists (pass --overwrite to replace it)")
    if _parts_dir(out).exists() and not (resume or overwrite):
        raise OutputExists(
            f"{out}: an interrupted run left {_parts_dir(out).name} (pass --resume to continue it, "
            "--overwrite to start over)"
        )
    return fmt


def generate_file(
    para: Paraphraser,
    input: str | Path,
    out: str | Path,
    config: GenerationConfig | None = None,
    *,
    column: str | None = None,
    header: bool | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    errors: Errors = "strict",
    **options: Any,
) -> FileSummary:
    """Augment a tsv/csv/jsonl file: one output row per paraphrase, the other columns copied.

    The text column (tsv/csv: `column`, default "text"; jsonl: the field `column`, default "text") holds the
    paraphrase; `source_row` (the input line it came from) and `score` are added. Finished sources are kept
    in numbered part files beside `out` (each written atomically), so `resume=True` continues after the
    last finished part with the same seeds; `out` itself is written atomically at the end.

    Args:
        para: the loaded model.
        input, out: paths with the same extension (.tsv, .csv or .jsonl).
        column: the text column or field.
        header: whether a tsv/csv input starts with a header row (default: yes, except .data files); the
            output has one when the input has.
        config, options: as for `generate`; each source's samples are seeded by (seed, its row index).
        resume: continue an interrupted run (its settings must match).
        overwrite: replace `out` and any interrupted run's parts.
        progress: called with (sources, tokens generated for them); sources of an interrupted run count
            with 0 tokens.
    """
    import shutil

    from simcli.io import atomic_open

    c = GenerationConfig.of(config, **options)
    input, out = Path(input), Path(out)
    fmt = check_batch_paths(input, out, resume=resume, overwrite=overwrite)
    records, names, text_col = _read_batch_input(input, fmt, column=column, header=header, errors=errors)

    parts = _parts_dir(out)
    if overwrite and parts.exists():
        shutil.rmtree(parts)
    chunk = max(1, 4 * para.max_rows // c.samples)  # sources per part file
    settings = {
        "input": str(input.resolve()),
        "input_size": input.stat().st_size,
        "column": column,
        **({"header": header} if header is not None else {}),
        "model": para.encoder.spec.weights_sha256,
        **{key: v for key, v in asdict(c).items() if key != "seed"},
        "chunk": chunk,
    }
    c, done = _open_parts(parts, out, settings, c, resume=resume)

    summary = FileSummary(sources=len(records), resumed=len(done))
    if progress is not None and done:
        progress(len(done), 0)
    summary.generated = _generate_parts(para, records, c, parts, chunk, done, progress)

    with atomic_open(out, "w", encoding="utf-8") as f:
        summary.paraphrases = _write_rows(f, fmt, names, text_col, records, done)
    shutil.rmtree(parts)
    summary.empty = sum(1 for r in records if not r.text)
    return summary


def _read_batch_input(
    input: Path, fmt: str, *, column: str | None, header: bool | None, errors: Errors
) -> tuple[list[Any], list[str] | None, Any]:
    """The records of a batch input, its header row (None: a table without one) and the text column."""
    from simcli.errors import BadInput
    from simcli.io import column_index, has_header, headerless_column, read_header, read_records

    names: list[str] | None = []  # the header row; None: a table without one (nor one in the output)
    if fmt == "jsonl":
        records = list(read_records([input], field=column, errors=errors))
    else:
        records = list(read_records([input], column=column, header=header, errors=errors))
        names = read_header(input, fmt, errors) if has_header(input, header) else None
    added = (SOURCE_COLUMN, SCORE_COLUMN)
    clash = [col for col in added if col in (names or [])] or [
        col for r in records[:1] if isinstance(r.row, dict) for col in added if col in r.row
    ]
    if clash:
        raise BadInput(f"{input}: already has a {clash[0]!r} column, which the output adds")
    if fmt == "jsonl":
        text_col: Any = column or "text"
    elif names is None:
        text_col = headerless_column(column) or 0
    else:
        text_col = column_index(names, column, str(input))
    return records, names, text_col


def _open_parts(
    parts: Path, out: Path, settings: dict[str, Any], c: GenerationConfig, *, resume: bool
) -> tuple[GenerationConfig, dict[int, list[list[Any]]]]:
    """The config with its seed fixed and the paraphrases of finished sources: an interrupted run's (its
    settings must match), or none after starting a fresh parts folder."""
    import json

    from simcli.errors import ManifestMismatch
    from simcli.io import atomic_write_json

    done: dict[int, list[list[Any]]] = {}
    if resume and (parts / "settings.json").is_file():
        old = json.loads((parts / "settings.json").read_text(encoding="utf-8"))
        differ = [key for key in settings if old.get(key) != settings[key]]
        if c.seed is not None and old.get("seed") != c.seed:
            differ.append("seed")
        if differ:
            raise ManifestMismatch(
                f"{out}: --resume with different settings than the interrupted run ({', '.join(differ)}); "
                "replace --resume with --overwrite to start over"
            )
        c = replace(c, seed=int(old["seed"]))
        for part in sorted(parts.glob("part-*.jsonl")):
            for line in part.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                done[int(entry["i"])] = entry["p"]
    else:
        c = replace(c, seed=fresh_seed() if c.seed is None else c.seed)
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_json(parts / "settings.json", {**settings, "seed": c.seed})
    return c, done


def _generate_parts(
    para: Paraphraser,
    records: Sequence[Any],
    c: GenerationConfig,
    parts: Path,
    chunk: int,
    done: dict[int, list[list[Any]]],
    progress: ProgressFn | None,
) -> int:
    """Paraphrase the unfinished sources `chunk` at a time, each chunk into its own part file (and `done`).

    Returns the sources processed in this run.
    """
    import json

    from simcli.io import atomic_write_text

    processed = 0
    generated = [0]  # tokens sampled so far

    def count(_samples: int, tokens: int) -> None:
        generated[0] += tokens

    for first in range(0, len(records), chunk):
        block = range(first, min(first + chunk, len(records)))
        if all(i in done for i in block):
            continue
        todo = [i for i in block if records[i].text]
        before = generated[0]
        result = para.generate([records[i].text for i in todo], config=c, keys=todo, progress=count)
        found = dict(zip(todo, result))
        lines = []
        for i in block:
            done[i] = [[p.text, round(p.score, 6)] for p in found.get(i, [])]
            lines.append(json.dumps({"i": i, "p": done[i]}, ensure_ascii=False))
        atomic_write_text(parts / f"part-{first:09d}.jsonl", "\n".join(lines) + "\n")
        processed += len(block)
        if progress is not None:
            progress(len(block), generated[0] - before)
    return processed


def _write_rows(
    f: Any, fmt: str, header: list[str] | None, text_col: Any, records: Sequence[Any], done: dict[int, Any]
) -> int:
    from simcli.io import write_jsonl, write_table

    if fmt == "jsonl":
        return write_jsonl(
            f,
            (
                {**rec.row, text_col: text, SOURCE_COLUMN: rec.line, SCORE_COLUMN: score}
                for i, rec in enumerate(records)
                for text, score in done.get(i, [])
            ),
        )

    def rows() -> Iterator[list[Any]]:
        for i, rec in enumerate(records):
            for text, score in done.get(i, []):
                cells = list(rec.row) + [""] * (len(header or ()) - len(rec.row))
                cells[text_col] = text
                yield [*cells, rec.line, f"{score:.4f}"]

    names = None if header is None else [*header, SOURCE_COLUMN, SCORE_COLUMN]
    return write_table(f, fmt, names, rows())


def sharing(encoder: Any, pooling: str, max_length: int) -> Any:
    """An Encoder over `encoder`'s modules (the same weights, no copy) with another pooling and max length."""
    from dataclasses import replace

    from simcli.models.encoder import Encoder
    from simcli.models.sentence import SentenceModel

    m = encoder.model
    model = SentenceModel(m.backbone, m.pooler, pooling, m.pooler_activation, normalize=m.normalize)
    config = replace(encoder.config, pooling=pooling, max_length=max_length)
    out = Encoder(
        encoder.checkpoint,
        encoder.tokenizer,
        model,
        config,
        encoder.device,
        encoder.dtype,
        encoder.dtype_reason,
    )
    out.sources = encoder.sources
    return out
