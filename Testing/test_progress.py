"""Progress reporting as a log file and a background reader see it."""

from __future__ import annotations

import io
import json

from cascade_landmarks import progress
from cascade_landmarks.progress import ProgressBar


def test_a_log_gets_a_line_every_tenth_and_after_a_quiet_minute(monkeypatch):
    clock = iter(range(0, 10_000, 1))  # one second per reading
    monkeypatch.setattr(progress.time, "perf_counter", lambda: float(next(clock)))
    stream = io.StringIO()
    bar = ProgressBar(10_000, "stage 1", stream=stream)
    for step in range(1, 151):  # 150 steps of a second each, all within the first tenth
        bar.update(step, loss=0.5)
    lines = stream.getvalue().splitlines()
    # The first update, then one after each quiet minute (at 61 s and 121 s): not one per step, not silence.
    assert [line.split()[2] for line in lines] == ["1/10000", "61/10000", "121/10000"]
    assert "loss 0.5" in lines[0]
    bar.update(10_000)
    assert stream.getvalue().splitlines()[-1].startswith("stage 1 10000/10000 100%")


def test_json_progress_is_one_object_per_line(capsys):
    progress.set_progress_format("json")
    try:
        bar = ProgressBar(4, "stage 2")
        bar.update(4, loss=0.25)
    finally:
        progress.set_progress_format("bar")
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["task"] == "stage 2"
    assert record["fraction"] == 1.0
    assert record["metrics"] == {"loss": "0.25"}
