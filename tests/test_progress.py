"""An instructor stage says its plan, then its measured seconds per step and when it ends; in a log, a line every
tenth of the stage."""

from __future__ import annotations

import re
from types import SimpleNamespace

from lab_utils.backstage.progress import StageProgress


def run_steps(progress: StageProgress, steps: int, first: int = 0) -> None:
    args = SimpleNamespace(learning_rate=1e-3, save_steps=5, eval_steps=5)
    state = SimpleNamespace(max_steps=steps, global_step=first)
    progress.on_train_begin(args, state, None)
    for step in range(first + 1, steps + 1):
        state.global_step = step
        progress.on_step_end(args, state, None)


def test_the_plan_then_seconds_per_step_and_the_end(capsys):
    run_steps(StageProgress("LoRA adapter", 8, "cpu", "fp32", terminal=True), 20)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Training the LoRA adapter: 20 steps (from step 0), batch 8, learning rate 0.001, cpu")
    expected = r"  LoRA adapter: step 3/20, [\d.]+ s/step, about \d+ min left \(ends ~\d\d:\d\d\)"
    assert len(lines) == 2 and re.fullmatch(expected, lines[1])


def test_a_log_gets_a_line_every_tenth_and_a_resumed_stage_says_where_it_starts(capsys):
    run_steps(StageProgress("full", 8, "cpu", "fp32", terminal=False), 100, first=40)
    lines = capsys.readouterr().out.splitlines()
    assert "100 steps (from step 40)" in lines[0]
    steps = [int(m.group(1)) for m in map(re.compile(r".*step (\d+)/100").match, lines[1:]) if m]
    assert steps == [43, 50, 60, 70, 80, 90, 100]
