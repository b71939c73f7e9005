"""One device rule and `LAB_PRECISION`, checked on a CPU: `auto` is fp32 here (the course's figures unchanged), bf16
only on a CPU with bf16 instructions, fp16 only on a GPU; the stage identity records the precision."""

from __future__ import annotations

import pytest
import torch
from conftest import refused

from lab_utils import devices
from lab_utils.__main__ import main
from lab_utils.backstage.instructor import identities
from lab_utils.config import load_settings
from lab_utils.data import load_dialogsum_csv
from lab_utils.errors import LabError

SETTINGS = load_settings("offline", environ={})


def test_auto_is_fp32_on_a_cpu_and_gpu_precisions_are_refused(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert devices.best_device() == "cpu"
    assert devices.resolve_precision("auto", "cpu") == "fp32"
    for value in ("fp16", "fp8", "half"):
        with pytest.raises(LabError, match="LAB_PRECISION"):
            load_settings("offline", environ={"LAB_PRECISION": value})


def test_bf16_on_a_cpu_without_bf16_is_refused_with_one_message(monkeypatch, capsys):
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(LabError, match="without bf16 instructions"):
        devices.resolve_precision("bf16", "cpu")
    monkeypatch.setenv("LAB_PROFILE", "offline")
    monkeypatch.setenv("LAB_PRECISION", "bf16")
    assert refused(main(["settings"]), capsys).startswith("error: `LAB_PRECISION`=bf16")  # when the settings load


def test_bf16_on_a_cpu_with_bf16_trains_and_generates_in_bf16(monkeypatch):
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    assert devices.resolve_precision("bf16", "cpu") == "bf16"

    with devices.autocast("cpu", "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")


def test_the_stage_identity_records_the_precision(monkeypatch, data_dir):
    dataset = load_dialogsum_csv(data_dir)
    ids = identities(SETTINGS, "fingerprint", dataset, "fp32")
    assert identities(SETTINGS, "fingerprint", dataset, "bf16")["full"] != ids["full"]  # another precision: retrained


def test_save_steps_must_be_a_multiple_of_eval_steps_and_the_advice_is_one():
    with pytest.raises(LabError, match="`LAB_SAVE_STEPS`=100 must be a multiple of `LAB_EVAL_STEPS`=30") as error:
        load_settings("course", environ={"LAB_SAVE_STEPS": "100", "LAB_EVAL_STEPS": "30"})
    assert error.value.fix.endswith("e.g. 90")
