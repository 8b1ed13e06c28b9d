"""STS evaluation: Spearman x100 between the cosine of two sentence vectors and the label (kexue.fm/archives/8321 and 8454).

For each data set, pooling and whitening setting. By default the whitening statistics are fitted on all
sentences of each task (both columns of every pair, the published BERT-whitening protocol,
kexue.fm/archives/8321); `fit_on` fits them once on another file instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simcli.errors import MissingDependency, UsageError
from simcli.io import PairSet, atomic_write_with, read_pairs, read_sentences
from simcli.types import DEFAULT_MAX_LENGTH, EncoderConfig, ProgressFn
from simcli.vectors import l2_normalize
from simcli.whitening import MomentAccumulator, Whitening

ProgressFactory = Callable[[str, int], ProgressFn]  # (dataset, sentences) -> per-batch callback


@dataclass(frozen=True)
class WhitenSetting:
    """One whitening setting of an evaluation: none, full (k = d) or a cut to k."""

    label: str  # "none", "full" or the k as given
    dim: int | None  # None: full
    enabled: bool = True


@dataclass(frozen=True)
class StsResult:
    """One cell of the evaluation table."""

    dataset: str
    pooling: str
    whiten: str  # none | full | k
    dim: int  # dimension of the compared vectors
    beta: float | None
    gamma: float | None
    spearman: float  # x100
    pairs: int
    fit_on: str | None  # "task", a file, or None without whitening
    fit_n: int  # vectors the whitening was fitted on
    clamped_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- reading ------------------------------------------------------------------------------------------
def parse_columns(value: str | None) -> tuple[str, str, str] | None:
    """`--columns s1,s2,label` as three names or 0-based indexes (None: the defaults)."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 3 or not all(parts):
        raise UsageError(
            f"--columns {value!r}: expected three columns 'first,second,label', e.g. 0,1,2 or 1,3,4"
        )
    return parts[0], parts[1], parts[2]


