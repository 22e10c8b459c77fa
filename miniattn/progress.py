"""Progress displays: the training loop's one-line display and a sweep's per-run lines.

Both report elapsed time and an ETA from a smoothed rate (:class:`RateEstimator`: an exponential
moving average of seconds per unit, so one slow or fast step does not swing the estimate).
"""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Callable, NamedTuple

if TYPE_CHECKING:
    from miniattn.history import History

__all__ = ["ProgressEvent", "StderrProgress", "progress_callback", "SweepProgress", "RateEstimator",
           "format_seconds"]


def format_seconds(s: float) -> str:
    """``42s``, ``3m07s`` or ``1h05m``."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


class RateEstimator:
    """Seconds per unit of work, smoothed: ``r ← (1 − w) r + w · (Δt / Δn)`` with weight ``w``."""

    def __init__(self, weight: float = 0.1):
        self.weight = float(weight)
        self.rate: float | None = None
        self._last: tuple[float, float] | None = None

    def update(self, done: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._last is not None and done > self._last[0]:
            sample = (now - self._last[1]) / (done - self._last[0])
            self.rate = sample if self.rate is None else (1 - self.weight) * self.rate + self.weight * sample
        self._last = (done, now)

    def eta(self, remaining: float) -> float | None:
        return None if self.rate is None else self.rate * max(0.0, remaining)


class ProgressEvent(NamedTuple):
    """What a ``progress`` callable receives after every step (and after the initial evaluation).

    ``step`` counts optimiser steps (0 = initial evaluation); ``train_loss`` is the loss of this
    step's minibatch (None at step 0); ``record`` is the evaluation record made at this step, if
    any; ``elapsed`` and ``eta`` are wall-clock seconds (this process only; never stored).
    """

    step: int
    steps: int
    train_loss: float | None
    record: dict | None
    history: History
    elapsed: float
    eta: float | None


class StderrProgress:
    """A one-line progress display on stderr (step, loss, accuracy, ETA), redrawn at most 10×/s."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.last_draw = -math.inf
        self.accuracy = None
        self.first_step = None   # the step this process started from (> 0 after a resume)

    def __call__(self, event: ProgressEvent) -> None:
        if self.first_step is None:
            self.first_step = event.step
        if event.record is not None:
            self.accuracy = event.record.get("token_accuracy")
        now = time.monotonic()
        final = event.step == event.steps
        if not final and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        loss = "   -    " if event.train_loss is None else f"{event.train_loss:8.4f}"
        acc = "  -  " if self.accuracy is None else f"{self.accuracy:5.3f}"
        eta = "?" if event.eta is None else format_seconds(event.eta)
        width = len(str(event.steps))
        # Steps made by this process only: a resumed run's earlier steps took no time here.
        done = event.step - self.first_step
        rate = f"{done / event.elapsed:6.1f} steps/s  " if event.elapsed > 0 else ""
        self.stream.write(f"\rstep {event.step:{width}d}/{event.steps}  loss {loss}  acc {acc}  "
                          f"{rate}elapsed {format_seconds(event.elapsed)}  ETA {eta} ")
        if final:
            self.stream.write("\n")
        self.stream.flush()


def progress_callback(progress) -> Callable[[ProgressEvent], None] | None:
    """The display for ``train(progress=...)``: None = on a terminal only, True, False, or a callable."""
    if progress is None:
        # Automatic: a display only for a human watching a terminal, never in logs or tests.
        return StderrProgress() if sys.stderr is not None and sys.stderr.isatty() else None
    if progress is True:
        return StderrProgress()
    if progress is False:
        return None
    if callable(progress):
        return progress
    raise TypeError(f"progress must be None, a bool or a callable, got {type(progress).__name__}")


class SweepProgress:
    """Progress lines on stderr: ``[e4] run 7/40 done (name) 0.8s | elapsed 12s, ETA 1m03s``.

    The ETA is the mean cost of the finished runs times the runs left, divided by the number of
    workers running them in parallel.
    """

    def __init__(self, experiment: str, total: int, stream=None, workers: int = 1):
        self.experiment, self.total, self.done = experiment, total, 0
        self.workers = max(1, int(workers))
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.perf_counter()
        self.cost = 0.0

    def message(self, text: str) -> None:
        print(f"[{self.experiment}] {text}", file=self.stream, flush=True)

    def step(self, name: str, runtime_s: float) -> None:
        self.done += 1
        self.cost += float(runtime_s)
        elapsed = time.perf_counter() - self.t0
        eta = self.cost / self.done * (self.total - self.done) / self.workers
        self.message(f"run {self.done}/{self.total} done ({name}) {runtime_s:.1f}s | "
                     f"elapsed {format_seconds(elapsed)}, ETA {format_seconds(eta)}")
