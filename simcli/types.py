"""Shared vocabulary: literal choices and small records. Imports nothing from simcli."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

if TYPE_CHECKING:
    import numpy as np

Pooling = Literal[
    "auto",
    "pooler",
    "cls",
    "last-avg",
    "first-last-avg",
    "max",
    "weighted-mean",
    "last-token",
    "mean-sqrt-len",
]
POOLINGS: tuple[str, ...] = get_args(Pooling)

#: Model families simcli knows (JunnYu/RoFormer_pytorch).
Family = Literal["roformer-sim", "roformer-word", "roformer-char", "wobert", "bert", "sentence-bert"]
FAMILIES: tuple[str, ...] = get_args(Family)

# The checkpoints `simcli demo-model` writes: the families above, SimBERT told apart from a plain BERT.
DemoFamily = Literal["roformer-sim", "wobert", "roformer-word", "roformer-char", "simbert", "bert"]
TokenizerKind = Literal["char", "word"]
TOKENIZER_KINDS: tuple[str, ...] = get_args(TokenizerKind)

DType = Literal["auto", "float32", "bfloat16", "float16", "int8"]
DTYPES: tuple[str, ...] = get_args(DType)


def dtype_label(dtype: object) -> str:
    """The name of an encoder's compute dtype as the flags spell it: float32, bfloat16, float16 or int8
    (`torch.qint8`: int8 linear layers, see simcli.models.int8)."""
    name = str(dtype).removeprefix("torch.")
    return "int8" if name == "qint8" else name


StoreDType = Literal["float32", "float16"]

#: Tokens per sentence, [CLS] and [SEP] included: the published evaluations truncate to 64 (kexue.fm/archives/8321 and 8454).
DEFAULT_MAX_LENGTH = 64

Engine = Literal["auto", "native", "transformers"]

#: progress(items, tokens): `items` (sentences, samples, sources) finished since the last call and the
#: `tokens` computed for them; 0 tokens means they were finished without computing (e.g. skipped on resume).
ProgressFn = Callable[[int, int], None]
#: Where a library function sends its one-line notes (the CLI prints them on stderr; the default drops them).
Log = Callable[[str], None]


@dataclass(frozen=True)
class EncoderConfig:
    """Everything that decides how a sentence encoder is loaded and run: built once per command or library
    call and handed to `simcli.load_encoder`.

    `model`, `pooling`, `tokenizer`, `max_length` and `revision` decide the vectors (they end up in the
    ModelSpec); `device`, `dtype`, `engine` and `batch_tokens` decide only speed and rounding.
    """

    model: str  # hub id or local folder
    pooling: str = "auto"  # auto | pooler | cls | last-avg | first-last-avg
    tokenizer: str | None = None  # char | word to override the detected tokenizer
    max_length: int = DEFAULT_MAX_LENGTH  # tokens per sentence, [CLS] and [SEP] included
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 | int8
    batch_tokens: int | None = None  # token budget of one batch; None: by device (1024 CPU, 16384 CUDA)
    engine: str = "auto"  # auto | native | transformers
    revision: str | None = None  # hub revision

    def with_options(self, **changes: Any) -> EncoderConfig:
        """A copy with the given fields changed; None values leave a field as it is (unset CLI options)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def init_on_encoder(
    obj: Any,
    encoder: EncoderConfig | dict[str, Any] | None,
    settings: dict[str, Any],
    renamed: dict[str, str] | None = None,
) -> None:
    """The __init__ of an options dataclass built on EncoderConfig (ServeOptions, TrainOptions): its
    `encoder` is `encoder` (an EncoderConfig, its `asdict`, or none: model "") with the EncoderConfig fields
    found in `settings` applied (`renamed`: old keyword -> field); its other fields come from `settings` or
    their defaults. So `ServeOptions(dtype="float32")` still works, the encoder's settings declared once."""
    renamed = renamed or {}
    names = {f for f in EncoderConfig.__dataclass_fields__ if f != "model"}
    changes = {renamed.get(k, k): settings.pop(k) for k in list(settings) if renamed.get(k, k) in names}
    config = EncoderConfig(**encoder) if isinstance(encoder, dict) else encoder or EncoderConfig("")
    object.__setattr__(obj, "encoder", replace(config, **changes))  # frozen dataclasses too
    for f in fields(obj):
        if f.name != "encoder":
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            object.__setattr__(obj, f.name, settings.pop(f.name, default))
    if settings:
        raise TypeError(f"{type(obj).__name__} got unexpected keyword(s): {', '.join(sorted(settings))}")


@dataclass
class EncodeStats:
    """Counts an encode call adds to (pass one in to collect them across calls)."""

    sentences: int = 0
    tokens: int = 0  # real tokens, [CLS]/[SEP] included
    padded_tokens: int = 0  # tokens the model actually ran, padding included
    truncated: int = 0  # sentences cut at max_length
    duplicates: int = 0  # sentences equal to an earlier one of their chunk: encoded once, copied
    seconds: float = 0.0


class SentenceEncoder(Protocol):
    """What every stage needs of a sentence encoder (the loaded model, a whitened one, a test double).

    `simcli.models.encoder.Encoder` is the implementation `load_encoder` returns; `WhitenedEncoder` wraps one.
    """

    @property
    def spec(self) -> ModelSpec: ...

    def encode(
        self,
        texts: Sequence[str],
        *,
        normalize: bool = False,
        stats: EncodeStats | None = None,
        progress: ProgressFn | None = None,
    ) -> np.ndarray:
        """float32 (len(texts), spec.dim) vectors in input order."""
        ...


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

    def to_json(self) -> dict[str, Any]:
        """The record of `simcli query --json` and the HTTP /search endpoint (CSLS adds csls and cosine)."""
        row: dict[str, Any] = {
            "rank": self.rank,
            "id": self.id,
            "score": round(self.score, 6),
            "text": self.text,
        }
        if self.cosine is not None:  # re-ranked by CSLS: the score is the CSLS score; both are reported
            row["csls"], row["cosine"] = round(self.score, 6), round(self.cosine, 6)
        return row
