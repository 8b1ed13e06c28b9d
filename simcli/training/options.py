"""The settings of a training run (the `simcli train` flags) and the learning-rate schedule."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from simcli.errors import UsageError
from simcli.types import DEFAULT_MAX_LENGTH


@dataclass(frozen=True)
class TrainOptions:
    """Hyper-parameters and switches; the defaults are the published recipe's (kexue.fm/archives/8541):
    AdamW lr 2e-5, weight decay 0.01, max length 64, linear warm-up then linear decay."""

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
    max_length: int = DEFAULT_MAX_LENGTH
    seed: int = 42
    grad_accum: int = 1
    dtype: str = "auto"  # autocast dtype: auto | float32 | bfloat16 | float16 (weights stay float32)
    device: str = "auto"
    pooling: str = "auto"
    batch_tokens: int | None = (
        None  # length-sorted passes of this many tokens (None: Trainer.default_batch_tokens)
    )
    save_every: int | None = None  # steps between resumable states (None: each evaluation, else 500)
    log_every: int = 10  # steps averaged into one point of the recorded loss curve
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        from simcli.training.data import KINDS
        from simcli.training.losses import LOSSES

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
            ("--batch-tokens", self.batch_tokens),
        ):
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be at least 1, got {value}")
        if self.loss == "cosent" and self.batch_size < 2:
            raise UsageError("--batch-size must be at least 2 for --loss cosent (it ranks pairs in a batch)")
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise UsageError(f"--warmup must be in [0, 1), got {self.warmup}")
        if self.save_best and not self.eval_files:
            raise UsageError("--save-best needs --eval files to score checkpoints on")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return {**d, **self.extra}


def linear_schedule(warmup_steps: int, total_steps: int):  # type: ignore[no-untyped-def]
    """The multiplier of the learning rate at a step: rises linearly over the warm-up, then falls linearly
    to 0 at the last step (as transformers' get_linear_schedule_with_warmup)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor
