"""The training loop of `simcli train`: the loaded sentence model (`load_encoder(...).model`, the same module
that encodes), a loss, AdamW with linear warm-up and decay, gradient accumulation, mixed precision,
evaluation and resumable states.

A resumable state (`<out>.partial/state.pt`) holds the weights, the optimizer, the scheduler, the torch RNG
(dropout) and the step; the data order is a pure function of (seed, step) (`data.Schedule`), so a resumed
run reproduces the uninterrupted one.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simcli.errors import UsageError
from simcli.heap import HeapTrimmer
from simcli.io import atomic_write_with
from simcli.models.batching import batches
from simcli.models.device import dtype_candidates
from simcli.models.encoder import Encoder, default_batch_tokens, load_encoder
from simcli.models.loading import recorded_name
from simcli.models.native import NativeBackbone
from simcli.training.checkpoint import check_out, staged_folder, write_checkpoint
from simcli.training.data import PairData, Schedule, read_training_data
from simcli.training.losses import SoftmaxHead, cosent_loss, masked_softmax_loss
from simcli.training.options import TrainOptions, linear_schedule
from simcli.types import EncoderConfig

#: step, total steps, mean loss of the step, pairs/s so far
StepFn = Callable[[int, int, float, float], None]
NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias")
#: Steps between resumable states when neither --save-every nor --eval-every is given.
DEFAULT_SAVE_EVERY = 500


TRIM_INTERVAL_S = 1.0  # at most one malloc_trim a second: once a step on the CPU


def state_folder(out: Path) -> Path:
    """Where an interrupted run's resumable state lives: beside --out."""
    return out.parent / f"{out.name}.partial"


@dataclass
class Batch:
    """Token ids of a micro-batch's pairs (first sentences, then second ones) and their labels."""

    rows: list[list[int]]  # 2n rows
    targets: torch.Tensor  # (n,)
    nli: torch.Tensor  # (n,) bool
    texts: list[str] = field(default_factory=list)  # the 2n sentences of `rows`


@dataclass
class Record:
    """What training.json holds besides the settings."""

    history: list[dict[str, Any]] = field(default_factory=list)  # {"step", "loss"} every log_every steps
    evals: list[dict[str, Any]] = field(default_factory=list)  # {"step", "scores": {name: spearman}, "mean"}
    seconds: float = 0.0  # training time, evaluation excluded
    pairs: int = 0  # pairs trained on
    pending: list[float] = field(default_factory=list)  # step losses not yet averaged into `history`


def autocast_dtype(name: str, device: torch.device) -> torch.dtype:
    """The mixed-precision dtype: bf16 autocast on CPU where `auto` picks it (native bf16, measured faster),
    float16 on CUDA; float32 means no autocast. Weights and optimizer stay float32."""
    if name == "float16" and device.type == "cpu":
        raise UsageError("--dtype float16: mixed precision on CPU uses bfloat16 (or float32)")
    return dtype_candidates(name, device, int8=False)[0]


