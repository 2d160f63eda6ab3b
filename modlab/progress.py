"""Progress lines for long work that a log file and a piped console can read: every
`interval_s` seconds (and at the end of each stage), one line through the `modlab.progress`
logger with the stage, k of n, the elapsed time and the time left. The run's log file always
gets them; a console gets them only where it is not a terminal (a terminal shows the rich bar)."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable

log = logging.getLogger("modlab.progress")
INTERVAL_S = 30.0


class _TerminalFilter(logging.Filter):
    """Keeps progress lines off a console that is a terminal (the rich bar shows progress there);
    file handlers always get them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == log.name and sys.stdout.isatty())


def install_terminal_filter() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if not any(isinstance(f, _TerminalFilter) for f in handler.filters):
                handler.addFilter(_TerminalFilter())


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressLines:
    """`stage(name, total)` returns the callable that counts one unit of that stage done; a line
    goes out when `interval_s` has passed since the last one, and when the stage completes."""

    def __init__(self, interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.perf_counter):
        self.interval_s, self.clock = interval_s, clock
        install_terminal_filter()
        self.last = self.clock()

    def stage(self, name: str, total: int) -> Callable[[], None]:
        start, done = self.clock(), [0]

        def advance() -> None:
            done[0] += 1
            now = self.clock()
            if now - self.last < self.interval_s and done[0] != total:
                return
            self.last = now
            elapsed = now - start
            left = elapsed / done[0] * (total - done[0]) if total else math.nan
            log.info(
                "%s %d/%d  elapsed %s  left %s", name, done[0], total, format_duration(elapsed), format_duration(left)
            )

        return advance
