"""Background commands as the Slicer module runs them: JSON messages in, and a cancel that stops the real work even
behind a launcher that passes no signal on (Slicer's ``PythonSlicer`` is such a launcher: CTKAppLauncher starts
the real interpreter as its own child)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from cascade_landmarks.slicer.background import BackgroundCommand
from cascade_landmarks.slicer.runs import FineTuneRun

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc (Linux)")

# Like CTKAppLauncher: runs the real interpreter as its child, waits for it, and forwards no signal.
LAUNCHER = """#!{python}
import subprocess, sys
sys.exit(subprocess.call([sys.executable, *sys.argv[1:]]))
"""


@pytest.fixture
def launcher(tmp_path) -> Path:
    path = tmp_path / "PythonSlicer"
    path.write_text(LAUNCHER.format(python=sys.executable))
    path.chmod(0o755)
    return path


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has stopped; only its exit status is left to collect


def _wait_for(condition, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _long_fine_tuning(launcher, synthetic_data, trained_model_path, tmp_path) -> FineTuneRun:
    return FineTuneRun(synthetic_data / "train", str(trained_model_path), output=tmp_path / "tuned.pt",
                       stage1_iterations=0, stage2_iterations=100_000, device="cpu", python=str(launcher))  # fmt: skip


def test_the_stand_in_launcher_leaves_its_child_running_when_it_alone_is_stopped(
    launcher, synthetic_data, trained_model_path, tmp_path
):
    """What goes wrong without stopping the whole tree: the launcher dies, the real work goes on."""
    run = _long_fine_tuning(launcher, synthetic_data, trained_model_path, tmp_path).start()
    assert _wait_for(lambda: _children(run.command.pid))
    (interpreter,) = _children(run.command.pid)
    os.kill(run.command.pid, signal.SIGTERM)  # what terminating the launcher's process did
    assert _wait_for(lambda: not run.running)
    try:
        assert _alive(interpreter)
    finally:
        os.kill(interpreter, signal.SIGKILL)


def test_cancel_stops_the_real_interpreter_behind_the_launcher(launcher, synthetic_data, trained_model_path, tmp_path):
    run = _long_fine_tuning(launcher, synthetic_data, trained_model_path, tmp_path).start()
    assert _wait_for(lambda: any(m["type"] == "progress" for m in run.command.poll()))  # training has started
    (interpreter,) = _children(run.command.pid)
    run.cancel()
    assert not run.running
    assert _wait_for(lambda: not _alive(interpreter), 15.0), "the training went on after Cancel"
    assert not (tmp_path / "tuned.pt").exists()
    assert not (tmp_path / "tuned.pt.checkpoint").exists()


def test_a_failure_comes_as_the_last_message_not_from_standard_error(tmp_path):
    command = BackgroundCommand(
        ["detect", str(tmp_path / "missing.pt"), str(tmp_path / "ct.nrrd"), "-o", str(tmp_path)]
    )
    command.start()
    assert command.wait(60) == 2
    messages = command.poll()
    assert messages[-1] == {"type": "error", "message": f"Model file {tmp_path / 'missing.pt'} does not exist."}
