"""The progress bars of the commands, on stderr and only on a terminal (logs and pipes stay clean)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from simcli.types import ProgressFn


def progress_bar() -> Any:
    """A rich progress bar on stderr: sentences done (of the total when known), rate, time."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("sentences"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # no bar (nor its blank line) in logs and pipes
    )


@contextmanager
def encode_progress(total: int | None) -> Iterator[ProgressFn | None]:
    """A rich progress bar on stderr (sentences/s, tokens/s, ETA) when stderr is a terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return

    class Rates(ProgressColumn):
        def render(self, task: Task) -> Text:
            elapsed = task.elapsed or 0.0
            if elapsed <= 0:
                return Text("")
            sent = task.fields["encoded"] / elapsed
            tok = task.fields["tokens"] / elapsed
            return Text(f"{sent:,.0f} sentences/s  {tok:,.0f} tokens/s", style="progress.data.speed")

    with Progress(
        TextColumn("encoding"),
        BarColumn(),
        MofNCompleteColumn(),
        Rates(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("encode", total=total, encoded=0, tokens=0)
        counts = {"encoded": 0, "tokens": 0}

        def advance(sentences: int, tokens: int) -> None:
            if tokens:  # finished shards skipped on --resume report no tokens: they are not encoded now
                counts["encoded"] += sentences
                counts["tokens"] += tokens
            bar.update(task, advance=sentences, encoded=counts["encoded"], tokens=counts["tokens"])

        yield advance


@contextmanager
def count_progress(total: int | None, unit: str, label: str = "generating") -> Iterator[ProgressFn | None]:
    """A rich progress bar on stderr when it is a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeRemainingColumn(),
        console=console,
    ) as bar:  # fmt: skip
        task = bar.add_task("generate", total=total)
        yield lambda done, _tokens: bar.update(task, advance=done)


#: Seconds between the plain progress lines of a training run whose stderr is not a terminal.
TRAINING_LOG_INTERVAL_S = 60.0


def training_log_lines(
    label: str, write: Callable[[str], None], interval: float = TRAINING_LOG_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[int, int, float, float], None]:  # fmt: skip
    """An on_step that writes one plain line at most every `interval` seconds and at the last step, with the
    time left at this run's pace: a run under nohup, a scheduler or a pipe is not silent for an hour."""
    began = last = clock()
    first: int | None = None  # the first step seen (a resumed run starts past 0)

    def on_step(step: int, total: int, loss: float, rate: float) -> None:
        nonlocal last, first
        now = clock()
        first = step - 1 if first is None else first
        if now - last < interval and step < total:
            return
        last = now
        left = ""
        if step < total and step > first:
            minutes = (now - began) / (step - first) * (total - step) / 60
            left = f", about {minutes:.0f} min left"
        write(f"simcli: {label}: step {step}/{total}, loss {loss:.4f}, {rate:.1f} pairs/s{left}")

    return on_step


@contextmanager
def training_progress(total_hint: str) -> Iterator[Any]:
    """A rich progress bar on stderr on a terminal (steps, loss, pairs/s, ETA); elsewhere a plain line a
    minute."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield training_log_lines(total_hint, lambda line: print(line, file=sys.stderr, flush=True))
        return
    with Progress(
        TextColumn(total_hint), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} pairs/s"),
        TimeRemainingColumn(), console=console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(total_hint, total=None, loss=0.0, rate=0.0)

        def on_step(step: int, total: int, loss: float, rate: float) -> None:
            bar.update(task, completed=step, total=total, loss=loss, rate=rate)

        yield on_step
