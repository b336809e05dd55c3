"""Progress lines when not on a terminal: first update, then at most one per interval, and the last one."""

import io

from cxrbench.engine.progress import LineProgress, progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_lines_at_a_bounded_rate_with_rate_and_eta():
    clock, out = Clock(), io.StringIO()
    bar = LineProgress(100, label="step", interval=30, items_per_step=16, stream=out, clock=clock)
    for _ in range(100):
        clock.t += 2.0  # 2 s per step
        bar.update(1, loss=1.23456)
    lines = out.getvalue().splitlines()
    # step 1 at t=2, then every 30 s (t=32, 62, ..., 182 -> steps 16, 31, ..., 91), and step 100
    assert len(lines) == 1 + 6 + 1
    assert lines[0] == "step 1/100 (1%) | loss 1.235 | 8.0 img/s | ETA 0:03:18"
    assert lines[1].startswith("step 16/100 (16%)")
    assert lines[-1] == "step 100/100 (100%) | loss 1.235 | 8.0 img/s | ETA 0:00:00"


def test_resumed_bar_counts_from_where_it_starts(capsys):
    clock, out = Clock(), io.StringIO()
    bar = LineProgress(10, initial=6, interval=1000, stream=out, clock=clock)
    clock.t = 4.0
    bar.update(1)  # 1 step in 4 s since the resume: 3 left -> 12 s
    assert out.getvalue().strip() == "step 7/10 (70%) | ETA 0:00:12"
    silent = progress(10, 0, False)
    silent.update(1)
    assert capsys.readouterr().err == ""
