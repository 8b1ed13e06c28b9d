"""simcli.heap: malloc_trim really hands freed heap pages back, and the trimmer keeps to its interval."""

from __future__ import annotations

import ctypes
import os
import sys

import pytest
import torch

from simcli.heap import HeapTrimmer, malloc_trim

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only"
)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@glibc
def test_malloc_trim_returns_freed_heap_pages_to_the_os() -> None:
    """Blocks below the mmap threshold live in the heap; once freed behind a live block they stay resident
    until malloc_trim gives their pages back (what a serving process's varying batch buffers do)."""
    trim = malloc_trim()
    assert trim is not None
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 64 * 1024, 640  # 40 MiB in blocks under glibc's 128 KiB default mmap threshold
    trim(0)
    blocks = [libc.malloc(size) for _ in range(count)]
    for b in blocks:
        ctypes.memset(b, 1, size)  # touch every page: resident
    pin = libc.malloc(size)  # a live block above them keeps the heap top from shrinking on free
    for b in blocks:
        libc.free(b)
    before = _rss_bytes()
    trim(0)
    after = _rss_bytes()
    libc.free(pin)
    assert before - after > 0.75 * size * count, f"RSS {before >> 20} -> {after >> 20} MiB"


def _clocked(interval_s: float, start: float) -> tuple[HeapTrimmer, list[float]]:
    """A trimmer on a clock the test sets (now[0]); skipped where the C library has no malloc_trim."""
    now = [start]
    trimmer = HeapTrimmer(interval_s, clock=lambda: now[0])
    if interval_s > 0 and not trimmer.active:
        pytest.skip("no malloc_trim in this C library")
    return trimmer, now


def test_trimmer_keeps_to_its_interval() -> None:
    trimmer, now = _clocked(5.0, 100.0)
    trimmer.worked()
    assert trimmer.trims == 0, "not before the interval has passed since the start"
    now[0] = 104.9
    trimmer.worked()
    assert trimmer.trims == 0
    now[0] = 105.0
    trimmer.worked()
    assert trimmer.trims == 1
    now[0] = 109.0
    trimmer.worked()
    assert trimmer.trims == 1, "counted from the last trim"
    now[0] = 110.0
    trimmer.worked()
    assert trimmer.trims == 2


def test_interval_zero_never_trims() -> None:
    trimmer, now = _clocked(0.0, 0.0)
    now[0] = 1e9
    trimmer.worked()
    trimmer.idle()
    assert not trimmer.active and trimmer.trims == 0


def test_idle_trims_once_after_work() -> None:
    trimmer, now = _clocked(5.0, 0.0)
    trimmer.idle()
    assert trimmer.trims == 0, "nothing to hand back before any work"
    now[0] = 1.0
    trimmer.worked()
    assert trimmer.trims == 0, "within the interval"
    trimmer.idle()
    trimmer.idle()
    assert trimmer.trims == 1, "once when the queue falls idle, not again while it stays idle"


def test_a_cuda_server_trims_only_when_idle() -> None:
    """Serving a CUDA model, a trim never lands between two batches; it waits for the queue to empty."""
    trimmer, now = _clocked(1.0, 0.0)
    trimmer.idle_only = True
    for t in range(1, 20):
        now[0] = float(t)
        trimmer.worked()
    assert trimmer.trims == 0, "19 s of batches, no trim among them"
    trimmer.idle()
    assert trimmer.trims == 1


def test_the_server_picks_idle_only_trimming_for_a_cuda_encoder() -> None:
    from types import SimpleNamespace

    from simcli.serve.app import Service
    from simcli.serve.options import ServeOptions
    from simcli.serve.registry import Registry

    for device, idle_only in (("cuda", True), ("cpu", False)):
        registry = Registry()
        registry.encoders.append(SimpleNamespace(device=torch.device(device)))
        service = Service(registry, ServeOptions())
        assert service.batcher.trimmer is not None and service.batcher.trimmer.idle_only is idle_only
