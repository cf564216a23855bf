"""Progress that suits both a terminal and a batch job's log file.

On a terminal (stderr is a TTY) progress is a tqdm bar. In a file (``sbatch`` output, submitit logs) a bar
would be thousands of carriage-return redraws, so instead a plain line is printed at most every
``ZMDIST_PROGRESS_INTERVAL`` seconds (default 30), e.g.::

    embed: 1200/5000 img (24%) 85.3 img/s, ETA 0:00:44

and one final line at the end with the count, the time taken and the mean rate. Rate and ETA are measured
from the start of this process: work done before a resume (``initial``) counts as done, not as speed.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, TextIO, TypeVar

from tqdm import tqdm

INTERVAL_ENV = "ZMDIST_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0
T = TypeVar("T")


def default_interval() -> float:
    """Seconds between progress lines in a file: ``$ZMDIST_PROGRESS_INTERVAL``, else 30."""
    raw = os.environ.get(INTERVAL_ENV, "")
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: expected a number of seconds") from None
    if value < 0:
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: must be >= 0")
    return value


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def _rate(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.3g}"


class Progress:
    """Counts work done (``update``) and shows it: a tqdm bar on a terminal, periodic lines in a file.

    ``enabled=False`` (``progress=false``, or not the main rank) shows nothing. ``clock`` is for tests."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, enabled: bool = True, initial: int = 0,
                 interval: float | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.n = self._initial = initial
        self._stream = stream if stream is not None else sys.stderr
        self._interval = default_interval() if interval is None else interval
        self._clock = clock
        self._start = self._last_line = clock()
        self._postfix: dict[str, Any] = {}
        self._closed = False
        self._bar = (tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self._stream, dynamic_ncols=True)
                     if enabled and self._stream.isatty() else None)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and self._clock() - self._last_line >= self._interval:
            self._print(self._line())

    def set_postfix(self, **values: Any) -> None:
        """Extra values shown after the rate (e.g. ``loss=0.412``); they replace the previous ones."""
        self._postfix = values
        if self._bar is not None:
            self._bar.set_postfix(values)

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        """Yield ``items``, counting one per item (as ``tqdm(items)`` does)."""
        for item in items:
            yield item
            self.update(1)

    def close(self) -> None:
        """End the bar, or print the final line in a file. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            self._print(self._final_line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _speed(self) -> tuple[float, float]:
        """(seconds since start, units per second over them, counting only this process's work)."""
        elapsed = self._clock() - self._start
        return elapsed, (self.n - self._initial) / elapsed if elapsed > 0 else 0.0

    def _count(self) -> str:
        if not self.total:
            return f"{self.n} {self.unit}"
        return f"{self.n}/{self.total} {self.unit} ({100 * self.n // self.total}%)"

    def _line(self) -> str:
        _, rate = self._speed()
        text = f"{self.desc}: {self._count()} {_rate(rate)} {self.unit}/s"
        if self.total:
            eta = _duration((self.total - self.n) / rate) if rate > 0 else "?"
            text += f", ETA {eta}"
        return text + self._postfix_text()

    def _final_line(self) -> str:
        elapsed, rate = self._speed()
        state = "done" if not self.total or self.n >= self.total else "stopped at"
        speed = f", {_rate(rate)} {self.unit}/s mean" if self.n > self._initial else f", no new {self.unit}"
        return f"{self.desc}: {state} {self._count()} in {_duration(elapsed)}{speed}{self._postfix_text()}"

    def _postfix_text(self) -> str:
        return "".join(f", {key}={value}" for key, value in self._postfix.items())

    def _print(self, line: str) -> None:
        self._last_line = self._clock()
        print(line, file=self._stream, flush=True)