def dataset_names(paths: Sequence[Path]) -> list[str]:
    """Short names: the file name up to its first dot, prefixed by the folder where two would clash."""
    names = [p.name.split(".")[0] for p in paths]
    return [f"{p.parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]


# -- metric ---------------------------------------------------------------------------------------------
def average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the average of their ranks (as scipy.stats.rankdata 'average')."""
    a = np.asarray(a)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # start of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], len(a)]
    avg = (starts + ends - 1) / 2.0 + 1.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson on average ranks); NaN when either side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman: shapes {x.shape} and {y.shape}")
    rx, ry = average_ranks(x), average_ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    if denom == 0:
        return float("nan")
    return float(np.clip((rx * ry).sum() / denom, -1.0, 1.0))


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, d) arrays, float64."""
    return (l2_normalize(a.astype(np.float64)) * l2_normalize(b.astype(np.float64))).sum(axis=1)


# -- settings -------------------------------------------------------------------------------------------
def parse_whiten(value: str | Sequence[str]) -> list[WhitenSetting]:
    """`--whiten none,full,256` into settings (duplicates dropped, order kept)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[WhitenSetting] = []
    for raw in items:
        item = raw.strip().lower()
        if item == "none":
            s = WhitenSetting("none", None, enabled=False)
        elif item == "full":
            s = WhitenSetting("full", None)
        elif item.isdigit() and int(item) > 0:
            s = WhitenSetting(str(int(item)), int(item))
        else:
            raise UsageError(f"--whiten {raw.strip()!r}: expected none, full or a dimension such as 256")
        if s not in out:
            out.append(s)
    if not out:
        raise UsageError("--whiten: give at least one of none, full or a dimension")
    return out


def parse_list(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return list(dict.fromkeys(i.strip() for i in items if i.strip()))


# -- the evaluation -------------------------------------------------------------------------------------
def _score(
    pairs: PairSet,
    vectors: np.ndarray,
    i1: np.ndarray,
    i2: np.ndarray,
    whitening: Whitening | None,
) -> float:
    a, b = vectors[i1], vectors[i2]
    if whitening is not None:
        a, b = whitening.transform(a), whitening.transform(b)
    return 100.0 * spearman(cosine_pairs(a, b), pairs.labels)


def evaluate_sts(
    files: Sequence[str | Path],
    model: Any,
    *,
    poolings: str | Sequence[str] = ("auto",),
    whiten: str | Sequence[str] = ("none", "full"),
    beta: float = 1.0,
    gamma: float = 1.0,
    fit_on: str | Path | None = None,
    columns: tuple[str, str, str] | None = None,
    limit: int | None = None,
    max_length: int | None = None,
    progress: ProgressFactory | None = None,
    on_encoder: Callable[[Any], None] | None = None,
    **encoder_options: Any,
) -> list[StsResult]:
    """Spearman x100 between cosine and label for each file x pooling x whitening setting.

    Each data set is encoded once for all poolings (one pass over the model). Whitening is fitted per
    data set and pooling on all its sentences (both columns, duplicates included, as published), or once per
    pooling on `fit_on`. A cut above the covariance rank (too few sentences, e.g. with `limit`) is clamped
    to the rank and reported in `StsResult.clamped_from`.

    Args:
        files: pair files (see `read_pairs`).
        model: a hub id / folder, an EncoderConfig, or an already loaded Encoder.
        poolings: e.g. "cls,first-last-avg" (auto: the model's default).
        whiten: e.g. "none,full,256".
        beta, gamma: whitening hyper-parameters for every setting but none (kexue.fm/archives/8069).
        fit_on: fit whitening on this file's sentences instead of each task's own.
        columns, limit: passed to `read_pairs`.
        max_length: tokens per sentence for every data set; None follows the published tables: 64, and 128
            for PAWSX (kexue.fm/archives/8321 and 8454).
        progress: called with (dataset, sentences) before encoding; returns a per-batch callback.
        on_encoder: called with the encoder once it is loaded (the CLI prints device and dtype).
        encoder_options: EncoderConfig fields (tokenizer, device, dtype, batch_tokens, ...) for a model
            given by name. The pooling loaded is the first of `poolings`, the max length the longest needed.

    Returns:
        One StsResult per (file, pooling, setting), in that order.
    """
    settings = parse_whiten(whiten)
    pools = check_poolings_and_files(poolings, files)
    paths = [Path(f) for f in files]
    names = dataset_names(paths)
    sets = [read_pairs(p, columns=columns, limit=limit, name=n) for p, n in zip(paths, names, strict=True)]
    fit_texts = read_sentences(fit_on, columns=columns) if fit_on is not None else None

    longest = max(max_length or published_max_length(s.name) for s in sets)
    encoder = _sts_encoder(model, pools[0], longest, encoder_options)
    if on_encoder is not None:
        on_encoder(encoder)
    modes = list(dict.fromkeys(encoder.spec_for(p).pooling for p in pools))
    d = int(encoder.spec.dim)
    check_whiten_dims(settings, d)

    def encode(name: str, texts: list[str], cut: int | None) -> dict[str, np.ndarray]:
        cb = progress(name, len(texts)) if progress is not None else None
        return encoder.encode_poolings(texts, modes, progress=cb, max_length=cut)

    shared: dict[str, MomentAccumulator] = {}
    if fit_texts is not None:
        label = f"fit on {Path(str(fit_on)).name}"
        shared = _fit_moments(fit_texts, encode(label, list(dict.fromkeys(fit_texts)), max_length), d)

    results: list[StsResult] = []
    for pairs in sets:
        unique = list(dict.fromkeys(pairs.s1 + pairs.s2))
        vectors = encode(pairs.name, unique, max_length or published_max_length(pairs.name))
        for mode in modes:
            spec = encoder.spec_for(mode)
            fit = (shared[mode], str(fit_on)) if mode in shared else None
            results.extend(_sts_rows(pairs, unique, mode, vectors[mode], spec, d, fit, settings, beta, gamma))
    return results


def _sts_encoder(model: Any, pooling: str, max_length: int, options: dict[str, Any]) -> Any:
    """The encoder of `model` (a loaded one passes through), with the first pooling and the longest cut."""
    if not isinstance(model, str | EncoderConfig):
        return model
    from simcli.models.encoder import load_encoder

    config = EncoderConfig(model) if isinstance(model, str) else model
    return load_encoder(config.with_options(**options, pooling=pooling, max_length=max_length))


def check_poolings_and_files(poolings: str | Sequence[str], files: Sequence[str | Path]) -> list[str]:
    """The poolings asked for; at least one, and at least one pair file."""
    pools = parse_list(poolings)
    if not pools:
        raise UsageError("--pooling: give at least one pooling")
    if not files:
        raise UsageError("give at least one pair file")
    return pools


def check_whiten_dims(settings: Sequence[WhitenSetting], dim: int) -> None:
    """No whitening cut above the model's dimension."""
    for s in settings:
        if s.dim is not None and s.dim > dim:
            raise UsageError(f"--whiten {s.label} is above the model's dimension {dim}")


def _fit_moments(
    fit_texts: list[str], vectors: dict[str, np.ndarray], dim: int
) -> dict[str, MomentAccumulator]:
    """Moments per pooling of the `fit_on` sentences, `vectors` holding each distinct one once."""
    index = {t: i for i, t in enumerate(dict.fromkeys(fit_texts))}
    shared: dict[str, MomentAccumulator] = {}
    for mode, v in vectors.items():
        # every sentence counts as often as it occurs in the file (as the published code stacks them)
        acc = MomentAccumulator(dim)
        acc.add(v[[index[t] for t in fit_texts]])
        shared[mode] = acc
    return shared


def _sts_rows(
    pairs: PairSet,
    unique: list[str],
    mode: str,
    v: np.ndarray,
    spec: Any,
    dim: int,
    fit: tuple[MomentAccumulator, str] | None,
    settings: Sequence[WhitenSetting],
    beta: float,
    gamma: float,
) -> list[StsResult]:
    """One row per whitening setting for a data set's vectors `v` (one per `unique` sentence) under one
    pooling; whitening fitted on `fit` (moments, where from), else on the data set's own sentences."""
    index = {t: i for i, t in enumerate(unique)}
    i1 = np.fromiter((index[t] for t in pairs.s1), dtype=np.int64, count=len(pairs))
    i2 = np.fromiter((index[t] for t in pairs.s2), dtype=np.int64, count=len(pairs))
    if fit is not None:
        acc, fitted_on = fit
    else:
        acc, fitted_on = MomentAccumulator(dim), "task"
        acc.add(v[np.concatenate([i1, i2])])  # all sentences of the task (kexue.fm/archives/8069, 8321)
    rows = []
    for s in settings:
        w = None
        if s.enabled:
            w = Whitening.from_moments(acc, dim=s.dim, beta=beta, gamma=gamma, spec=spec, clamp=True)
        rows.append(
            StsResult(
                dataset=pairs.name,
                pooling=mode,
                whiten=s.label,
                dim=w.dim_out if w is not None else dim,
                beta=beta if w is not None else None,
                gamma=gamma if w is not None else None,
                spearman=_score(pairs, v, i1, i2, w),
                pairs=len(pairs),
                fit_on=fitted_on if w is not None else None,
                fit_n=acc.n if w is not None else 0,
                clamped_from=w.clamped_from if w is not None else None,
            )
        )
    return rows


def published_max_length(dataset: str) -> int:
    """Tokens per sentence in the published evaluations: 64, and 128 for PAWSX (kexue.fm/archives/8321 and 8454)."""
    name = dataset.rsplit("/", 1)[-1]  # "folder/PAWSX" where two files share a name
    return 128 if name.lower().startswith("pawsx") else DEFAULT_MAX_LENGTH


def summary_rows(results: Sequence[StsResult]) -> tuple[list[str], list[tuple[str, str, list[float], float]]]:
    """Data set names (columns) and one row per (pooling, whitening): scores per data set and their mean."""
    datasets = list(dict.fromkeys(r.dataset for r in results))
    cells = {(r.pooling, r.whiten, r.dataset): r.spearman for r in results}
    rows = []
    for pooling, whiten in dict.fromkeys((r.pooling, r.whiten) for r in results):
        scores = [cells[(pooling, whiten, ds)] for ds in datasets]
        rows.append((pooling, whiten, scores, float(np.mean(scores))))
    return datasets, rows


def require_matplotlib() -> None:
    """Raise MissingDependency (naming the extra) unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependency(
            "--plot needs matplotlib: pip install -e '.[plot]' in the simcli source folder (or pip install matplotlib)"
        ) from None


def plot_scores(results: Sequence[StsResult], out: str | Path) -> None:
    """Write a PNG of Spearman x100 against the whitening dimension (one line per data set and pooling;
    the unwhitened score as a dashed horizontal line in the same colour)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = list(dict.fromkeys((r.dataset, r.pooling) for r in results))
    for n, (ds, pooling) in enumerate(series):
        color = f"C{n % 10}"
        rs = [r for r in results if (r.dataset, r.pooling) == (ds, pooling)]
        pts = sorted((r.dim, r.spearman) for r in rs if r.whiten != "none")
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=f"{ds} {pooling}")
        for r in rs:
            if r.whiten == "none":
                ax.axhline(
                    r.spearman,
                    color=color,
                    linestyle="--",
                    linewidth=1,
                    label=None if pts else f"{ds} {pooling} (none)",
                )
    ax.set_xlabel("whitening dimension k (dashed: no whitening)")
    ax.set_ylabel("Spearman x100")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    atomic_write_with(Path(out), lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
