"""The settings of a training run (the `simcli train` flags) and the learning-rate schedule."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from simcli.errors import UsageError
from simcli.types import EncoderConfig, init_on_encoder

#: `simcli train generator`: the in-batch similarity loss's scale and the share of noised sources (RoFormer-Sim
#: stage 1), and its settings that differ from `simcli train`'s (lr 1e-5; 96 rows = 48 pairs a batch).
SIM_SCALE = 20.0
NOISE_RATE = 0.5
GENERATOR_DEFAULTS: dict[str, Any] = {"lr": 1e-5, "batch_size": 48}

# The hyper-parameters as training.json lists them.
_RECORDED = (
    "loss",
    "kind",
    "columns",
    "threshold",
    "limit",
    "eval_files",
    "eval_every",
    "save_best",
    "batch_size",
    "epochs",
    "steps",
    "lr",
    "weight_decay",
    "warmup",
    "max_length",
    "seed",
    "grad_accum",
    "dtype",
    "device",
    "pooling",
    "batch_tokens",
    "save_every",
    "log_every",
)


@dataclass(frozen=True, init=False)
class TrainOptions:
    """Hyper-parameters and switches; the defaults are the published recipe's (kexue.fm/archives/8541):
    AdamW lr 2e-5, weight decay 0.01, max length 64, linear warm-up then linear decay.

    `encoder` holds the settings of the encoders trained (its model is unused: `train` and `distill` take
    the models): pooling, max_length and device as for every command; dtype is the autocast dtype (weights
    stay float32); batch_tokens splits a batch's sentences into length-sorted passes of that many tokens
    (None: Trainer.default_batch_tokens). `TrainOptions(max_length=..., dtype=...)` sets them by keyword too.
    """

    encoder: EncoderConfig
    loss: str = "softmax"  # softmax | cosent
    kind: str = "auto"  # auto | binary | scores | nli
    columns: tuple[str, str, str] | None = None
    threshold: float | None = None  # scores above it are label 1
    limit: int | None = None  # first pairs of each file only
    eval_files: tuple[str, ...] = ()
    eval_every: int | None = None  # optimizer steps between evaluations (None: at the end only)
    save_best: bool = False
    batch_size: int = 32  # pairs per micro-batch
    epochs: int = 1
    steps: int | None = None  # optimizer steps; overrides epochs
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup: float = 0.1  # share of the steps spent warming up
    seed: int = 42
    grad_accum: int = 1
    save_every: int | None = None  # steps between resumable states (None: each evaluation, else 500)
    log_every: int = 10  # steps averaged into one point of the recorded loss curve
    # `simcli train generator` only: the similarity loss's scale, the share of sources noised, length grouping
    scale: float = SIM_SCALE
    noise: float = NOISE_RATE
    group_by_length: bool = False  # batches of pairs of similar length (less padding under the UniLM mask)
    extra: dict[str, Any] = field(default_factory=dict)

    def __init__(self, *, encoder: EncoderConfig | None = None, **settings: Any) -> None:
        if settings.get("eval_files") is not None:
            settings["eval_files"] = tuple(str(f) for f in settings["eval_files"])
        init_on_encoder(self, encoder, settings)

    @classmethod
    def generator(cls, **settings: Any) -> TrainOptions:
        """Options for `train_generator`: `settings` over the RoFormer-Sim stage-1 defaults (lr 1e-5, 48
        pairs a batch), e.g. `TrainOptions.generator(steps=100, noise=0.0)`."""
        return cls(**{**GENERATOR_DEFAULTS, **settings})

    def check(self) -> None:
        from simcli.training.data import KINDS
        from simcli.training.losses import LOSSES

        if self.encoder.dtype == "int8":
            raise UsageError(
                "--dtype int8 cannot train: training keeps float32 weights and --dtype here is the autocast "
                "dtype (auto, float32, bfloat16 or float16 on CUDA); encode with --dtype int8 afterwards"
            )
        if self.loss not in LOSSES:
            raise UsageError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.kind not in KINDS:
            raise UsageError(f"--kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for flag, value in (
            ("--batch-size", self.batch_size),
            ("--epochs", self.epochs),
            ("--grad-accum", self.grad_accum),
            ("--steps", self.steps),
            ("--eval-every", self.eval_every),
            ("--save-every", self.save_every),
            ("--pass-tokens", self.encoder.batch_tokens),
        ):
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be at least 1, got {value}")
        if self.loss == "cosent" and self.batch_size < 2:
            raise UsageError("--batch-size must be at least 2 for --loss cosent (it ranks pairs in a batch)")
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise UsageError(f"--warmup must be in [0, 1), got {self.warmup}")
        if not self.scale > 0:
            raise UsageError(f"--scale must be positive, got {self.scale}")
        if not 0 <= self.noise <= 1:
            raise UsageError(f"--noise must be in [0, 1], got {self.noise}")
        if self.save_best and not self.eval_files:
            raise UsageError("--save-best needs --eval files to score checkpoints on")

    def to_dict(self) -> dict[str, Any]:
        """The flat form training.json records (and a resumed run compares), keys in their recorded order:
        the encoder's settings among the hyper-parameters."""
        e = asdict(self.encoder)
        return {k: e[k] if k in e else getattr(self, k) for k in _RECORDED} | self.extra


def linear_schedule(warmup_steps: int, total_steps: int):  # type: ignore[no-untyped-def]
    """The multiplier of the learning rate at a step: rises linearly over the warm-up, then falls linearly
    to 0 at the last step (as transformers' get_linear_schedule_with_warmup)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor
