"""Handing freed heap pages back to the OS, so a long-running server's or training run's memory stays bounded.

A serving batch's activations change size with every batch (the sentences and their lengths vary). glibc's
malloc raises its mmap threshold to the largest block freed so far, so after a while these blocks come from
the heap, where freed ones stay resident: over 100,000 requests the RSS of `simcli serve` grew by ~165 MB.
Fixed, low thresholds (MALLOC_MMAP_THRESHOLD_) keep it flat but map and fault fresh pages on every batch,
which cost a quarter of the throughput. `malloc_trim(0)` instead returns the free pages of every arena
(madvise) now and then, leaving the pages in use alone: at most once a second (by default) while the model is
busy, and once when it falls idle, so an idle server sits at its working set.

Training has the same pattern, larger: every batch has its own padded length and number of target tokens, and
a generator run on m3e-small grew from 2 GB to over 10 GB in an hour; one malloc_trim(0) brought 3.3 GB back to
1.1 GB, so the growth was freed pages, not live tensors. The training loop trims after each step.
"""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Callable
from functools import lru_cache


@lru_cache(maxsize=1)
def malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    # the process's own symbols: libc is always loaded, and find_library("c") would spawn ldconfig
    fn = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


class HeapTrimmer:
    """malloc_trim(0) on the model thread: `worked` after each unit of work trims at most once every
    `interval_s` seconds; `idle` trims once if there was work since the last trim. interval_s 0: never.
    `idle_only`: never between batches, only when the queue is empty (a CUDA model: a trim of several ms would
    stall batches that take a few ms on the GPU, and its tensors live in device memory, not the heap)."""

    def __init__(
        self,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_trim: Callable[[], object] | None = None,
        idle_only: bool = False,
    ) -> None:
        self.interval_s = interval_s
        self.idle_only = idle_only
        self.on_trim = on_trim  # told after each trim (the server's metrics count them)
        self._trim = malloc_trim() if interval_s > 0 else None
        self._clock = clock
        self._last = clock()
        self._dirty = False  # work done since the last trim
        self.trims = 0

    @property
    def active(self) -> bool:
        return self._trim is not None

    def worked(self) -> None:
        self._dirty = True
        if not self.idle_only and self._clock() - self._last >= self.interval_s:
            self._run()

    def idle(self) -> None:
        if self._dirty:
            self._run()

    def _run(self) -> None:
        if self._trim is None:
            return
        self._trim(0)
        self._last = self._clock()
        self._dirty = False
        self.trims += 1
        if self.on_trim is not None:
            self.on_trim()
