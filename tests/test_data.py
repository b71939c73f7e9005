"""Prompt, loading and validation of the CSVs, tokenization with -100 label padding."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from lab_utils.backstage.instructor import data_collator, tokenize
from lab_utils.config import load_settings
from lab_utils.data import build_prompt, first_dialogue_rows, load_dialogsum_csv, split_sizes
from lab_utils.errors import LabError


def test_prompt_is_the_course_instruction():
    assert build_prompt("#Person1#: Hi.") == "Summarize the following conversation.\n\n#Person1#: Hi.\n\nSummary: "


def test_load_csv_folder(data_dir):
    ds = load_dialogsum_csv(data_dir)
    assert split_sizes(ds) == {"train": 60, "validation": 6, "test": 18}
    assert ds["train"].column_names == ["id", "dialogue", "summary", "topic"]
    assert "\n#Person2#:" in ds["train"][0]["dialogue"]  # turns stay on their own lines
    rows = first_dialogue_rows(ds["test"], 2)  # every reference row of the first 2 dialogues
    assert len(rows) == 6 and len(set(rows["dialogue"])) == 2


def test_a_missing_folder_or_split_is_named(data_dir, tmp_path):
    with pytest.raises(LabError, match="LAB_DATA_DIR.*is not a folder"):
        load_dialogsum_csv(tmp_path / "nope")
    for split in ("train", "validation"):
        (tmp_path / f"{split}.csv").write_bytes((data_dir / f"{split}.csv").read_bytes())
    with pytest.raises(LabError, match="has no test.csv"):
        load_dialogsum_csv(tmp_path)


def blank(column: str, row: int):  # that cell holds whitespace only: nothing to read or to learn
    return lambda frame: frame.assign(**{column: frame[column].mask(frame.index == row, "   ")})


@pytest.mark.parametrize(
    ("split", "change", "message"),
    [
        ("validation", lambda frame: frame.drop(columns=["summary"]), r"validation.csv lacks column\(s\) summary"),
        ("train", blank("dialogue", 2), r"1 empty dialogue\(s\) \(CSV line 4\)"),
        ("train", blank("summary", 3), r"1 empty summary\(s\) \(CSV line 5\)"),
        ("train", lambda frame: frame.iloc[:0], "train.csv has a header but no rows"),
        ("test", lambda frame: frame.iloc[:0], "test.csv has a header but no rows"),
    ],
    ids=["missing-column", "empty-dialogue", "empty-summary", "header-only-train", "header-only-test"],
)
def test_a_bad_split_is_named_with_its_file_and_line(split, change, message, data_dir, tmp_path):
    for name in ("train", "validation", "test"):
        frame = pd.read_csv(data_dir / f"{name}.csv")
        (change(frame) if name == split else frame).to_csv(tmp_path / f"{name}.csv", index=False)
    with pytest.raises(LabError, match=message):
        load_dialogsum_csv(tmp_path)


def test_tokenize_keeps_model_columns_and_truncates(data_dir, tokenizer):
    settings = load_settings("offline", environ={}, max_source_length=40, max_target_length=7)
    tok = tokenize(load_dialogsum_csv(data_dir), tokenizer, settings)
    assert tok["train"].column_names == ["input_ids", "attention_mask", "labels"]
    ex = tok["train"][0]
    assert len(ex["input_ids"]) <= 40 and len(ex["labels"]) <= 7
    assert ex["input_ids"][-1] == tokenizer.eos_token_id  # truncation keeps the end-of-sequence token
    expected = tokenizer(build_prompt(load_dialogsum_csv(data_dir)["train"][0]["dialogue"]))["input_ids"][:39]
    assert ex["input_ids"][:39] == expected


def test_label_padding_is_minus_100_and_does_not_change_the_loss(data_dir, tokenizer, tiny_model):
    settings = load_settings("offline", environ={})
    tok = tokenize(load_dialogsum_csv(data_dir), tokenizer, settings)["train"]
    long = tok[0]
    short = dict(tok[1], labels=tok[1]["labels"][:4] + [tokenizer.eos_token_id])
    assert len(short["labels"]) < len(long["labels"])
    collator = data_collator(tokenizer, tiny_model)  # the notebook's cell 3.1
    batch = collator([short, long])
    n_pad = len(long["labels"]) - len(short["labels"])
    assert batch["labels"][0, -n_pad:].tolist() == [-100] * n_pad
    assert (batch["labels"][1] != -100).all()
    assert (batch["labels"] != tokenizer.pad_token_id).all()  # 0 (pad) never appears as a target
    tiny_model.eval()
    with torch.no_grad():
        alone = collator([short])
        loss_alone = tiny_model(**alone).loss
        # the short example's loss, computed inside the padded batch, ignores the padded positions
        logits = tiny_model(**batch).logits[0]
        loss_in_batch = torch.nn.functional.cross_entropy(logits, batch["labels"][0], ignore_index=-100)
    assert torch.allclose(loss_alone, loss_in_batch, atol=1e-5)
