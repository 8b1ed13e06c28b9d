"""Shared vocabulary: literal choices and small records. Imports nothing from simcli."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

Pooling = Literal["auto", "pooler", "cls", "last-avg", "first-last-avg"]
POOLINGS: tuple[str, ...] = get_args(Pooling)

#: Model families simcli knows (REFERENCE.md 1).
Family = Literal["roformer-sim", "roformer-word", "roformer-char", "wobert", "bert"]
FAMILIES: tuple[str, ...] = get_args(Family)

TokenizerKind = Literal["char", "word"]
TOKENIZER_KINDS: tuple[str, ...] = get_args(TokenizerKind)

DType = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(DType)

StoreDType = Literal["float32", "float16"]

#: Tokens per sentence, [CLS] and [SEP] included: the published evaluations truncate to 64 (REFERENCE 1.2).
DEFAULT_MAX_LENGTH = 64


@dataclass(frozen=True)
class ModelSpec:
    """What decides a sentence vector: recorded in every artefact's manifest and checked on load.

    Two artefacts fit together only when their specs agree on every field but `dtype`/`device`,
    which change the numbers by rounding only.
    """

    model: str  # hub id or local path as the user gave it
    weights_sha256: str  # content hash of the weights file: identifies the checkpoint wherever it lives
    family: str
    tokenizer: str
    pooling: str  # resolved, never "auto"
    max_length: int
    dim: int
    revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Hit:
    """One search result: `score` ranks it (the cosine, or the re-rank's score); `cosine` is the cosine when
    a re-rank (CSLS) replaced the score."""

    rank: int
    id: int
    score: float
    text: str
    cosine: float | None = None
