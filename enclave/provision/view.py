"""A live progress view: one terminal line per host, redrawn in place as events stream in.
Silent when the stream is not a terminal (CI, pipes, --json): the run report says it all."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from enclave.provision.events import HostRun

REDRAW_EVERY = 0.1  # seconds


def line_for(run: HostRun, phase: str, width: int = 100) -> str:
    """One host's line: phase, counters, the task running now. Pure, for tests."""
    s = run.summary()
    done = len(run.tasks)
    state = "UNREACHABLE" if run.unreachable else phase
    counters = (
        f"{done:>3} tasks  ok {s['ok']:>3}  changed {s['changed']:>3}  failed {s['failed'] + s['ignored']:>2}"
    )
    text = f"{run.host:<12} {state:<10} {counters}  {run.current}"
    return text if len(text) <= width else text[: width - 1] + "…"


class ProgressView:
    def __init__(self, hosts: Sequence[str], stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.runs = {h: HostRun(h) for h in hosts}
        self.phase = {h: "waiting" for h in hosts}
        self._drawn_lines = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def set_phase(self, host: str, phase: str) -> None:
        with self._lock:
            self.phase[host] = phase
        self.redraw(force=True)

    def update(self, run: HostRun) -> None:
        with self._lock:
            self.runs[run.host] = run
        self.redraw()

    def redraw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < REDRAW_EVERY:
                return
            self._last = now
            lines = [line_for(self.runs[h], self.phase[h]) for h in self.runs]
            up = f"\x1b[{self._drawn_lines}F" if self._drawn_lines else ""
            self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
            self.stream.flush()
            self._drawn_lines = len(lines)

    def restart(self) -> None:
        """Draw the next lines below whatever was printed since the last redraw."""
        with self._lock:
            self._drawn_lines = 0

    def finish(self) -> None:
        self.redraw(force=True)
