"""Serving: a merged adapter summarizes like the unmerged one, adapters swap on one base, older formats load, and the
`summarize` command reads dialogues from files, CSVs and standard input."""

from __future__ import annotations

import copy
import io
import json

import pandas as pd
import pytest
import torch
from conftest import SETTINGS, refused, trained_adapter
from course_world import write_adapter_peft_0_3, write_full_checkpoint_4_27
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM

from lab_utils.__main__ import main
from lab_utils.backstage.standin import build_tiny_t5
from lab_utils.config import load_settings
from lab_utils.generation import summarize
from lab_utils.models import check_adapter_dir, check_model_dir, count_parameters, fingerprint
from lab_utils.serving import serving_table

DIALOGUES = [
    "#Person1#: Where is the station?\n#Person2#: Next to the park, five minutes from here.",
    "#Person1#: Did you finish the report?\n#Person2#: Not yet, the budget numbers are missing.",
    "#Person1#: Shall we have dinner at the new restaurant?\n#Person2#: Yes, I will book a table for eight.",
]
GEN = {"max_new_tokens": 10, "num_beams": 1, "do_sample": False}


def summaries(model, tokenizer) -> list[str]:
    return summarize(model, tokenizer, DIALOGUES, SETTINGS, GEN, progress=False)


def with_adapter(model, folder, tokenizer) -> list[str]:
    """The summaries of DIALOGUES by a copy of `model` with the adapter in `folder`, loaded frozen."""
    return summaries(PeftModel.from_pretrained(copy.deepcopy(model), folder, is_trainable=False), tokenizer)


def test_merged_adapter_summarizes_exactly_like_the_unmerged_one(tiny_model, tokenizer, tmp_path):
    before = fingerprint(tiny_model)
    adapter = trained_adapter(tiny_model, tmp_path / "adapter", seed=0)
    unmerged = PeftModel.from_pretrained(copy.deepcopy(tiny_model), adapter, is_trainable=False)
    merged = PeftModel.from_pretrained(copy.deepcopy(tiny_model), adapter).merge_and_unload()
    assert not any("lora" in name for name, _ in merged.named_modules())
    assert count_parameters(merged)[1] == count_parameters(tiny_model)[1]
    ids = tokenizer(DIALOGUES, return_tensors="pt", padding=True)
    with torch.no_grad():
        a = unmerged(**ids, decoder_input_ids=ids.input_ids[:, :5]).logits
        b = merged(**ids, decoder_input_ids=ids.input_ids[:, :5]).logits
    # the only tolerance: float32 rounding (W + s*BA summed once, vs Wx + s*B(Ax) at every step): measured 1.8e-5
    assert (a - b).abs().max() < 1e-4
    assert not torch.equal(a, tiny_model(**ids, decoder_input_ids=ids.input_ids[:, :5]).logits)  # the adapter acts
    want = summaries(unmerged, tokenizer)
    assert summaries(merged, tokenizer) == want
    merged.save_pretrained(tmp_path / "merged")  # a plain transformers checkpoint
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged")
    assert summaries(reloaded, tokenizer) == want
    assert fingerprint(tiny_model) == before


def test_swapped_adapters_give_what_each_gives_alone(tiny_model, tokenizer, tmp_path):
    first = trained_adapter(tiny_model, tmp_path / "first", seed=1)
    second = trained_adapter(tiny_model, tmp_path / "second", seed=2)
    alone = {"first": with_adapter(tiny_model, first, tokenizer), "second": with_adapter(tiny_model, second, tokenizer)}
    assert alone["first"] != alone["second"]  # two different adapters, so the swap is observable
    served = PeftModel.from_pretrained(copy.deepcopy(tiny_model), first, adapter_name="first", is_trainable=False)
    served.load_adapter(second, adapter_name="second", is_trainable=False)
    assert count_parameters(served)[0] == 0
    for name in ("second", "first", "second"):  # back and forth
        served.set_adapter(name)
        assert summaries(served, tokenizer) == alone[name], name


def test_course_format_checkpoint_and_adapter_load_like_today_s(tiny_model, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path / "today")
    old_full = write_full_checkpoint_4_27(tmp_path / "today", tmp_path / "old-full")
    assert json.loads((old_full / "config.json").read_text())["transformers_version"] == "4.27.2"
    check_model_dir(old_full)
    full = AutoModelForSeq2SeqLM.from_pretrained(old_full)
    assert summaries(full, tokenizer) == summaries(tiny_model, tokenizer)
    adapter = trained_adapter(tiny_model, tmp_path / "adapter", seed=3)
    old_adapter = write_adapter_peft_0_3(adapter, tmp_path / "old-adapter")
    assert sorted(p.name for p in old_adapter.iterdir()) == ["adapter_config.json", "adapter_model.bin"]
    check_adapter_dir(old_adapter, tiny_model, "tiny")
    assert with_adapter(tiny_model, old_adapter, tokenizer) == with_adapter(tiny_model, adapter, tokenizer)


