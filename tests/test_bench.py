"""The benchmark (`python -m lab_utils bench`): its smoke run answers every question; bad options are refused."""

from __future__ import annotations

import json
import math

import pytest
from conftest import refused

from lab_utils.backstage import bench

# what each question reports (beyond the measuring processes' own numbers)
KEYS = {
    "evaluation": {"rows", "dialogues", "course_s", "summarize_s", "speedup"},
    "training_step": {"course", "dynamic", "speedup"},
    "lora_vs_full": {"full", "lora", "step_ratio", "memory_ratio"},
    "engines": {"prompts", "new_tokens", "pytorch", "ctranslate2", "ctranslate2-fp32", "ctranslate2_speedup"},
}


def numbers(obj):
    """Every number in a nested report (booleans aside)."""
    if isinstance(obj, (dict, list)):
        return [n for v in (obj.values() if isinstance(obj, dict) else obj) for n in numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def test_smoke_run_answers_every_question(data_dir, tmp_path, monkeypatch, capsys):
    # --smoke measures in this process (no fresh Python importing torch per measurement), a tiny model: a few seconds
    monkeypatch.setenv("LAB_DATA_DIR", str(data_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the registry of what the lab wrote
    out = tmp_path / "report.json"
    assert bench.main(["--smoke", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    for name, keys in KEYS.items():
        assert keys <= set(report[name]), name
        assert all(math.isfinite(n) and n > 0 for n in numbers(report[name])), (name, report[name])
    assert report["evaluation"]["rows"] == 6 and report["evaluation"]["dialogues"] == 2
    assert report["lora_vs_full"]["lora"]["trainable"] < report["lora_vs_full"]["full"]["trainable"]
    assert [g["question"] for g in report["goals"]] == ["1", "2", "3", "4"]  # verdicts, never asserted
    printed = capsys.readouterr().out
    assert "Machine: " in printed and printed.count("   goal: ") == 4
    assert bench.check_output(out, "the report") == out  # the lab's own report: a later run may replace it


@pytest.mark.parametrize("only", ["5", "1,x", ",", "a"])
def test_a_bad_only_is_refused(only, capsys):
    refused(bench.main(["--only", only]), capsys, "error: --only")
