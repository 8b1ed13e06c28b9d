"""Dynamic batching: one model worker thread serves every request's sentences in merged batches.

Request handlers tokenise their texts (off the event loop) and queue a job; the worker takes the oldest job
and, from the jobs queued behind it for the same encoder, as many as fit one token budget, waiting at most
`max_wait_ms` (counted from the oldest job's arrival) for companions while the budget is not full. The
merged sentences go through `Encoder.encode_ids`: the encoder's own de-duplication and length-sorted
token-budget batches (simcli.models.batching), not a second batching scheme. Each job gets back its own rows.
Like text-embeddings-inference and infinity, a busy model is what makes batches grow: a lone request waits
only `max_wait_ms`. The queue is bounded: a full one refuses at once (503 + Retry-After) instead of growing.

Long jobs (generation, loading a generator) run on the same thread through `call`, so only one thread ever
drives a model. The same thread hands freed heap memory back to the OS (simcli.heap) after its work and
when the queue has stayed empty for the trimmer's interval.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from simcli.heap import HeapTrimmer
from simcli.serve.api_errors import APIError
from simcli.serve.options import RETRY_AFTER_S


class _Idle:
    """What `_take` returns when no work came for a while."""


IDLE = _Idle()


@dataclass
class EncodeJob:
    """One request's tokenised sentences for one encoder."""

    encoder: Any
    ids: list[list[int]]
    future: Future[Any] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def tokens(self) -> int:
        return sum(len(r) for r in self.ids)


@dataclass
class CallJob:
    """A function to run on the model thread (generation), alone."""

    fn: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchReport:
    """What one worker cycle did, for the metrics."""

    requests: int
    sentences: int
    tokens: int  # real tokens, [CLS]/[SEP] included
    padded_tokens: int  # what the model ran, padding included
    seconds: float
    waits: list[float]  # each job's time in the queue


