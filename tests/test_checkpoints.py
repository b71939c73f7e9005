"""lab_utils.checkpoints: what the notebook pulls is checked before it is loaded (the transfers: tests/test_s3.py)."""

from __future__ import annotations

import json
import uuid

import pytest
from conftest import SETTINGS, TINY, trained_adapter
from transformers import AutoModelForSeq2SeqLM

from lab_utils import checkpoints
from lab_utils.backstage.standin import build_tiny_t5
from lab_utils.checkpoints import FULL_CHECKPOINT, PEFT_CHECKPOINT, TOPIC_CHECKPOINT, pull_adapter
from lab_utils.config import parse_s3_uri
from lab_utils.errors import LabError
from lab_utils.s3 import NotFoundOnS3, push


def test_parse_s3_uri():
    assert parse_s3_uri("s3://bucket/some/prefix/") == ("bucket", "some/prefix/")
    assert parse_s3_uri("s3://my-bucket/model.bin") == ("my-bucket", "model.bin")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    for uri in ["bucket/key", "https://bucket/key", "s3://", "s3:///key", "s3://Bad_Bucket/k", ""]:
        with pytest.raises(LabError, match="s3://"):
            parse_s3_uri(uri)


def test_sizes(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 3000)
    (tmp_path / "sub" / "b.bin").write_bytes(b"x" * 500)
    assert checkpoints.size_on_disk(tmp_path) == 3500 and checkpoints.size_on_disk(tmp_path / "a.bin") == 3000
    assert checkpoints.format_size(945_000_000) == "945.0 MB" and checkpoints.format_size(3500) == "3.5 kB"
    with pytest.raises(LabError, match="does not exist"):  # both imported from checkpoints, as the notebook does
        checkpoints.size_on_disk(tmp_path / "nope")


@pytest.fixture
def settings(local_s3, standin_dir, tmp_path):
    """The offline settings on the tiny stand-in, with a fresh bucket (created by the first push)."""
    return SETTINGS.replace(
        s3_uri=f"s3://lab-{uuid.uuid4().hex[:12]}/models/", model_id=str(standin_dir), work_dir=str(tmp_path / "work")
    )


def test_a_published_adapter_is_checked_against_the_original_model(settings, standin_dir, tokenizer, tmp_path):
    good = trained_adapter(AutoModelForSeq2SeqLM.from_pretrained(standin_dir), tmp_path / "good", seed=1)
    push(good, settings.s3(PEFT_CHECKPOINT + "/"))
    assert (pull_adapter(settings) / "adapter_config.json").is_file()

    # an adapter trained for a wider model: refused before peft loads it
    wider = build_tiny_t5(len(tokenizer), **{**TINY, "d_model": 48})
    push(trained_adapter(wider, tmp_path / "wider", seed=2), settings.s3(TOPIC_CHECKPOINT + "/"))
    with pytest.raises(LabError, match="different model"):
        pull_adapter(settings, TOPIC_CHECKPOINT)

    # a config that says rank 8 beside rank-4 weights
    config = json.loads((good / "adapter_config.json").read_text())
    (good / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    push(good, settings.s3(PEFT_CHECKPOINT + "/"))
    with pytest.raises(LabError, match="rank 4"):
        pull_adapter(settings)


def test_a_missing_adapter_or_results_file_is_none_when_allowed(settings, standin_dir, capsys):
    push(standin_dir / "config.json", settings.s3("unrelated.json"))  # the bucket exists, these do not
    assert pull_adapter(settings, TOPIC_CHECKPOINT, missing_ok=True) is None
    assert checkpoints.find_topic_results_file(settings, missing_ok=True) is None
    assert "not published" in capsys.readouterr().out
    with pytest.raises(NotFoundOnS3):
        pull_adapter(settings)


def test_a_damaged_full_checkpoint_is_refused(settings, standin_dir, tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_bytes((standin_dir / "config.json").read_bytes())
    (damaged / "model.safetensors").write_bytes((standin_dir / "model.safetensors").read_bytes()[:1000])  # truncated
    push(damaged, settings.s3(FULL_CHECKPOINT + "/"))
    with pytest.raises(LabError) as error:
        checkpoints.pull_full_checkpoint(settings)
    assert "publish it again" in error.value.fix
