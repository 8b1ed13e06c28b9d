"""Prometheus metrics of one server (its own registry, so several servers in one process stay apart).

Under `--workers N` each worker process records into files of a folder the parent made (prometheus_client's
multiprocess mode, MULTIPROC_ENV), and /metrics, whichever worker answers, sums every worker's: counters and
histograms add up, and the gauges (requests in flight, queue depth) count the live workers only.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from simcli.serve.batcher import BatchReport
from simcli.serve.options import MULTIPROC_ENV

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SENTENCE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Requests and errors by endpoint, queue depth, batch sizes and latencies."""

    def __init__(self) -> None:
        self.shared = os.environ.get(MULTIPROC_ENV)  # the folder of the workers' metrics, under --workers
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "simcli_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            "simcli_request_errors", "Refused or failed requests by endpoint and error code.", ["endpoint", "code"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "simcli_request_duration_seconds", "Request latency by endpoint.", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "simcli_requests_in_flight", "Requests being answered, by endpoint.", ["endpoint"], registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.queue_depth = Gauge(
            "simcli_queue_depth",
            "Requests waiting for the model thread.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_wait = Histogram(
            "simcli_queue_wait_seconds", "Time a request waited for the model thread.", buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "simcli_batch_requests",
            "Requests merged into one model batch.",
            buckets=SENTENCE_BUCKETS,
            registry=r,
        )
        self.batch_sentences = Histogram(
            "simcli_batch_sentences", "Sentences in one model batch.", buckets=SENTENCE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "simcli_batch_tokens", "Real tokens ([CLS]/[SEP] included) in one model batch.",
            buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_padded_tokens = Histogram(
            "simcli_batch_padded_tokens", "Tokens the model ran for one batch, padding included.",
            buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "simcli_batch_duration_seconds", "Model time of one batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.heap_trims = Counter(
            "simcli_heap_trims", "Times the model thread handed freed heap memory back to the OS (malloc_trim).",
            registry=r,
        )  # fmt: skip

    def batch(self, report: BatchReport) -> None:
        """Record one worker cycle (called on the model thread; prometheus_client is thread-safe)."""
        self.batch_requests.observe(report.requests)
        self.batch_sentences.observe(report.sentences)
        self.batch_tokens.observe(report.tokens)
        self.batch_padded_tokens.observe(report.padded_tokens)
        self.batch_seconds.observe(report.seconds)
        for w in report.waits:
            self.queue_wait.observe(w)

    def render(self) -> bytes:
        if self.shared is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        every = CollectorRegistry()
        multiprocess.MultiProcessCollector(every, path=self.shared)
        return generate_latest(every)

    def close(self) -> None:
        """This process stops: its gauges leave the live workers' sums."""
        if self.shared is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.shared)