class Trainer:
    """One run over labelled pairs with the softmax or cosent loss."""

    def __init__(
        self,
        files: Sequence[str | Path],
        model: str | EncoderConfig,
        out: str | Path,
        options: TrainOptions,
        *,
        log: Callable[[str], None] = lambda _m: None,
    ) -> None:
        options.check()
        self.options = o = options
        self.out = Path(out)
        self.files = [str(f) for f in files]
        self.log = log
        self.groups, self.summaries = self.read_data()
        for s in self.summaries:
            log(s.describe())
        cfg = model if isinstance(model, EncoderConfig) else EncoderConfig(model)
        self.encoder: Encoder = load_encoder(
            cfg.with_options(
                pooling=o.encoder.pooling,
                max_length=o.encoder.max_length,
                device=o.encoder.device,
                dtype="float32",
            )
        )
        self.amp = autocast_dtype(o.encoder.dtype, self.encoder.device)
        self.model = self.encoder.model
        self.device = self.encoder.device
        self.head = SoftmaxHead(self.encoder.dim, o.seed).to(self.device) if o.loss == "softmax" else None
        self.schedule = Schedule({g: len(d) for g, d in self.groups.items()}, o.batch_size, o.seed)
        per_epoch = -(-self.schedule.batches_per_epoch // o.grad_accum)
        self.total_steps = o.steps if o.steps is not None else o.epochs * per_epoch
        self.modules: dict[str, torch.nn.Module] = {"model": self.model}
        if self.head is not None:
            self.modules["head"] = self.head
        self.prepare()
        self.tokens = self._tokenize()
        seen: set[int] = set()  # a tied weight (the MLM decoder) is optimised once
        params = []
        for n, p in self._named_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append((n, p))
        groups = [
            {"params": [p for n, p in params if not n.endswith(NO_DECAY)], "weight_decay": o.weight_decay},
            {"params": [p for n, p in params if n.endswith(NO_DECAY)], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=o.lr, foreach=True)
        warmup = math.ceil(o.warmup * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_schedule(warmup, self.total_steps)
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp == torch.float16 and self.device.type == "cuda"
        )
        self.step = 0
        self.record = Record()
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # score, step, weights

    def prepare(self) -> None:
        """Subclasses add modules to train (`self.modules`) here, before the optimizer is built."""

    def read_data(self) -> tuple[dict[str, PairData], Sequence[Any]]:
        """The training pairs by group, and one summary per file (with `sha256`, `to_dict()` and
        `describe()`); a subclass reads other data (the generator's positive pairs)."""
        o = self.options
        return read_training_data(
            self.files, loss=o.loss, kind=o.kind, columns=o.columns, threshold=o.threshold, limit=o.limit
        )

    # -- data -----------------------------------------------------------------------------------------
    def _named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(f"{m}.{n}", p) for m, module in self.modules.items() for n, p in module.named_parameters()]

    def texts(self) -> list[str]:
        """Every distinct sentence of the training data, in the order first seen."""
        return list(dict.fromkeys(t for d in self.groups.values() for t in (*d.s1, *d.s2)))

    def _tokenize(self) -> dict[str, list[int]]:
        texts = self.texts()
        ids = self.encoder.tokenizer.encode_batch(texts, self.options.encoder.max_length).ids
        return dict(zip(texts, ids, strict=True))

    def batch(self, index: int) -> Batch:
        picked = self.schedule.batch(index)
        first: list[list[int]] = []
        second: list[list[int]] = []
        texts1: list[str] = []
        texts2: list[str] = []
        targets: list[float] = []
        nli: list[bool] = []
        for g, idx in picked.items():
            d: PairData = self.groups[g]
            texts1 += [d.s1[i] for i in idx]
            texts2 += [d.s2[i] for i in idx]
            first += [self.tokens[d.s1[i]] for i in idx]
            second += [self.tokens[d.s2[i]] for i in idx]
            targets += [d.targets[i] for i in idx]
            nli += [g == "nli"] * len(idx)
        return Batch(
            first + second, torch.tensor(targets), torch.tensor(nli, dtype=torch.bool), texts1 + texts2
        )

    # -- forward --------------------------------------------------------------------------------------
    def vectors(self, rows: list[list[int]]) -> torch.Tensor:
        """Sentence vectors (rows, dim) with gradients. Rows are sorted by length and run in passes under
        --batch-tokens (none: one pass) so short sentences are not padded to the longest."""
        budget = self.options.encoder.batch_tokens or self.default_batch_tokens()
        pad = self.encoder.tokenizer.pad_id
        parts, order = [], []
        for group in batches([len(r) for r in rows], budget, max_batch=10**9):
            longest = max(len(rows[i]) for i in group)
            ids = torch.full((len(group), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(group), longest), dtype=torch.long)
            for r, i in enumerate(group):
                ids[r, : len(rows[i])] = torch.as_tensor(rows[i])
                mask[r, : len(rows[i])] = 1
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp != torch.float32):
                parts.append(self.model(ids.to(self.device), mask.to(self.device)).float())
            order += group
        out = torch.cat(parts)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.as_tensor(order)] = torch.arange(len(order))
        return out[inverse.to(self.device)]

    def default_batch_tokens(self) -> int:
        """One pass where the backbone packs a padded batch (native.Packing: padding then costs attention
        only, and one pass has the largest matrix products), and on CUDA; else the encoder's CPU budget, so
        short sentences are not padded to the batch's longest."""
        if isinstance(self.model.backbone, NativeBackbone) or self.device.type != "cpu":
            return 10**9
        return default_batch_tokens(self.device.type)

    def loss(self, b: Batch) -> torch.Tensor:
        vec = self.vectors(b.rows)
        n = len(b.targets)
        u, v = vec[:n], vec[n:]
        targets, nli = b.targets.to(self.device), b.nli.to(self.device)
        if self.head is not None:
            return masked_softmax_loss(self.head(u, v), nli, targets)
        cos = torch.nn.functional.cosine_similarity(u, v, dim=-1)
        return cosent_loss(cos, targets)

    # -- evaluation -----------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Spearman x100 of each --eval file (the evaluation code of `simcli eval sts`, no whitening)."""
        from simcli.evaluate import evaluate_sts

        self.model.eval()
        try:
            results = evaluate_sts(
                self.options.eval_files,
                self.encoder,
                whiten=("none",),
                columns=self.options.columns,
                max_length=self.options.encoder.max_length,
            )
        finally:
            self.model.train()
        return {r.dataset: round(r.spearman, 4) for r in results}

    def _eval_and_keep(self) -> None:
        scores = self.evaluate()
        mean = float(np.mean(list(scores.values())))
        self.record.evals.append({"step": self.step, "scores": scores, "mean": round(mean, 4)})
        self.log(f"step {self.step}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
        if self.options.save_best and (self.best is None or mean > self.best[0]):
            self.best = (mean, self.step, self._weights())

    def _weights(self) -> dict[str, torch.Tensor]:
        return {
            f"{m}.{k}": v.detach().cpu().clone()
            for m, module in self.modules.items()
            for k, v in module.state_dict().items()
        }

    def _load_weights(self, sd: dict[str, torch.Tensor]) -> None:
        for m, module in self.modules.items():
            prefix = f"{m}."
            module.load_state_dict({k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)})

    # -- resumable state ------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """What must match for a state to be resumed: data, model and every setting that changes the run."""
        o = self.options.to_dict()
        for volatile in ("eval_files", "eval_every", "save_every", "log_every", "device"):
            o.pop(volatile, None)
        return {
            "data": [s.sha256 for s in self.summaries],
            "model": self.encoder.checkpoint.weights_sha256,
            "options": o,
            "total_steps": self.total_steps,
        }

    def save_state(self) -> None:
        state = {
            "step": self.step,
            "weights": self._weights(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "record": self.record.__dict__,
            "best": self.best,
            "fingerprint": self.fingerprint(),
        }
        folder = state_folder(self.out)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_with(folder / "state.pt", lambda f: torch.save(state, f))

    def load_state(self) -> bool:
        """Continue from the saved state, if any (False: none, start afresh); UsageError if it belongs to
        another run."""
        path = state_folder(self.out) / "state.pt"
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["fingerprint"] != self.fingerprint():
            raise UsageError(
                f"--resume: {path} was saved by a run with other data, model or settings; "
                "give the same ones, or drop --resume (with --overwrite) to start afresh"
            )
        self._load_weights(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        # else the run started without loss scaling (CPU, or not fp16): an enabled scaler starts afresh,
        # where loading the empty state would raise
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.record = Record(**state["record"])
        self.best = state["best"]
        self.step = int(state["step"])
        return True

    # -- the run ---------------------------------------------------------------------------------------
    def train(
        self, *, resume: bool = False, overwrite: bool = False, on_step: StepFn | None = None
    ) -> dict[str, Any]:
        """Train to the last step, write --out; returns the training record."""
        o = self.options
        check_out(self.out, overwrite)
        torch.manual_seed(o.seed)  # dropout
        if not resume:
            shutil.rmtree(state_folder(self.out), ignore_errors=True)
        elif self.load_state():
            self.log(f"resuming at step {self.step} of {self.total_steps}")
        else:
            self.log("--resume: no saved state, starting afresh")
        save_every = o.save_every or o.eval_every or DEFAULT_SAVE_EVERY
        if o.eval_files and self.step == 0:
            self._eval_and_keep()  # the untrained model's scores: the "before" of the record
        self.model.train()
        losses = self.record.pending
        heap = HeapTrimmer(
            TRIM_INTERVAL_S
        )  # freed activations of varying shapes would stay resident (simcli.heap)
        while self.step < self.total_steps:
            start = time.perf_counter()
            total = 0.0
            for micro in range(o.grad_accum):
                b = self.batch(self.step * o.grad_accum + micro)
                loss = self.loss(b) / o.grad_accum
                self.scaler.scale(loss).backward()
                total += float(loss.detach())
                self.record.pairs += len(b.targets)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            heap.worked()
            self.record.seconds += time.perf_counter() - start
            losses.append(total)
            if len(losses) == o.log_every or self.step == self.total_steps:
                self.record.history.append({"step": self.step, "loss": round(float(np.mean(losses)), 6)})
                losses.clear()
            if on_step is not None:
                on_step(
                    self.step, self.total_steps, total, self.record.pairs / max(self.record.seconds, 1e-9)
                )
            if (
                o.eval_files
                and o.eval_every
                and self.step % o.eval_every == 0
                and self.step < self.total_steps
            ):
                self._eval_and_keep()
            if save_every and self.step % save_every == 0 and self.step < self.total_steps:
                self.save_state()
        if o.eval_files and not (self.record.evals and self.record.evals[-1]["step"] == self.step):
            self._eval_and_keep()
        if self.best is not None:
            self._load_weights(self.best[2])
        for module in self.modules.values():  # as loaded for inference, like the written checkpoint
            module.eval()
        record = self.training_record()
        with staged_folder(self.out, overwrite) as stage:
            self.write(stage, record)
        shutil.rmtree(state_folder(self.out), ignore_errors=True)
        return record

    def write(self, folder: Path, record: dict[str, Any]) -> None:
        write_checkpoint(folder, self.encoder.checkpoint, self.model, record, head=self.head)

    def training_record(self) -> dict[str, Any]:
        from simcli import __version__

        ck = self.encoder.checkpoint
        r = self.record
        return {
            "simcli": __version__,
            "task": "train",
            "model": recorded_name(ck.model),
            "model_weights_sha256": ck.weights_sha256,
            "family": ck.family,
            "pooling": self.model.pooling,
            "loss": self.options.loss,
            "data": [s.to_dict() for s in self.summaries],
            "hyperparameters": self.options.to_dict(),
            "seed": self.options.seed,
            "steps": self.step,
            "total_steps": self.total_steps,
            "pairs": r.pairs,
            "seconds": round(r.seconds, 3),
            "pairs_per_second": round(r.pairs / r.seconds, 3) if r.seconds else None,
            "autocast": str(self.amp).removeprefix("torch."),
            "device": str(self.device),
            "loss_history": r.history,
            "eval": r.evals,
            "best": {"step": self.best[1], "mean": round(self.best[0], 4)} if self.best else None,
            "classifier": (
                {
                    "file": "classifier.safetensors",
                    "features": "concat(u, v, |u - v|)",
                    "logits": ["binary 0", "binary 1", "contradiction", "entailment", "neutral"],
                }
                if self.head is not None
                else None
            ),
        }