class Batcher:
    """The bounded job queue and the model worker thread. `start` it, `close` it (drains the queue)."""

    def __init__(
        self,
        *,
        max_batch_tokens: int | None,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[BatchReport], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        trimmer: HeapTrimmer | None = None,
    ) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.on_depth = on_depth  # told the queue length at each change (the queue gauge of /metrics)
        self.trimmer = trimmer  # hands freed heap pages back after work and when the queue falls idle
        self._jobs: deque[EncodeJob | CallJob] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="simcli-model", daemon=True)

    # -- the event loop's side ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting for the model."""
        return len(self._jobs)

    def encode(self, encoder: Any, ids: list[list[int]]) -> Future[Any]:
        """Queue tokenised sentences; the future gives their raw pooled vectors (len(ids), dim)."""
        return self._put(EncodeJob(encoder, ids))

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run `fn` on the model thread; the future gives its result."""
        return self._put(CallJob(fn))

    def _put(self, job: EncodeJob | CallJob) -> Future[Any]:
        with self._cond:  # held for microseconds: never blocks the event loop in practice
            if self._closed:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            if len(self._jobs) >= self.max_queue:
                raise APIError(
                    503,
                    f"the server is busy ({len(self._jobs)} requests queued, --max-queue {self.max_queue}); "
                    "retry later",
                    code="queue_full",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            self._jobs.append(job)
            self._cond.notify()
            self._depth_changed()
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Refuse new jobs, let the worker finish the queued ones, and wait for it."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the model thread -----------------------------------------------------------------------------
    def _budget(self, encoder: Any) -> int:
        return self.max_batch_tokens if self.max_batch_tokens is not None else default_budget(encoder)[0]

    def describe_budget(self, encoders: list[Any]) -> str:
        """The token budget of a batch, for the startup line: given, or each encoder's default and why."""
        if self.max_batch_tokens is not None:
            return f"batch tokens: {self.max_batch_tokens} (--batch-tokens)"
        return "batch tokens: " + ", ".join(sorted({"{} ({})".format(*default_budget(e)) for e in encoders}))

    def _take(self) -> list[EncodeJob] | CallJob | None | _Idle:
        """The next unit of work: a CallJob, or encode jobs of one encoder within one token budget; IDLE when
        the queue stayed empty for the trimmer's interval; None once closed and drained."""
        idle_after = self.trimmer.interval_s if self.trimmer is not None and self.trimmer.active else None
        with self._cond:
            while not self._jobs and not self._closed:
                if not self._cond.wait(idle_after):
                    return IDLE  # trimmed outside the lock: the event loop's `_put` must not wait on it
            if not self._jobs:
                return None  # closed and drained
            first = self._jobs[0]
            if isinstance(first, CallJob):
                self._jobs.popleft()
                self._depth_changed()
                return first
            budget = self._budget(first.encoder)
            deadline = first.enqueued + self.max_wait
            while not self._closed:
                queued = sum(
                    j.tokens for j in self._jobs if isinstance(j, EncodeJob) and j.encoder is first.encoder
                )
                remaining = deadline - time.perf_counter()
                if queued >= budget or remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken: list[EncodeJob] = []
            kept: deque[EncodeJob | CallJob] = deque()
            tokens = 0
            for j in self._jobs:
                fits = isinstance(j, EncodeJob) and j.encoder is first.encoder and tokens + j.tokens <= budget
                if fits or (not taken and j is first):  # a job above the budget still runs, alone
                    assert isinstance(j, EncodeJob)
                    taken.append(j)
                    tokens += j.tokens
                else:
                    kept.append(j)
            self._jobs = kept
            self._depth_changed()
        return taken

    def _depth_changed(self) -> None:
        if self.on_depth is not None:
            self.on_depth(len(self._jobs))

    def _run(self) -> None:
        while True:
            work = self._take()
            if work is None:
                return
            if isinstance(work, _Idle):
                assert self.trimmer is not None
                self.trimmer.idle()
                continue
            if isinstance(work, CallJob):
                if work.future.set_running_or_notify_cancel():
                    _settle(work.future, work.fn)
            else:
                jobs = [j for j in work if j.future.set_running_or_notify_cancel()]  # drop cancelled ones
                if jobs:
                    self._encode(jobs)
            if self.trimmer is not None:
                self.trimmer.worked()

    def _encode(self, jobs: list[EncodeJob]) -> None:
        from simcli.models.encoder import EncodeStats

        encoder = jobs[0].encoder
        rows = [r for j in jobs for r in j.ids]
        stats = EncodeStats()
        start = time.perf_counter()
        waits = [start - j.enqueued for j in jobs]
        try:
            vectors = encoder.encode_ids(rows, batch_tokens=self._budget(encoder), stats=stats)
        except Exception as e:  # noqa: BLE001  (handed to the waiting requests; the worker lives on)
            for j in jobs:
                j.future.set_exception(e)
            return
        offset = 0
        for j in jobs:
            j.future.set_result(vectors[offset : offset + len(j.ids)])
            offset += len(j.ids)
        if self.on_batch is not None:
            self.on_batch(
                BatchReport(
                    len(jobs),
                    len(rows),
                    stats.tokens,
                    stats.padded_tokens,
                    time.perf_counter() - start,
                    waits,
                )
            )


def default_budget(encoder: Any) -> tuple[int, str]:
    """The token budget of one serving batch for `encoder` when --batch-tokens is not given, and why.

    The encoder's own (`Encoder.batch_tokens`: the registry loads encoders without a budget, so it is the default
    for their device and dtype): with one model thread a worker, 1024 real tokens a batch ran with the least
    padding and CPU time per request on float32 (m3e-small, 32 clients; 2048 and 4096 padded 13-15% more) and
    kept up with the sweep of bench/serve.py (docs/serve.md); in bf16 on AMX the encoder's 2048 served 92-94% of
    the sweep's best (docs/performance.md).
    """
    dtype = str(encoder.dtype).removeprefix("torch.")
    return encoder.batch_tokens, f"{dtype} on {encoder.device.type}"


def _settle(future: Future[Any], fn: Callable[[], Any]) -> None:
    try:
        future.set_result(fn())
    except Exception as e:  # noqa: BLE001  (handed to the caller)
        future.set_exception(e)
