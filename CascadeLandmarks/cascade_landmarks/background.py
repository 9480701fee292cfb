"""Running a ``cascade-landmarks`` command in another process and following it without blocking.

The Slicer module uses this so that Slicer stays responsive during detection and fine-tuning: it starts the
command with ``--progress-format json``, calls :meth:`BackgroundCommand.poll` from a timer, and may cancel it.
Inside Slicer the interpreter is ``PythonSlicer``; elsewhere the current Python.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence


class BackgroundCommand:
    """``cascade-landmarks ARGUMENTS...`` in a child process, with its progress read on a thread."""

    def __init__(self, arguments: Sequence[str], *, python: str | None = None, environment: dict | None = None):
        self.command = [python or sys.executable, "-m", "cascade_landmarks.cli", "--progress-format", "json",
                        *map(str, arguments)]  # fmt: skip
        self._environment = {**os.environ, **(environment or {})}
        self._process: subprocess.Popen | None = None
        self._messages: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        self._threads: list[threading.Thread] = []
        self.cancelled = False

    def start(self) -> BackgroundCommand:
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self._environment
        )
        self._threads = [
            threading.Thread(target=self._read_progress, daemon=True),
            threading.Thread(target=self._read_errors, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def _read_progress(self) -> None:
        for line in self._process.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                message = {"text": line.rstrip()}
            self._messages.put(message)

    def _read_errors(self) -> None:
        for line in self._process.stderr:
            self._stderr.append(line)

    def poll(self) -> list[dict]:
        """Progress messages that arrived since the last call (never blocks)."""
        messages = []
        while True:
            try:
                messages.append(self._messages.get_nowait())
            except queue.Empty:
                return messages

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def wait(self, timeout: float | None = None) -> int:
        returncode = self._process.wait(timeout)
        for thread in self._threads:
            thread.join()
        return returncode

    def cancel(self) -> None:
        """Stop the command (its outputs are written atomically, so nothing half-written is left)."""
        if self.running:
            self.cancelled = True
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def error_message(self) -> str:
        """What the command said went wrong: the CLI's own message (``cascade-landmarks COMMAND: ...``, possibly
        several lines), else the last line it wrote on standard error."""
        lines = [line.rstrip() for line in self._stderr if line.strip()]
        if not lines:
            return f"The command stopped with exit code {self.returncode}."
        starts = [n for n, line in enumerate(lines) if line.startswith("cascade-landmarks ") and ": " in line]
        if not starts:
            return lines[-1].strip()
        message = "\n".join(lines[starts[-1] :])
        return message.split(": ", 1)[1]
