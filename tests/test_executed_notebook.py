"""The executed notebook (data/executed/, saved by tests/in_jupyterlab.py from JupyterLab, or by `python -m lab_utils
run`) shows what the lab promises: the taught calls in their cells, the figures saved, the tables, and input-dependent
summaries. (No error, every cell run, the figures shown: in_jupyterlab.py checks those in the page.)"""

# It needs that artifact: tests/run_all.sh makes it first and sets REQUIRE_EXECUTED_NOTEBOOK=1 (a missing file then
# fails); elsewhere, plain `pytest` skips these tests with the reason.

from __future__ import annotations

import json
import os
import re
from datetime import datetime

import pytest
from notebook import code_cells, output_text

from lab_utils.__main__ import EXECUTED
from lab_utils.config import load_settings


@pytest.fixture(scope="module")
def cells():
    if not EXECUTED.is_file():
        if os.environ.get("REQUIRE_EXECUTED_NOTEBOOK") == "1":
            pytest.fail(f"{EXECUTED} is missing: tests/in_jupyterlab.py did not produce it")
        pytest.skip(f"needs the executed notebook {EXECUTED}: run tests/in_jupyterlab.py first")
    return code_cells(EXECUTED)


def text(cells, cell_id: str) -> str:
    return output_text(cells[cell_id])


@pytest.mark.parametrize(
    ("cell_id", "call"),
    [
        ("load-model", "AutoModelForSeq2SeqLM.from_pretrained("),
        ("tokenize", "dataset.map(tokenize_function"),
        ("collator", "DataCollatorForSeq2Seq(tokenizer, model=original_model, label_pad_token_id=-100)"),
        ("full-training-args", "Seq2SeqTrainingArguments("),
        ("full-training-args", "Seq2SeqTrainer("),
        ("full-training-args", "copy.deepcopy(original_model)"),
        ("rouge-load", "evaluate.load("),
        ("live-rouge", "rouge.compute("),
        ("lora-config", "LoraConfig("),
        ("lora-config", "get_peft_model(copy.deepcopy(original_model), lora_config)"),
        ("lora-config", "print_trainable_parameters()"),
        ("lora-training-args", "Seq2SeqTrainer("),
        ("load-adapter", "PeftModel.from_pretrained(copy.deepcopy(original_model), peft_dir, is_trainable=False)"),
        ("merge", ".merge_and_unload()"),
        ("ct2-convert", "ctranslate2.converters.TransformersConverter(str(merged_dir)).convert("),
        ("ct2-convert", "ctranslate2.Translator("),
        ("ct2-convert", "translator.translate_batch("),
        ("swap", '.load_adapter(topic_dir, adapter_name="topic", is_trainable=False)'),
        ("swap", '.set_adapter("summary")'),
        ("swap", '.set_adapter("topic")'),
    ],
)
def test_the_taught_calls_are_in_their_cells(cells, cell_id, call):
    assert call in "".join(cells[cell_id]["source"])


def test_figures_saved_as_png(cells):
    """The run saved its figures as PNG files (not files left by an earlier run: written after the run started)."""
    run = json.loads(EXECUTED.read_text())["metadata"]
    started = datetime.fromisoformat(run.get("lab_run", run.get("papermill", {}))["start_time"])
    figures = load_settings("offline", environ={}).work_path / "offline" / "figures"
    for name in ("full_vs_lora.png", "loss_curves.png", "rouge.png"):
        assert (figures / name).read_bytes()[:4] == b"\x89PNG"
        assert (figures / name).stat().st_mtime >= started.timestamp() - 1, f"{name} is older than the run"


