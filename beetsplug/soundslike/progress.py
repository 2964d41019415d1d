"""A progress line with rate and ETA for long commands.

On a terminal it redraws one line on stderr; elsewhere (a cron job, a log
file) it writes a plain line at most every ``interval`` seconds, so logs
stay readable. Output goes to stderr so stdout stays clean for playlists
and JSON.
"""

from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Counts work done out of ``total`` and shows rate and time left."""

    def __init__(self, total: int, label: str = "", stream=None, interval: float = 10.0,
                 unit: str = "tracks"):
        self.total = max(0, total)
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.interval = interval
        self.started = time.monotonic()
        self._last_plain = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0

    def line(self, done: int) -> str:
        elapsed = max(1e-6, time.monotonic() - self.started)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else 0.0
        width = 24
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        per_minute = rate * 60
        return (
            f"{self.label} [{bar}] {done}/{self.total} "
            f"{per_minute:.1f} {self.unit}/min, elapsed {format_duration(elapsed)}, "
            f"ETA {format_duration(left)}"
        )

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if self._tty:
            self.stream.write("\r" + self.line(done) + "\x1b[K")
            self.stream.flush()
        elif now - self._last_plain >= self.interval or done == self.total:
            self._last_plain = now
            self.stream.write(self.line(done) + "\n")
            self.stream.flush()

    def finish(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
