"""A ``cascade-landmarks`` command in another process, followed without blocking and stopped whole.

The Slicer module runs detection and fine-tuning this way so that Slicer stays responsive: the command runs with
``--progress-format json`` and speaks in JSON messages, one per line on its standard output (progress, warnings,
then its result or its error; see :mod:`cascade_landmarks.progress`); :meth:`BackgroundCommand.poll`, called from
a timer, returns those that arrived. Standard error is kept only for what a process says before it can speak
JSON (an interpreter that fails to start).

Inside Slicer the interpreter is ``PythonSlicer``: a launcher (CTKAppLauncher) that starts the real interpreter
as its own child and does not pass signals on. So the command is started as the head of a process group of its
own (POSIX) or of a new process group without a console window (Windows), and cancelling ends the whole tree:
``killpg`` on POSIX, ``taskkill /T`` on Windows.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

from ..progress import read_message

STOP_WAIT_S = 10.0  # how long a cancelled command may take to stop before it is killed


class BackgroundCommand:
    """``cascade-landmarks ARGUMENTS...`` in a child process, with its messages read on a thread.

    Args:
        arguments: the command's arguments after ``cascade-landmarks`` (``["detect", MODEL, ...]``).
        python: the interpreter (``PythonSlicer`` in Slicer); the current one by default.
        environment: variables added to this process's environment for the child.
    """

    def __init__(self, arguments: Sequence[str], *, python: str | None = None, environment: dict | None = None):
        self.command = [python or sys.executable, "-m", "cascade_landmarks.cli", "--progress-format", "json",
                        *map(str, arguments)]  # fmt: skip
        self._environment = {**os.environ, "PYTHONIOENCODING": "utf-8", **(environment or {})}
        self._process: subprocess.Popen | None = None
        self._messages: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        self._threads: list[threading.Thread] = []
        self.cancelled = False

    def start(self) -> BackgroundCommand:
        if os.name == "nt":
            group = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
        else:
            group = {"start_new_session": True}  # its own process group, whose id is its pid
        self._process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",  # a message in another encoding is shown garbled, not lost with the reader
            env=self._environment,
            **group,
        )
        self._threads = [
            threading.Thread(target=self._read_messages, daemon=True),
            threading.Thread(target=self._read_errors, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _read_messages(self) -> None:
        for line in self._process.stdout:
            self._messages.put(read_message(line))

    def _read_errors(self) -> None:
        for line in self._process.stderr:
            self._stderr.append(line)

    def poll(self) -> list[dict]:
        """The messages that arrived since the last call (never blocks)."""
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
        """Wait for the command to end and its output to be read; its exit code."""
        returncode = self._process.wait(timeout)
        for thread in self._threads:  # the pipes close with the process (unless a child of its own holds them)
            thread.join(STOP_WAIT_S)
        return returncode

    def cancel(self) -> None:
        """Stop the command and every process it started (its outputs are written atomically, so nothing
        half-written is left)."""
        if self._process is None or self._process.poll() is not None:
            return
        self.cancelled = True
        if os.name == "nt":
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(self._process.pid)], capture_output=True, check=False)
            self._process.wait()
            return
        _signal_group(self._process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(STOP_WAIT_S)
        _signal_group(self._process.pid, signal.SIGKILL)  # whatever of the tree is left (a launcher's child)
        self._process.wait()

    def stderr_tail(self) -> str:
        """The last line the command wrote on standard error, or its exit code when it wrote none."""
        lines = [line.strip() for line in self._stderr if line.strip()]
        return lines[-1] if lines else f"The command stopped with exit code {self.returncode}."


def _signal_group(group: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # nothing of the group is left
        os.killpg(group, number)