@pytest.mark.parametrize(
    "extra",
    [{"layer_replication": None}, {"enable_lora": [True, False]}, {"a_field_from_the_future": 1, "use_dora": False}],
)
def test_adapter_configs_with_fields_of_other_peft_versions_load(extra, tiny_model, tokenizer, tmp_path):
    adapter = trained_adapter(tiny_model, tmp_path / "adapter", seed=4)
    want = with_adapter(tiny_model, adapter, tokenizer)
    config = adapter / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **extra}))
    assert with_adapter(tiny_model, adapter, tokenizer) == want


# --- the summarize command ------------------------------------------------------------------------------------------


def test_summarize_command_reads_files_and_stdin_and_serves_adapters(served, tokenizer, tmp_path, capsys, monkeypatch):
    settings = load_settings()
    want = summarize(served["base"], tokenizer, DIALOGUES, settings, progress=False)
    (tmp_path / "d.txt").write_text("\n\n".join(DIALOGUES) + "\n")
    assert main(["summarize", str(tmp_path / "d.txt")]) == 0
    assert capsys.readouterr().out.splitlines() == want
    pd.DataFrame({"text": DIALOGUES}).to_csv(tmp_path / "d.csv", index=False)
    assert main(["summarize", str(tmp_path / "d.csv"), "--column", "text", "--output", str(tmp_path / "o.csv")]) == 0
    assert pd.read_csv(tmp_path / "o.csv")["summary"].tolist() == want
    monkeypatch.setattr("sys.stdin", io.StringIO("\n\n".join(DIALOGUES)))
    assert main(["summarize"]) == 0
    assert capsys.readouterr().out.splitlines()[-3:] == want
    assert main(["summarize", "--adapter", str(served["adapter"]), str(tmp_path / "d.txt")]) == 0
    with_adapter = capsys.readouterr().out
    assert main(["summarize", "--merged", str(served["merged"]), str(tmp_path / "d.txt")]) == 0
    assert capsys.readouterr().out == with_adapter  # merged = unmerged, through the command too
    assert main(["summarize", str(tmp_path / "d.txt")]) == 0
    assert capsys.readouterr().out != with_adapter  # and the adapter does something


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda p: p.write_text("\n\n  \n"), [], "holds no dialogue"),
        (lambda p: p.write_bytes(b"\x00\x01\x02binary"), [], "is not text"),
        (lambda p: p.write_bytes("caf\xe9".encode("latin-1")), [], "is not UTF-8"),
        (lambda p: None, [], "is not a file"),
        (lambda p: p.write_text("dialogue\nhello"), ["--adapter", "/no/such/adapter"], "does not exist"),
        (lambda p: p.write_text("dialogue\nhello"), ["--merged", "/no/such/model"], "does not exist"),
    ],
)
def test_summarize_command_explains_bad_input(served, tmp_path, capsys, make, args, message):
    path = tmp_path / "input.txt"
    make(path)
    refused(main(["summarize", *args, str(path)]), capsys, message)


@pytest.mark.slow
def test_serving_table_measures_both_ways(tokenizer, tmp_path):
    # wide enough (5M parameters, 20 MB each) that two full models stand out from the process's own memory
    base = build_tiny_t5(len(tokenizer), d_model=256, d_kv=32, d_ff=1024, num_layers=3, num_decoder_layers=3)
    base.save_pretrained(tmp_path / "base")
    adapters = {n: trained_adapter(base, tmp_path / n, seed=i) for i, n in enumerate(("summary", "topic"))}
    table = serving_table(base, str(tmp_path / "base"), adapters, tmp_path / "base")
    assert list(table.index) == ["one base + 2 adapters", "2 full fine-tuned models", "ratio"]
    ours, theirs = table.iloc[0], table.iloc[1]
    assert theirs["parameters (millions)"] == round(2 * count_parameters(base)[1] / 1e6, 3)
    assert ours["parameters (millions)"] < theirs["parameters (millions)"]
    assert 0 < ours["MB resident (above torch)"] < theirs["MB resident (above torch)"]
    assert theirs["MB resident (above torch)"] > 30  # two models of 20 MB
    ratio = table.loc["ratio", "parameters (millions)"]
    assert ratio == pytest.approx(ours["parameters (millions)"] / theirs["parameters (millions)"], abs=2e-3)
