"""The positive pairs a generator trains on (`simcli train generator`): similar-sentence pairs from the files
`simcli train` reads, from groups of similar sentences, and from the query/positive columns of triplets.

- Pair files (tsv/csv/jsonl, as `simcli train` reads them): binary label 1, a score above `--threshold`, or
  entailment; every other row is dropped and counted.
- Groups: a `.jsonl` file whose lines are JSON lists of similar sentences; every pair of a group is used.
- Triplets: `--columns query,title` (two columns, no label: every row is a positive pair); a jsonl file with
  `query` and `title` fields and no `sentence1` (SimCLUE's triplets) is read so without `--columns`.

Pairs are unordered (a batch holds both orders of each), so a pair seen before in either order is a
duplicate; a pair of two identical sentences teaches nothing. Both are dropped and counted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simcli.errors import BadInput, UsageError
from simcli.io import parse_score, read_pair_rows, read_text
from simcli.training.data import NLI_LABELS, PairData, detect_kind, file_sha256

#: The third --columns entry of a triplet file: there is no label column, every row is a positive pair.
NO_LABEL = ""
POSITIVE = "positive"  # the one group of the generator's data
SIMCLUE_TRIPLET = ("query", "title")


@dataclass
class PositiveSummary:
    """One file of the generator's data: what training.json records and the log prints."""

    path: str
    sha256: str
    kind: str  # binary | scores | nli | groups | triplets
    rows: int  # data rows (groups: lines)
    pairs: int = 0  # positive pairs kept
    dropped: Counter[str] = field(default_factory=Counter)  # negative | duplicate | identical
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "kind": self.kind,
            "rows": self.rows,
            "pairs": self.pairs,
            "dropped": {k: self.dropped[k] for k in ("negative", "duplicate", "identical")},
            **({"threshold": self.threshold} if self.threshold is not None else {}),
        }

    def describe(self) -> str:
        d = self.dropped
        what = "groups" if self.kind == "groups" else "rows"
        return (
            f"{Path(self.path).name}: {self.rows:,} {what} ({self.kind}), {self.pairs:,} positive pairs; "
            f"dropped {d['negative']:,} negative, {d['duplicate']:,} duplicate, "
            f"{d['identical']:,} of identical sentences"
        )


