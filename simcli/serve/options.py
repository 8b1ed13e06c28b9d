"""The server's settings, each default declared once (the CLI reuses them)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from simcli.types import EncoderConfig, init_on_encoder

DEFAULT_HOST = "127.0.0.1"  # loopback unless asked: an embedding endpoint has no business on every interface
DEFAULT_PORT = 8000
DEFAULT_MAX_WAIT_MS = 2.0  # what a lone request may wait for companions; under load the queue fills anyway
DEFAULT_MAX_QUEUE = 1024  # requests waiting for the model; beyond that 503 + Retry-After
DEFAULT_MAX_INPUTS = 2048  # texts in one request (the OpenAI API's own limit)
DEFAULT_MAX_BODY_BYTES = 2_000_000  # as text-embeddings-inference's payload limit
RETRY_AFTER_S = 1
# prometheus_client's own variable: the folder where the metrics of `--workers` processes meet (set by the
# parent for its workers; read by prometheus_client when it is first imported)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_TRIM_INTERVAL_S = 1.0  # seconds between two malloc_trim calls on the model thread (simcli.heap)


@dataclass(init=False)
class ServeOptions:
    """What `simcli serve` was asked to load and how to run it.

    Attributes:
        encoder: --model and how to run it (pooling, tokenizer, max length, device, dtype) as EncoderConfig;
            its model is "" when only indexes are served. Device and dtype apply to the indexes' models too;
            batch_tokens is the token budget of one model batch (None: the encoder's default for the device).
        indexes: index folders, each "DIR" (named after the folder, ".idx" dropped) or "NAME=DIR".
        whitening: a whitening file for --model's vectors.

    `ServeOptions(model=..., dtype=..., batch_tokens=...)` sets the encoder's fields by keyword as well
    (`max_batch_tokens`, the old name of `batch_tokens`, too).
    """

    encoder: EncoderConfig
    indexes: list[str] = field(default_factory=list)
    whitening: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_queue: int = DEFAULT_MAX_QUEUE
    max_inputs: int = DEFAULT_MAX_INPUTS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    workers: int | None = None  # None: chosen from the machine (simcli.serve.plan)
    threads: int | None = None
    trim_interval_s: float = DEFAULT_TRIM_INTERVAL_S

    def __init__(
        self,
        model: str | None = None,
        *,
        encoder: EncoderConfig | dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        init_on_encoder(self, encoder, settings, {"max_batch_tokens": "batch_tokens"})
        if model is not None:
            self.encoder = replace(self.encoder, model=model)

    @property
    def model(self) -> str | None:
        """--model, or None when only indexes are served."""
        return self.encoder.model or None

    def model_threads(self) -> int:
        """torch intra-op threads of each worker's model: --threads, else the cores shared among the workers.

        `simcli serve` sets both before any worker starts (simcli.serve.plan: one worker a core, one thread
        each, where memory allows); this default serves a server built in this process, as the tests build
        them: one worker, every core.
        """
        if self.threads is not None:
            return self.threads
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        return max(1, cores // max(1, self.workers or 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def public(self) -> dict[str, Any]:
        """The settings without the API key (for logs and /health)."""
        return {k: v for k, v in self.to_dict().items() if k != "api_key"}
