"""Labelled pairs for training: reading, kind detection (binary / scores / NLI), label checks and batching.

Three kinds (kexue.fm/archives/8541): binary 0/1 (ATEC, BQ, LCQMC, PAWSX, AFQMC), scores (STS-B 0-5; a
threshold makes them binary, as the recipe does with 2.5) and NLI (entailment / neutral / contradiction:
Chinese-SNLI, Chinese-MNLI, OCNLI). The kind is detected from a file's labels or given; a label outside its
kind is a one-line error naming file:line.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simcli.errors import BadInput, UsageError
from simcli.io import RawPair, parse_score, read_pair_rows

KINDS = ("auto", "binary", "scores", "nli")
#: NLI class names in the order of the classifier's logits 2-4 (contradiction, entailment, neutral).
NLI_LABELS = ("contradiction", "entailment", "neutral")


@dataclass
class FileSummary:
    """One training file: what `training.json` records about it."""

    path: str
    sha256: str
    kind: str  # binary | scores | nli (scores made binary by a threshold are recorded as binary)
    pairs: int
    labels: dict[str, int]  # label as written -> count
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "kind": self.kind,
            "pairs": self.pairs,
            "labels": self.labels,
            **({"threshold": self.threshold} if self.threshold is not None else {}),
        }

    def describe(self) -> str:
        counts = ", ".join(f"{k}: {v:,}" for k, v in self.labels.items())
        cut = f", threshold {self.threshold:g}" if self.threshold is not None else ""
        return f"{Path(self.path).name}: {self.pairs:,} pairs, {self.kind}{cut} ({counts})"


@dataclass
class PairData:
    """All training pairs of one kind group: binary (targets 0/1), nli (targets 0-2 in NLI_LABELS order)
    or scores (targets the scores, for cosent)."""

    kind: str
    s1: list[str] = field(default_factory=list)
    s2: list[str] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def detect_kind(path: Path, rows: Sequence[RawPair]) -> str:
    """binary when every label is 0/1, nli when the first label is an NLI class name, else scores."""
    first = str(rows[0].label).strip().lower()
    if first in NLI_LABELS:
        return "nli"
    values = {parse_score(path, r.line, r.label) for r in rows}
    return "binary" if values <= {0.0, 1.0} else "scores"


def read_labelled(
    path: str | Path,
    *,
    kind: str = "auto",
    columns: tuple[str, str, str] | None = None,
    threshold: float | None = None,
    limit: int | None = None,
) -> tuple[PairData, FileSummary]:
    """One file's pairs with checked labels.

    Args:
        kind: auto | binary | scores | nli.
        threshold: scores above it become label 1, the others 0 (then the pairs are binary).
        limit: keep the first `limit` pairs.

    Raises:
        BadInput: unreadable file, or a label outside the kind (file:line).
    """
    if kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    path = Path(path)
    rows = read_pair_rows(path, columns=columns, limit=limit)
    found = detect_kind(path, rows) if kind == "auto" else kind
    data = PairData(found)
    labels: Counter[str] = Counter()
    for r in rows:
        raw = str(r.label).strip()
        if found == "nli":
            name = raw.lower()
            if name not in NLI_LABELS:
                raise BadInput(
                    f"{path}:{r.line}: label {raw!r} is not one of {', '.join(NLI_LABELS)} (kind nli)"
                )
            target = float(NLI_LABELS.index(name))
        else:
            target = parse_score(path, r.line, r.label)
            if found == "binary" and target not in (0.0, 1.0):
                raise BadInput(
                    f"{path}:{r.line}: label {raw!r} is not 0 or 1 (kind binary; scores: --kind scores)"
                )
        labels[raw] += 1
        data.s1.append(r.s1)
        data.s2.append(r.s2)
        data.targets.append(target)
    if threshold is not None and found in ("scores", "binary"):
        data.targets = [1.0 if t > threshold else 0.0 for t in data.targets]
        data.kind = "binary"
    summary = FileSummary(
        str(path),
        file_sha256(path),
        data.kind,
        len(rows),
        dict(sorted(labels.items())),
        threshold if found == "scores" else None,
    )
    return data, summary


def read_training_data(
    paths: Sequence[str | Path],
    *,
    loss: str,
    kind: str = "auto",
    columns: tuple[str, str, str] | None = None,
    threshold: float | None = None,
    limit: int | None = None,
) -> tuple[dict[str, PairData], list[FileSummary]]:
    """Every file read and grouped by kind ({"binary": ..., "nli": ...} for softmax; {"scores": ...} for
    cosent, which ranks by the label and takes binary labels and scores alike)."""
    if not paths:
        raise UsageError("give at least one labelled pair file")
    groups: dict[str, PairData] = {}
    summaries = []
    for p in paths:
        data, summary = read_labelled(p, kind=kind, columns=columns, threshold=threshold, limit=limit)
        if loss == "softmax" and data.kind == "scores":
            raise UsageError(
                f"{p}: labels are scores; the softmax loss needs classes: give --threshold (e.g. 2.5) "
                "or use --loss cosent"
            )
        if loss == "cosent" and data.kind == "nli":
            raise UsageError(f"{p}: NLI labels have no order for --loss cosent; use --loss softmax")
        group = "scores" if loss == "cosent" else data.kind
        into = groups.setdefault(group, PairData(group))
        into.s1 += data.s1
        into.s2 += data.s2
        into.targets += data.targets
        summaries.append(summary)
    return groups, summaries


def stream_indices(n: int, seed: int, stream: int, start: int, count: int) -> np.ndarray:
    """Items start..start+count-1 of an endless sequence of shuffled passes over range(n): pass e is the
    permutation drawn from (seed, stream, e). A pure function of its arguments, so a resumed run picks up
    the same data order from the step it stopped at."""
    out: list[int] = []
    pos = start
    while len(out) < count:
        e, off = divmod(pos, n)
        perm = np.random.default_rng([seed, stream, e]).permutation(n)
        take = perm[off : off + count - len(out)]
        out.extend(take.tolist())
        pos += len(take)
    return np.asarray(out, dtype=np.int64)


MEGA_BATCHES = 50  # batches sorted by length together (transformers' LengthGroupedSampler uses 50 too)
LENGTH_STREAM = 1  # the random stream that shuffles length-sorted batches, apart from the pass's own


@dataclass(frozen=True)
class Schedule:
    """Which pairs each micro-batch holds: one group alone takes `batch_size` pairs a batch in shuffled
    passes; binary and NLI together take half a batch from each (1:1, as in the recipe), the smaller group
    cycling while one epoch is a pass over the larger."""

    sizes: dict[str, int]  # group -> pairs
    batch_size: int
    seed: int
    # one group alone: tokens of each pair; a pass then holds batches of similar length (see `_pass`)
    lengths: np.ndarray | None = field(default=None, compare=False)

    @property
    def shares(self) -> dict[str, int]:
        groups = sorted(self.sizes)
        if len(groups) == 1:
            return {groups[0]: self.batch_size}
        half = max(1, self.batch_size // 2)
        return {groups[0]: half, groups[1]: max(1, self.batch_size - half)}

    @property
    def batches_per_epoch(self) -> int:
        return max(-(-self.sizes[g] // s) for g, s in self.shares.items())

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """Pair indexes of micro-batch `index` (0-based, counted over the whole run) per group."""
        out = {}
        for stream, (g, share) in enumerate(sorted(self.shares.items())):
            n = self.sizes[g]
            if len(self.shares) == 1:
                # epochs are exact passes; the last batch of a pass is short when n is not a multiple
                epoch, b = divmod(index, self.batches_per_epoch)
                out[g] = self._pass(n, share, stream, epoch)[b]
            else:
                out[g] = stream_indices(n, self.seed, stream, index * share, share)
        return out

    def _pass(self, n: int, share: int, stream: int, epoch: int) -> list[np.ndarray]:
        """The batches of one shuffled pass, the last one short when n is not a multiple of share. With
        lengths, as transformers' LengthGroupedSampler: the shuffled pairs are cut into mega-batches of 50
        batches, each sorted by length before it is cut into batches, and the batches are shuffled again,
        so a batch holds pairs of similar length (little padding) drawn from all over the data."""
        perm = np.random.default_rng([self.seed, stream, epoch]).permutation(n)
        if self.lengths is None:
            return [perm[lo : lo + share] for lo in range(0, n, share)]
        mega = MEGA_BATCHES * share
        order = np.concatenate(
            [c[np.argsort(-self.lengths[c], kind="stable")] for c in np.split(perm, range(mega, n, mega))]
        )
        batches = [order[lo : lo + share] for lo in range(0, n, share)]
        shuffled = np.random.default_rng([self.seed, stream, epoch, LENGTH_STREAM]).permutation(len(batches))
        return [batches[i] for i in shuffled]
