"""Settings: profiles, environment overrides, and errors that name the setting to fix."""

from __future__ import annotations

import pytest

from lab_utils.config import load_settings
from lab_utils.errors import LabError


def test_profile_defaults():
    course = load_settings(environ={"LAB_PROFILE": "course"})
    assert course.model_id == "google/flan-t5-base" and course.s3_uri == "s3://dlai-generative-ai/models/"
    offline = load_settings(environ={"LAB_PROFILE": "offline"})
    assert offline.offline and offline.path(offline.data_dir).name == "dialogsum"


def test_environment_overrides_are_typed():
    s = load_settings(
        environ={
            "LAB_PROFILE": "offline",
            "LAB_SEED": "7",
            "LAB_LORA_LR": "0.5",
            "LAB_S3_ANONYMOUS": "yes",
            "LAB_S3_URI": "s3://b/p/",
        }
    )
    assert (s.seed, s.lora_lr, s.s3_anonymous, s.s3("x.csv")) == (7, 0.5, True, "s3://b/p/x.csv")


def test_unknown_profile_names_the_variable():
    with pytest.raises(LabError, match="unknown profile `LAB_PROFILE`='cloud'"):
        load_settings(environ={"LAB_PROFILE": "cloud"})


def test_unknown_setting_is_rejected():
    with pytest.raises(LabError, match="unknown setting `LAB_STEPS`"):
        load_settings(environ={"LAB_PROFILE": "offline", "LAB_STEPS": "3"})


def test_bad_value_names_the_variable():
    with pytest.raises(LabError, match="`LAB_SEED`='abc' is not a valid int"):
        load_settings(environ={"LAB_PROFILE": "offline", "LAB_SEED": "abc"})


def test_auto_profile_falls_back_to_offline_without_the_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = load_settings(environ={"LAB_PROFILE": ""})
    assert s.profile == "offline" and "cannot be reached" in s.profile_reason
