"""The benchmark CLI (`python -m lab_utils bench --smoke`) and the fast-inference options it measures."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import SETTINGS

from lab_utils.backstage import bench
from lab_utils.backstage.inference import BF16Autocast, cpu_supports_bf16, prepare_for_inference
from lab_utils.config import PROJECT_ROOT
from lab_utils.errors import LabError
from lab_utils.generation import summarize
from lab_utils.models import fingerprint

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
    assert "Targets:" in proc.stdout and "Machine:" in proc.stdout
    report = json.loads(out.read_text())
    for part in bench.PARTS:
        assert part in report, part
    # (g)'s memory above the imports is noise for the smoke test's tiny models: it may be 0 or below
    noise = {"adapters_mb", "merged_mb", "memory_ratio"}
    numbers = {
        p: {k: v for k, v in report[p].items() if k != "standin" and (p != "g" or k not in noise)} for p in bench.PARTS
    }
    _positive_numbers(numbers)
    a, b, c, d, e, f, g = (report[p] for p in bench.PARTS)
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
    keys = [(t["part"], t["key"]) for t in report["targets"]]
    assert keys == [("a", "speedup"), ("b", "speedup"), ("c", "memory_ratio"), ("c", "memory_ratio_checkpointing")]


def test_bench_rejects_unknown_part(capsys):
    assert bench.main(["--only", "a,z"]) == 2
    assert "unknown part(s) z" in capsys.readouterr().err


def test_int8_is_a_quantized_copy(tiny_model, tokenizer):
    before = fingerprint(tiny_model)
    quantized = prepare_for_inference(tiny_model, "int8")
    assert quantized is not tiny_model
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert any(isinstance(m, dynamic) for m in quantized.modules())
    assert not any(isinstance(m, dynamic) for m in tiny_model.modules())
    assert fingerprint(tiny_model) == before
    assert tiny_model.training  # the caller's mode is untouched too
    out = summarize(quantized, tokenizer, ["#Person1#: Hello.\n#Person2#: Hi."], SETTINGS, GEN, progress=False)
    assert len(out) == 1 and isinstance(out[0], str)


def test_fp32_is_the_model_itself(tiny_model):
    assert prepare_for_inference(tiny_model, "fp32") is tiny_model


def test_unknown_mode_names_the_valid_ones(tiny_model):
    with pytest.raises(LabError, match="fp32, int8, bf16"):
        prepare_for_inference(tiny_model, "fp16")


def test_bf16_falls_back_with_a_warning(tiny_model, monkeypatch):
    monkeypatch.setattr("lab_utils.backstage.inference.cpu_supports_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no bf16 instructions"):
        assert prepare_for_inference(tiny_model, "bf16") is tiny_model


def test_bf16_wrapper_generates_under_autocast(tiny_model, tokenizer, monkeypatch):
    monkeypatch.setattr("lab_utils.backstage.inference.cpu_supports_bf16", lambda: True)
    before = fingerprint(tiny_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning when supported
        wrapped = prepare_for_inference(tiny_model, "bf16")
    assert isinstance(wrapped, BF16Autocast)
    assert wrapped.config is tiny_model.config  # attributes pass through
    assert list(wrapped.parameters())[0] is list(tiny_model.parameters())[0]
    wrapped.eval()
    assert not wrapped.training and not tiny_model.training
    out = summarize(wrapped, tokenizer, ["#Person1#: Hello.\n#Person2#: Hi."] * 2, SETTINGS, GEN, progress=False)
    assert len(out) == 2
    assert fingerprint(tiny_model) == before
    assert isinstance(cpu_supports_bf16(), bool)


def test_standin_rouge_compares_modes(tiny_model, tokenizer, data_dir, tmp_path):
    from lab_utils.data import first_dialogue_rows, load_dialogsum_csv

    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    rows = first_dialogue_rows(load_dialogsum_csv(data_dir)["test"], 2)
    r = bench.measure_standin_rouge(
        str(tmp_path / "model"),
        str(tmp_path / "model"),
        list(rows["dialogue"]),
        list(rows["summary"]),
        max_new_tokens=6,
    )
    assert r["rows"] == 6 and r["dialogues"] == 2
    for mode in ["fp32", "int8"] + (["bf16"] if cpu_supports_bf16() else []):
        assert set(r[f"{mode}_rouge"]) >= {"rouge1", "rouge2", "rougeL"}
