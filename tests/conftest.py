"""Shared fixtures: a local S3 server, a tiny DialogSum-shaped dataset, a tiny tokenizer and T5 model."""

# Unit tests make their own small fixtures: they need neither ../shared nor a download.

from __future__ import annotations

import copy
import random

import pandas as pd
import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForSeq2SeqLM

from lab_utils.backstage.instructor import lora_config
from lab_utils.backstage.local_s3 import LocalS3
from lab_utils.backstage.standin import build_tiny_t5, train_tokenizer
from lab_utils.config import load_settings
from lab_utils.data import load_dialogsum_csv

TINY = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4)  # unit tests' T5 size

WORDS = (
    "meeting office email report project budget manager client holiday ticket train station doctor appointment "
    "dinner restaurant weekend party birthday present shop price discount order coffee tea book library exam "
    "teacher student homework computer phone call message weather rain sunny park walk dog cat house rent "
    "apartment kitchen garden car bus airport flight hotel room reservation morning evening tomorrow today"
).split()


def make_dialogue(rng: random.Random, turns: int = 4) -> tuple[str, str]:
    """A synthetic dialogue in DialogSum's format and a summary that mentions its topic words."""
    topic = rng.sample(WORDS, 3)
    lines = []
    for t in range(turns):
        speaker = f"#Person{t % 2 + 1}#"
        words = rng.sample(WORDS, 6) + topic[:2]
        rng.shuffle(words)
        lines.append(f"{speaker}: " + " ".join(words).capitalize() + ".")
    summary = f"#Person1# and #Person2# talk about the {topic[0]} and the {topic[1]}."
    return "\n".join(lines), summary


def write_dialogsum(folder, n_train: int = 60, n_val: int = 6, n_test_dialogues: int = 6, seed: int = 0):
    """Write train/validation/test CSVs in the Hub layout; test repeats each dialogue with 3 references."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def rows(prefix, n):
        return [
            dict(zip(("id", "dialogue", "summary", "topic"), (f"{prefix}_{i}", *make_dialogue(rng), "chat")))
            for i in range(n)
        ]

    pd.DataFrame(rows("train", n_train)).to_csv(folder / "train.csv", index=False)
    pd.DataFrame(rows("dev", n_val)).to_csv(folder / "validation.csv", index=False)
    test = []
    for i in range(n_test_dialogues):
        d, s = make_dialogue(rng)
        for j in range(1, 4):
            test.append({"id": f"test_{i}_{j}", "dialogue": d, "summary": f"{s} (reference {j})", "topic": "chat"})
    pd.DataFrame(test).to_csv(folder / "test.csv", index=False)
    return folder


@pytest.fixture(scope="session", autouse=True)
def lab_registry(tmp_path_factory):
    """What the lab records as written goes to a folder of the test session's, not the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return write_dialogsum(tmp_path_factory.mktemp("dialogsum"))


@pytest.fixture(scope="session")
def tokenizer(data_dir, tmp_path_factory):
    """A SentencePiece T5 tokenizer trained on the tiny dataset."""
    train = load_dialogsum_csv(data_dir)["train"]
    return train_tokenizer(
        list(train["dialogue"]) + list(train["summary"]), tmp_path_factory.mktemp("tok"), vocab_size=300
    )


@pytest.fixture
def tiny_model(tokenizer):
    """A fresh tiny random T5 v1.1 (untied lm_head) for the tiny tokenizer."""
    return build_tiny_t5(len(tokenizer), **TINY)


@pytest.fixture(scope="session")
def local_s3():
    """One in-process moto server for the whole session; the environment is restored afterwards."""
    with LocalS3() as server, pytest.MonkeyPatch.context() as mp:
        for name, value in server.env().items():
            mp.setenv(name, value)
        # Isolate from the user's own AWS setup and never ask the EC2 metadata service.
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield server


def refused(code, capsys, *words) -> str:
    """The command exited 2 with one message (no traceback) that holds `words`; returns it."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


# the settings unit tests generate with: the offline profile's, prompts kept up to 512 tokens, no environment
SETTINGS = load_settings("offline", environ={}, max_source_length=512)


@pytest.fixture(scope="session")
def standin_dir(tokenizer, tmp_path_factory):
    """A tiny stand-in "original model" folder (tokenizer + tiny T5), what `LAB_MODEL_ID` points at in tests."""
    folder = tmp_path_factory.mktemp("stand-in")
    tokenizer.save_pretrained(folder)
    model = build_tiny_t5(len(tokenizer), **TINY)
    with torch.no_grad():
        # a random head (the stand-in's starts as its input embedding, so untrained it repeats the padding it reads),
        # and the end-of-sequence logit 0 among random ones: untrained summaries are never empty
        model.lm_head.weight.normal_(0.0, model.config.d_model**-0.5)
        model.lm_head.weight[tokenizer.eos_token_id] = 0
    model.save_pretrained(folder)
    return folder


def trained_adapter(model, folder, seed: int, std: float = 0.3):
    """A LoRA adapter whose B matrices are random (as after training), saved to `folder`."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), lora_config(r=4))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=std)
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture
def served(standin_dir, tmp_path, monkeypatch):
    """The summarize command's environment on the tiny stand-in (the original model), with an adapter and a merged
    model (saved without a tokenizer: the command then reads the original model's)."""
    monkeypatch.setenv("LAB_PROFILE", "offline")
    monkeypatch.setenv("LAB_MODEL_ID", str(standin_dir))
    monkeypatch.setenv("LAB_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("LAB_MAX_NEW_TOKENS", "10")
    monkeypatch.setenv("LAB_NO_REPEAT_NGRAM_SIZE", "0")
    base = AutoModelForSeq2SeqLM.from_pretrained(standin_dir)
    adapter = trained_adapter(base, tmp_path / "adapter", seed=5)
    merged = PeftModel.from_pretrained(copy.deepcopy(base), adapter).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    return {"base": base, "adapter": adapter, "merged": tmp_path / "merged", "tmp": tmp_path}