def test_reports_and_tables(cells):
    html = [o["data"]["text/html"] for o in cells["side-by-side"]["outputs"] if "text/html" in o.get("data", {})]
    assert html and "<table" in "".join(html[0]) and "instruct" in "".join(html[0])  # the side-by-side table
    assert "percentage of trainable model parameters: 100.00%" in text(cells, "parameter-report")
    assert "trainable params: " in text(cells, "lora-config")
    assert "trainable model parameters: 0\n" in text(cells, "load-adapter")
    assert "original model unchanged: True" in text(cells, "original-unchanged")
    table = text(cells, "file-rouge-three")
    assert all(name in table for name in ("original", "instruct", "peft", "best constant", "PEFT MODEL over ORIGINAL"))


def test_a_setting_from_the_environment_reached_the_kernel(cells):
    assert "8 dialogues, 24 test rows" in text(cells, "live-rouge")  # tests/run_all.sh sets LAB_EVAL_DIALOGUES=8


def test_section_6_merge_swap_and_serving(cells):
    assert "merged model = unmerged adapter: True" in text(cells, "merge-check")
    assert "original model unchanged: True" in text(cells, "merge-check")
    swap = dict(line.split(": ", 1) for line in text(cells, "swap").splitlines() if ": " in line)
    assert swap.get("SUMMARY", "").strip() and swap.get("TOPIC", "").strip(), swap
    assert swap["SUMMARY"] != swap["TOPIC"]  # two adapters, two tasks
    table = text(cells, "serving-table")
    assert "one base + 2 adapters" in table and "2 full fine-tuned models" in table
    ratios = [float(v) for v in table.split("ratio", 1)[1].split()[:2]]  # parameters, MB on disk
    assert all(0 < r < 1 for r in ratios), table


def test_section_6_ctranslate2_serves_the_merged_model(cells):
    """The converted merged model summarizes the test dialogue, says how many of 5.2's dialogues it summarizes as
    PyTorch's generate does, and shows both times (no speed is asserted: that is the benchmark's)."""
    summary = text(cells, "ct2-convert").split("CTRANSLATE2 SUMMARY:", 1)[1].splitlines()[0]
    assert summary.strip()
    assert re.search(r"on disk: [\d.]+ [kMG]?B converted, [\d.]+ [kMG]?B merged", text(cells, "ct2-convert"))
    check = text(cells, "ct2-compare")
    agreement = re.search(r"summaries: (\d+) of (\d+) dialogues identical", check)
    assert agreement and int(agreement.group(2)) >= 1, check
    assert re.search(r"time: PyTorch [\d.]+ s, CTranslate2 [\d.]+ s", check), check


def test_the_results_file_story_as_the_notebook_prints_it(cells):
    """Section 5.3 as a learner reads it: the fine-tuned models beat the best constant summary on ROUGE-1/2/L and
    write distinct summaries for >= 90% of the test dialogues (a model that ignores its input could not)."""
    table = text(cells, "file-rouge-three")
    rows = {
        m.group(1): [float(x) for x in m.groups()[1:4]]
        for m in re.finditer(r"^(original|instruct|peft|best constant)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", table, re.M)
    }
    assert set(rows) == {"original", "instruct", "peft", "best constant"}, table
    for model in ("instruct", "peft"):
        assert all(ours > bar for ours, bar in zip(rows[model], rows["best constant"])), (model, rows)
    assert rows["instruct"][0] > rows["peft"][0] > rows["original"][0]
    counts = re.search(r"distinct summaries of (\d+) test dialogues: original (\d+), instruct (\d+), peft (\d+)", table)
    assert counts, table
    dialogues, *distinct = (int(x) for x in counts.groups())
    assert all(d >= 0.9 * dialogues for d in distinct[1:]), counts.group(0)


MEMORY = re.compile(r"memory of this process: ([\d.]+) GB resident, ([\d.]+) GB at most so far")


@pytest.mark.parametrize("cell_id", ["memory-full", "memory-3", "memory-lora", "memory-5", "memory-7"])
def test_each_section_shows_the_process_s_memory_after_letting_go(cells, cell_id):
    match = MEMORY.search(text(cells, cell_id))
    assert match and 0 < float(match.group(1)) <= float(match.group(2))
