"""Progress bars for long loops, on standard error: count, percentage, metrics, speed and time left.

On a terminal the line is redrawn in place; in a log file a line is written every tenth of the way, and at least
once a minute (a long training's log should not fall silent for ten minutes). For a
program that runs the command in the background (the Slicer module), ``set_progress_format("json")`` makes every
bar print one JSON object per update on standard output instead:
``{"task": "stage 1", "done": 120, "total": 400, "fraction": 0.3, "metrics": {...}, "seconds_left": 63.0}``,
and :func:`warn` prints ``{"warning": "...", "case": "..."}``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

PROGRESS_FORMATS = ("bar", "json")
LOG_INTERVAL_S = 60.0
_format = "bar"


def set_progress_format(name: str) -> None:
    """``"bar"`` (human-readable, standard error) or ``"json"`` (one object per line, standard output)."""
    global _format
    if name not in PROGRESS_FORMATS:
        raise ValueError(f"Progress format must be one of {PROGRESS_FORMATS}, not {name!r}.")
    _format = name


def warn(message: str, *, case: str | None = None) -> None:
    """Tell the user something they should know about a result (of ``case``, if given): ``Warning: case: ...`` on
    standard error, or a ``{"warning": ..., "case": ...}`` line on standard output in the JSON format."""
    if _format == "json":
        print(json.dumps({"warning": message, "case": case}), flush=True)
    else:
        print(f"Warning: {'' if case is None else case + ': '}{message}", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressBar:
    """``bar = ProgressBar(400, "stage 1"); bar.update(n, loss=0.01)``; ``bar.close()`` at the end."""

    def __init__(self, total: int, description: str, *, start: int = 0, stream: TextIO | None = None, enabled=True):
        self.total = max(total, 1)
        self.description = description
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._start_count = start
        self._started = time.perf_counter()
        self._last_draw = 0.0
        self._last_tenth = -1
        self._interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.metrics: dict[str, str] = {}

    def update(self, count: int, **metrics: float | str) -> None:
        for name, value in metrics.items():
            self.metrics[name] = f"{value:.4g}" if isinstance(value, float) else str(value)
        if not self.enabled:
            return
        now = time.perf_counter()
        if _format == "json":
            if now - self._last_draw >= 0.2 or count >= self.total:
                self._last_draw = now
                print(json.dumps(self.record(count, now)), flush=True)
            return
        tenth = int(10 * count / self.total)
        if self._interactive and now - self._last_draw < 0.2 and count < self.total:
            return
        quiet_for = now - self._last_draw
        if not self._interactive and tenth == self._last_tenth and quiet_for < LOG_INTERVAL_S and count < self.total:
            return
        self._last_draw, self._last_tenth = now, tenth
        self.stream.write(
            ("\r" if self._interactive else "") + self.line(count, now) + ("" if self._interactive else "\n")
        )
        self.stream.flush()

    def _rate_and_left(self, count: int, now: float | None) -> tuple[float, float]:
        elapsed = (now or time.perf_counter()) - self._started
        rate = (count - self._start_count) / elapsed if elapsed > 0 else 0.0
        return rate, (self.total - count) / rate if rate > 0 else float("nan")

    def record(self, count: int, now: float | None = None) -> dict:
        """The JSON form of the progress at ``count``."""
        _, left = self._rate_and_left(count, now)
        return {
            "task": self.description,
            "done": count,
            "total": self.total,
            "fraction": count / self.total,
            "metrics": dict(self.metrics),
            "seconds_left": None if left != left else round(left, 1),
        }

    def line(self, count: int, now: float | None = None) -> str:
        rate, left = self._rate_and_left(count, now)
        parts = [f"{self.description} {count}/{self.total} {100 * count / self.total:3.0f}%"]
        parts += [f"{name} {value}" for name, value in self.metrics.items()]
        parts.append(f"{rate:.2f} it/s")
        parts.append(f"{_duration(left)} left" if left == left else "-- left")
        return " | ".join(parts)

    def close(self) -> None:
        if self.enabled and self._interactive and _format == "bar":
            self.stream.write("\n")
            self.stream.flush()