def parse_generator_columns(value: str | None) -> tuple[str, str, str] | None:
    """`--columns first,second,label` of pair files, or `query,positive` of triplet files (no label)."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(
            f"--columns {value!r}: expected 'first,second,label' (pairs) or 'query,positive' (triplets), "
            "e.g. 0,1,2 or query,title"
        )
    return (parts[0], parts[1], parts[2] if len(parts) == 3 else NO_LABEL)


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return next((line.strip() for line in f if line.strip()), "")
    except (OSError, UnicodeDecodeError):
        return ""  # the reader reports it with its own message


def file_mode(path: Path, columns: tuple[str, str, str] | None) -> tuple[str, tuple[str, str, str] | None]:
    """groups | triplets | pairs, and the columns to read the file with."""
    if path.suffix.lower() in (".jsonl", ".json"):
        first = _first_line(path)
        if first.startswith("["):
            return "groups", None
        if columns is None and first.startswith("{"):
            try:
                keys = json.loads(first)
            except json.JSONDecodeError:
                keys = {}
            if isinstance(keys, dict) and set(SIMCLUE_TRIPLET) <= keys.keys() and "sentence1" not in keys:
                return "triplets", (*SIMCLUE_TRIPLET, NO_LABEL)
    if columns is not None and columns[2] == NO_LABEL:
        return "triplets", columns
    return "pairs", columns


def read_groups(path: Path) -> list[tuple[int, list[str]]]:
    """(line, sentences) of a groups file: one JSON list of at least two sentences per line."""
    text = read_text(path)
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            group = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"{path}:{i}: not JSON ({e.msg})") from None
        if not isinstance(group, list) or not all(isinstance(s, str) for s in group):
            raise BadInput(f"{path}:{i}: expected a JSON list of similar sentences")
        sentences = [s.strip() for s in group]
        if len(sentences) < 2:
            raise BadInput(f"{path}:{i}: a group needs at least 2 similar sentences, found {len(sentences)}")
        out.append((i, sentences))
    if not out:
        raise BadInput(f"{path}: no groups")
    return out


def _labelled_positives(
    path: Path, columns: tuple[str, str, str] | None, threshold: float | None, limit: int | None
) -> tuple[list[tuple[str, str]], PositiveSummary]:
    rows = read_pair_rows(path, columns=columns, limit=limit)
    kind = detect_kind(path, rows)
    if kind == "scores" and threshold is None:
        raise UsageError(
            f"{path}: labels are scores: give --threshold (e.g. 2.5) to say which pairs are similar"
        )
    summary = PositiveSummary(str(path), file_sha256(path), kind, len(rows))
    out = []
    for r in rows:
        if kind == "nli":
            positive = str(r.label).strip().lower() == NLI_LABELS[1]  # entailment
        elif kind == "binary":
            positive = parse_score(path, r.line, r.label) == 1.0
        else:
            assert threshold is not None
            positive = parse_score(path, r.line, r.label) > threshold
            summary.threshold = threshold
        if positive:
            out.append((r.s1, r.s2))
        else:
            summary.dropped["negative"] += 1
    return out, summary


def read_positives(
    path: str | Path,
    *,
    columns: tuple[str, str, str] | None = None,
    threshold: float | None = None,
    limit: int | None = None,
) -> tuple[list[tuple[str, str]], PositiveSummary]:
    """One file's positive pairs (duplicates not yet removed) and its summary.

    Raises:
        BadInput: unreadable file, a bad row or group (file:line).
        UsageError: scores without `threshold`.
    """
    path = Path(path)
    mode, cols = file_mode(path, columns)
    if mode == "groups":
        groups = read_groups(path)[:limit]
        pairs = [(g[i], g[j]) for _, g in groups for i in range(len(g)) for j in range(i + 1, len(g))]
        return pairs, PositiveSummary(str(path), file_sha256(path), "groups", len(groups))
    if mode == "triplets":
        assert cols is not None
        # the positive column stands in for the label column, which is not read
        rows = read_pair_rows(path, columns=(cols[0], cols[1], cols[1]), limit=limit, labels=False)
        return [(r.s1, r.s2) for r in rows], PositiveSummary(
            str(path), file_sha256(path), "triplets", len(rows)
        )
    return _labelled_positives(path, cols, threshold, limit)


def read_generator_data(
    paths: Sequence[str | Path],
    *,
    columns: tuple[str, str, str] | None = None,
    threshold: float | None = None,
    limit: int | None = None,
) -> tuple[dict[str, PairData], list[PositiveSummary]]:
    """Every file's positive pairs in one group ({"positive": ...}), exact duplicates (in either order,
    across files) and pairs of identical sentences dropped and counted in the file where they occur.

    Raises:
        BadInput: a file with no positive pairs left, or bad input (see `read_positives`).
    """
    if not paths:
        raise UsageError("give at least one file of similar-sentence pairs")
    data = PairData(POSITIVE)
    seen: set[tuple[str, str]] = set()
    summaries = []
    for p in paths:
        pairs, summary = read_positives(p, columns=columns, threshold=threshold, limit=limit)
        for a, b in pairs:
            key = (a, b) if a <= b else (b, a)
            if a == b:
                summary.dropped["identical"] += 1
            elif key in seen:
                summary.dropped["duplicate"] += 1
            else:
                seen.add(key)
                data.s1.append(a)
                data.s2.append(b)
                data.targets.append(1.0)
                summary.pairs += 1
        if summary.pairs == 0:
            d = summary.dropped
            raise BadInput(
                f"{p}: no positive pairs ({summary.rows:,} rows: {d['negative']:,} negative, "
                f"{d['duplicate']:,} duplicate, {d['identical']:,} of identical sentences)"
            )
        summaries.append(summary)
    return {POSITIVE: data}, summaries
