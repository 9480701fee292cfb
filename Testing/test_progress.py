"""Progress reporting as a person's log file and a program reading the messages see it."""

from __future__ import annotations

import io

from cascade_landmarks import progress
from cascade_landmarks.progress import JsonReporter, Reporter, TerminalReporter, as_reporter, read_message


def test_a_log_gets_a_line_every_tenth_and_after_a_quiet_minute(monkeypatch):
    clock = iter(range(0, 10_000, 1))  # one second per reading
    monkeypatch.setattr(progress.time, "perf_counter", lambda: float(next(clock)))
    stream = io.StringIO()
    task = TerminalReporter(stream).task("stage 1", 10_000)
    for step in range(1, 151):  # 150 steps of a second each, all within the first tenth
        task.update(step, loss=0.5)
    lines = stream.getvalue().splitlines()
    # The first update, then one after each quiet minute (at 61 s and 121 s): not one per step, not silence.
    assert [line.split()[2] for line in lines] == ["1/10000", "61/10000", "121/10000"]
    assert "loss 0.5" in lines[0]
    task.update(10_000)
    assert stream.getvalue().splitlines()[-1].startswith("stage 1 10000/10000 100%")


def test_a_program_gets_one_json_message_per_line_and_reads_them_back():
    stream = io.StringIO()
    reporter = JsonReporter(stream)
    task = reporter.task("stage 2", 4)
    task.update(4, loss=0.25)
    reporter.warn("check every point", case="case7")
    reporter.send({"type": "result", "model": "m.pt"})
    first, warning, result = (read_message(line) for line in stream.getvalue().splitlines())
    assert (first["type"], first["task"], first["fraction"], first["metrics"]) == (
        "progress",
        "stage 2",
        1.0,
        {"loss": "0.25"},
    )
    assert warning == {"type": "warning", "message": "check every point", "case": "case7"}
    assert result == {"type": "result", "model": "m.pt"}
    # What is not a message (a library printing on standard output) is kept as text, not taken for one.
    assert read_message("Loading weights...\n") == {"type": "text", "text": "Loading weights..."}
    assert read_message('{"no": "type"}')["type"] == "text"


def test_progress_can_be_turned_off_but_warnings_still_reach_the_user(capsys):
    quiet = as_reporter(False)
    task = quiet.task("stage 1", 2)
    task.update(2)
    task.close()
    quiet.warn("the field of view is unusual", case="case7")
    assert capsys.readouterr().err == "Warning: case7: the field of view is unusual\n"  # no progress line
    silent = Reporter()  # for the processes of a distributed run other than the first
    silent.task("stage 1", 2).update(2)
    silent.warn("unseen")
    assert capsys.readouterr() == ("", "")
    mine = JsonReporter(io.StringIO())
    assert as_reporter(mine) is mine
    assert as_reporter(True).progress
