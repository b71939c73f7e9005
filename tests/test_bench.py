"""The benchmark CLI (`python -m lab_utils bench --smoke`) and the fast-inference options it measures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lab_utils.backstage import bench
from lab_utils.backstage.bench.f_inference_modes import measure_release_rouge
from lab_utils.backstage.bench.h_engines import bytes_per_step
from lab_utils.config import PROJECT_ROOT
from lab_utils.engines import cpu_supports_bf16

GEN = {"max_new_tokens": 4, "min_new_tokens": 4, "num_beams": 1, "do_sample": False}


def _positive_numbers(obj, where=""):
    """Every number in a nested dict/list (booleans aside) is finite and > 0."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _positive_numbers(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _positive_numbers(v, f"{where}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        assert obj > 0 and obj == obj and obj != float("inf"), f"{where} = {obj}"


@pytest.mark.slow
def test_bench_smoke_writes_every_part(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "lab_utils", "bench", "--smoke", "--threads", "1", "--data-dir", str(data_dir)]
    # 131 s here when warm (each part measures in fresh processes, each importing torch); a fresh venv's first
    # imports took it past 150 s in CI, so the limit only guards against a hang
    proc = subprocess.run([*cmd, "--json", str(out)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for part in bench.PARTS:
        assert f"[{part}]" in proc.stdout  # a progress line before each part
    assert "Targets (the lab's goals, docs/benchmark.md" in proc.stdout and "Machine:" in proc.stdout
    report = json.loads(out.read_text())
    for part in bench.PARTS:
        assert part in report, part
    # (g)'s memory above the imports is noise for the smoke test's tiny models: it may be 0 or below
    noise = {"adapters_mb", "merged_mb", "memory_ratio"}
    numbers = {
        p: {k: v for k, v in report[p].items() if k not in ("standin", "release") and (p != "g" or k not in noise)}
        for p in bench.PARTS
        if p != "h"
    }
    _positive_numbers(numbers)
    a, b, c, d, e, f, g, h = (report[p] for p in bench.PARTS)
    assert a["rows"] == 6 and a["dialogues"] == 2
    if not b["bf16_supported"]:
        assert b["bf16_speedup"] is None and "bf16 training skipped" in proc.stdout
    assert e["fraction"] <= 1  # a count of the FLOPs training does, against the best matmul this process reached
    assert e["matmul_flops"] == max(e["matmul_flops_before"], e["matmul_flops_after"])  # the peak, measured twice
    assert c["lora_trainable"] < c["parameters"]
    ck = c["checkpointing"]
    # gradient checkpointing keeps fewer activations for the backward pass, for both kinds of training
    assert ck["full_activations_mb"] < c["full_activations_mb"]
    assert ck["lora_activations_mb"] < c["lora_activations_mb"]
    assert g["adapters"] == 2 and {"adapters_mb", "merged_mb", "unmerged_s", "merged_s", "original_s"} <= set(g)
    assert set(report["part_s"]) == set(bench.PARTS)
    assert h["bandwidth_bytes_per_s"] > 0 and h["dialogues"] == 4
    for engine in ("fp32", "int8", "ctranslate2-fp32", "ctranslate2"):
        assert h[engine]["s"] > 0 and h[engine]["bytes_per_step"] > 0 and h[engine]["tokens_per_s"] > 0
    assert {"int8_speedup", "ctranslate2_fp32_speedup", "ctranslate2_speedup"} <= set(h)
    keys = [(t["part"], t["key"]) for t in report["targets"]]
    assert keys == [
        ("a", "speedup"),
        ("b", "speedup"),
        ("c", "memory_ratio"),
        ("c", "memory_ratio_checkpointing"),
        ("h", "ctranslate2_speedup"),
    ]
    assert all(t["source"] for t in report["targets"])


def test_bench_rejects_unknown_part(capsys):
    assert bench.main(["--only", "a,z"]) == 2
    assert "unknown part(s) z" in capsys.readouterr().err


def test_release_rouge_compares_engines(tiny_model, tokenizer, data_dir, tmp_path):
    from lab_utils.data import first_dialogue_rows, load_dialogsum_csv

    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    rows = first_dialogue_rows(load_dialogsum_csv(data_dir)["test"], 2)
    engines = ["fp32", "int8", "ctranslate2"] + (["bf16"] if cpu_supports_bf16() else [])
    r = measure_release_rouge(
        str(tmp_path / "model"), str(tmp_path / "model"), list(rows["dialogue"]), list(rows["summary"]), engines
    )
    assert r["rows"] == 6 and r["dialogues"] == 2
    for mode in engines:
        assert set(r[f"{mode}_rouge"]) >= {"rouge1", "rouge2", "rougeL"}


def test_every_part_is_a_module_that_asks_its_question():
    for part, module in bench.MODULES.items():
        first = module.__doc__.strip().splitlines()[0]
        assert first.startswith(f"({part}) ") and "?" in module.__doc__.split("\n\n")[0], part
        assert callable(module.run) and callable(module.summary) and module.TITLE


def test_every_goal_is_stated_in_the_docs():
    """The targets the benchmark prints are the lab's goals, written in docs/benchmark.md, not numbers of its own."""
    docs = (PROJECT_ROOT / "docs" / "benchmark.md").read_text()
    goals = docs.split("## The lab's goals", 1)[1].split("\n## ", 1)[0]
    for module in bench.MODULES.values():
        for goal in module.GOALS:
            assert goal.source in goals, goal.source
            assert f"{goal.threshold:g}x" in goal.source


def test_docs_list_the_parts_in_order():
    docs = (PROJECT_ROOT / "docs" / "benchmark.md").read_text()
    positions = [docs.index(f"- ({p})") for p in bench.PARTS]
    assert positions == sorted(positions)
    for p in bench.PARTS:
        assert f"| ({p})" in docs, p  # each part has figures in the last run's table


def test_bytes_per_step_of_flan_t5_base():
    """What a greedy step of flan-t5-base reads: 123.8M decoder weights (+ lm_head), fp32 or int8, plus the caches."""
    from lab_utils.backstage.standin import FLAN_T5_BASE_CONFIG

    lengths = [500] * 8 + [200] * 8
    fp32 = bytes_per_step(dict(FLAN_T5_BASE_CONFIG), "fp32", lengths, new_tokens=48)
    int8 = bytes_per_step(dict(FLAN_T5_BASE_CONFIG), "ctranslate2", lengths, new_tokens=48)
    # 12 layers x (self q,k,v,o + cross q,o: 6 x 768^2, gated feed-forward: 3 x 768 x 2048) + lm_head 768 x 32,128
    assert fp32["decoder_weights"] == 12 * (6 * 768 * 768 + 3 * 768 * 2048) + 768 * 32128
    # CTranslate2 decodes 16 prompts in two sub-batches of 8: it reads its int8 weights twice per step, and each
    # sub-batch's prompts padded to its own longest
    assert int8["passes"] == 2 and fp32["passes"] == 1
    assert fp32["weight_bytes"] == 4 * fp32["decoder_weights"] and int8["weight_bytes"] == 2 * fp32["decoder_weights"]
    per_position = 12 * 2 * 768 * 4
    assert fp32["cross_attention_bytes"] == 16 * 500 * per_position
    assert int8["cross_attention_bytes"] == (8 * 500 + 8 * 200) * per_position
    assert fp32["self_attention_bytes"] == int8["self_attention_bytes"] == 16 * 24.5 * per_position
