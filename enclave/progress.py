"""Progress for long work, on stderr.

On a terminal: one line redrawn at most 5 times a second (bytes, rate, ETA), each redraw
clearing what the previous one left. Otherwise (piped, logged): a plain line every
`PLAIN_INTERVAL` seconds, so a long run in a log is never silent for minutes, and nothing for
work that ends sooner. The ETA is shown only once a second of work gives a rate worth
projecting (`ETA --` before). A stream that cannot be written (a closed pipe) turns progress
off; it never fails the work it reports on.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

PLAIN_INTERVAL = 10.0  # seconds between plain lines when stderr is not a terminal
REDRAW_INTERVAL = 0.2
MIN_RATE_SECONDS = 1.0  # no ETA before this much work has been timed
CLEAR_TO_END = "\x1b[K"


def _human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _duration(seconds: float) -> str:
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Thread-safe byte counter; call it with each count of bytes done."""

    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (OSError, ValueError):
            self.tty = False
        self.enabled = True
        self.done = 0
        self._clock = clock
        self._interval = REDRAW_INTERVAL if self.tty else (PLAIN_INTERVAL if interval is None else interval)
        self._start = clock()
        self._drawn = self._start
        self._lines = 0  # lines (or redraws) written
        self._lock = threading.Lock()

    def __call__(self, count: int) -> None:
        with self._lock:
            self.done += count
            now = self._clock()
            due = now - self._drawn >= self._interval
            if self.enabled and (due or (self.tty and self.done >= self.total)):
                self._drawn = now
                self._write(self.line(now))

    def line(self, now: float) -> str:
        """The progress text as of `now` (no line ending)."""
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.done >= self.total:
            eta = "done"
        elif elapsed >= MIN_RATE_SECONDS and rate > 0:
            eta = f"ETA {_duration((self.total - self.done) / rate)}"
        else:
            eta = "ETA --"
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{self.label}: {_human(self.done)} / {_human(self.total)}{share}  {_human(rate)}/s  {eta}"

    def _write(self, text: str) -> None:
        try:
            if self.tty:
                self.stream.write(f"\r{text}{CLEAR_TO_END}")
            else:
                self.stream.write(f"{text}\n")
            self.stream.flush()
            self._lines += 1
        except (OSError, ValueError):  # a closed pipe or stream: stop reporting, keep working
            self.enabled = False

    def finish(self) -> None:
        """End the terminal line; a plain report that printed anything gets its final line."""
        with self._lock:
            if not self.enabled or not self._lines:
                return
            if self.tty:
                self._write(self.line(self._clock()))
                self._write_end()
            else:
                self._write(self.line(self._clock()))

    def _write_end(self) -> None:
        try:
            self.stream.write("\n")
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False
