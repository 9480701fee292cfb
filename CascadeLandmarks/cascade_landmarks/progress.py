"""How long work tells how far it has got, and what the user should know.

Two interfaces, one argument order each:

- a :data:`ProgressCallback` ``(fraction, status)``, for one short job (a detection; the Slicer module's runs);
- a :class:`Reporter`, passed to long loops (training, evaluation, the ``detect`` command over many volumes):
  ``task = reporter.task("stage 1", total)``, then ``task.update(count, loss=...)`` and ``task.close()``; and
  ``reporter.warn(message, case=...)``.

Reporters: :class:`TerminalReporter` draws bars for a person on standard error (redrawn in place on a terminal;
in a log file a line every tenth of the way, and at least once a minute, so a long training's log does not fall
silent); :class:`JsonReporter` writes messages for another program, one JSON object per line on standard output
(the Slicer module's background runs read them; :func:`read_message` reads one back). Either may be told to show
no progress, only warnings. :class:`Reporter` itself reports nothing at all.

JSON messages, each with a ``type``:
``{"type": "progress", "task": "stage 1", "done": 120, "total": 400, "fraction": 0.3, "metrics": {...},
"seconds_left": 63.0}``, ``{"type": "warning", "message": "...", "case": "..."}``, for ``detect`` one
``{"type": "result", "case": ..., "detection": ...}`` or ``{"type": "failure", "case": ..., "reason": ...}`` per
case, and what a command sends once it is done: ``{"type": "result", ...}`` or, when it failed,
``{"type": "error", "message": "..."}``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TextIO

ProgressCallback = Callable[[float, str], None]
LOG_INTERVAL_S = 60.0  # a log gets a line at least this often
JSON_INTERVAL_S = 0.2  # another program gets progress at most this often
REDRAW_INTERVAL_S = 0.2  # a terminal's bar is redrawn at most this often


class Task:
    """One long loop of ``total`` steps, reported through its reporter; made by :meth:`Reporter.task`."""

    def __init__(self, reporter: Reporter, description: str, total: int, start: int = 0):
        self.reporter = reporter
        self.description = description
        self.total = max(total, 1)
        self.count = start
        self.metrics: dict[str, str] = {}
        self._start_count = start
        self._started = time.perf_counter()
        self.last_shown = float("-inf")
        self.last_tenth = -1

    def update(self, count: int, **metrics: float | str) -> None:
        """``count`` steps are done; ``metrics`` (a loss, a case) are shown beside the count."""
        self.count = count
        for name, value in metrics.items():
            self.metrics[name] = f"{value:.4g}" if isinstance(value, float) else str(value)
        self.reporter.show(self, time.perf_counter())

    def close(self) -> None:
        self.reporter.finish(self)

    def rate(self, now: float) -> float:
        """Steps per second since the task started (or resumed)."""
        elapsed = now - self._started
        return (self.count - self._start_count) / elapsed if elapsed > 0 else 0.0

    def seconds_left(self, now: float) -> float | None:
        rate = self.rate(now)
        return (self.total - self.count) / rate if rate > 0 else None

    def message(self, now: float) -> dict:
        """The progress as a JSON message."""
        left = self.seconds_left(now)
        return {
            "type": "progress",
            "task": self.description,
            "done": self.count,
            "total": self.total,
            "fraction": self.count / self.total,
            "metrics": dict(self.metrics),
            "seconds_left": None if left is None else round(left, 1),
        }

    def line(self, now: float) -> str:
        """The progress as one line of text."""
        rate, left = self.rate(now), self.seconds_left(now)
        parts = [f"{self.description} {self.count}/{self.total} {100 * self.count / self.total:3.0f}%"]
        parts += [f"{name} {value}" for name, value in self.metrics.items()]
        parts.append(f"{rate:.2f} it/s")
        parts.append("-- left" if left is None else f"{_duration(left)} left")
        return " | ".join(parts)


class Reporter:
    """Reports nothing: the base of the reporters, and the one to pass for silence."""

    def task(self, description: str, total: int, *, start: int = 0) -> Task:
        """A long loop of ``total`` steps (``start`` of them done already, when resuming)."""
        return Task(self, description, total, start)

    def show(self, task: Task, now: float) -> None:
        """Called by ``task`` at each update."""

    def finish(self, task: Task) -> None:
        """Called when ``task`` closes."""

    def warn(self, message: str, *, case: str | None = None) -> None:
        """Something the user should know about a result (of ``case``, if given)."""

    def send(self, message: dict) -> None:
        """A message for a program reading this one (a result); nothing for a person, who reads the summary."""


class TerminalReporter(Reporter):
    """Progress bars (unless ``progress`` is False) and warnings for a person, on ``stream`` (standard error)."""

    def __init__(self, stream: TextIO | None = None, *, progress: bool = True):
        self.stream = stream or sys.stderr
        self.progress = progress
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()

    def show(self, task: Task, now: float) -> None:
        if not self.progress:
            return
        done = task.count >= task.total
        if self.interactive:
            if now - task.last_shown < REDRAW_INTERVAL_S and not done:
                return
            self.stream.write("\r" + task.line(now))
        else:
            tenth = int(10 * task.count / task.total)
            if tenth == task.last_tenth and now - task.last_shown < LOG_INTERVAL_S and not done:
                return
            task.last_tenth = tenth
            self.stream.write(task.line(now) + "\n")
        task.last_shown = now
        self.stream.flush()

    def finish(self, task: Task) -> None:
        if self.interactive and self.progress:
            self.stream.write("\n")
            self.stream.flush()

    def warn(self, message: str, *, case: str | None = None) -> None:
        print(f"Warning: {'' if case is None else case + ': '}{message}", file=self.stream, flush=True)


class JsonReporter(Reporter):
    """Messages for another program: one JSON object per line on ``stream`` (standard output); progress messages
    unless ``progress`` is False."""

    def __init__(self, stream: TextIO | None = None, *, progress: bool = True):
        self.stream = stream or sys.stdout
        self.progress = progress
        self.results = 0  # how many results were sent

    def send(self, message: dict) -> None:
        """Write one message (a dictionary with a ``type``) as a line."""
        self.results += message.get("type") == "result"
        self.stream.write(json.dumps(message) + "\n")
        self.stream.flush()

    def show(self, task: Task, now: float) -> None:
        if self.progress and (now - task.last_shown >= JSON_INTERVAL_S or task.count >= task.total):
            task.last_shown = now
            self.send(task.message(now))

    def warn(self, message: str, *, case: str | None = None) -> None:
        self.send({"type": "warning", "message": message, "case": case})


def as_reporter(progress: bool | Reporter) -> Reporter:
    """``True``: bars and warnings on standard error; ``False``: warnings only; a :class:`Reporter`: itself."""
    if isinstance(progress, Reporter):
        return progress
    return TerminalReporter(progress=bool(progress))


def read_message(line: str) -> dict:
    """One line from a :class:`JsonReporter` as its message; any other line as ``{"type": "text", ...}``."""
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        message = None
    if not isinstance(message, dict) or "type" not in message:
        return {"type": "text", "text": line.rstrip("\n")}
    return message


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
