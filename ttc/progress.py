"""Progress bars on stderr for long compiles (one step per pass) and runs (one step per device program).

A bar appears only on a terminal, only when asked for (the CLI asks unless `--quiet`; the Python API never
does), and only once the work has taken `delay` seconds (default 1 s), so short commands print nothing. The
bar is drawn by tqdm; a timer thread draws it at the deadline even while one long step (a pass, a program)
is still running, and it vanishes when the work ends, leaving the terminal as it was.

`TTC_PROGRESS_DELAY` (seconds) overrides the delay; the tests set it to 0 to see a bar on a fast model.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

DEFAULT_DELAY_S = 1.0
DELAY_ENV = "TTC_PROGRESS_DELAY"


def progress_delay() -> float:
    """The seconds a task runs before its bar appears (`TTC_PROGRESS_DELAY` if set and valid)."""
    text = os.environ.get(DELAY_ENV, "")
    try:
        return max(0.0, float(text)) if text else DEFAULT_DELAY_S
    except ValueError:
        return DEFAULT_DELAY_S


def wants_progress(stream: TextIO | None, quiet: bool = False) -> bool:
    """Bars go only to a terminal, and never with --quiet."""
    stream = stream or sys.stderr
    try:
        return not quiet and bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Bar:
    """A progress bar that draws itself (via tqdm) only after `delay` seconds; `advance` counts steps."""

    def __init__(self, total: int, label: str, unit: str, stream: TextIO, delay: float) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream
        self.count = 0
        self.drawn: Any = None  # the tqdm bar, once shown
        self.closed = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        if delay <= 0:
            self._show()
        else:
            self._timer = threading.Timer(delay, self._show)
            self._timer.daemon = True
            self._timer.start()

    def _show(self) -> None:
        from tqdm import tqdm

        with self._lock:
            if self.closed or self.drawn is not None:
                return
            self.drawn = tqdm(total=self.total, initial=self.count, desc=self.label, unit=self.unit,
                              file=self.stream, leave=False, dynamic_ncols=True, mininterval=0.1)

    def advance(self, steps: int = 1, label: str | None = None) -> None:
        """Count `steps` finished steps; `label` names what runs next."""
        with self._lock:
            self.count += steps
            if label is not None:
                self.label = label
            if self.drawn is not None:
                if label is not None:
                    self.drawn.set_description_str(label, refresh=False)
                self.drawn.update(steps)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            if self.drawn is not None:
                self.drawn.close()
        if self._timer is not None:  # outside the lock: a timer that already fired may be waiting for it
            self._timer.cancel()
            self._timer.join()


class NoBar:
    """What a bar is when none is wanted: counts nothing, draws nothing."""

    count = 0

    def advance(self, steps: int = 1, label: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def progress(total: int, label: str, unit: str, *, enabled: bool, stream: TextIO | None = None,
             delay: float | None = None) -> Iterator[Bar | NoBar]:
    """A bar for `total` steps on `stream` (default stderr) when `enabled` and the stream is a terminal."""
    stream = stream or sys.stderr
    if not enabled or total <= 0 or not wants_progress(stream):
        yield NoBar()
        return
    bar = Bar(total, label, unit, stream, progress_delay() if delay is None else delay)
    try:
        yield bar
    finally:
        bar.close()
