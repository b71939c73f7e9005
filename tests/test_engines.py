"""Serving engines: CTranslate2 summarizing as PyTorch does, its cache converted again when the source changes or
the cache is damaged, and `summarize --engine ctranslate2` on standard input and bad input."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import SETTINGS, refused, trained_adapter
from peft import PeftModel
from test_serving import DIALOGUES
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from lab_utils.__main__ import main
from lab_utils.checkpoints import FULL_CHECKPOINT
from lab_utils.config import RELEASE_DIR, load_settings
from lab_utils.data import load_dialogsum_csv
from lab_utils.engines import CTranslate2Model, prepare_for_inference
from lab_utils.errors import LabError
from lab_utils.generation import summarize
from lab_utils.models import fingerprint

GEN = {"max_new_tokens": 12, "num_beams": 1, "do_sample": False}


# --- CTranslate2 -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release_model():
    return (
        AutoModelForSeq2SeqLM.from_pretrained(RELEASE_DIR / FULL_CHECKPOINT, dtype=torch.float32),
        AutoTokenizer.from_pretrained(RELEASE_DIR / "flan-t5-tiny"),
    )


def test_ctranslate2_fp32_summarizes_exactly_as_pytorch_and_int8_stays_close(release_model, data_dir):
    # Measured on the 64 first DialogSum test dialogues with this model: 64 of 64 identical in fp32; int8 (CTranslate2's
    # or PyTorch's) changed 14 of 64, both times the ROUGE change is in `bench --only h`.
    model, tokenizer = release_model
    test_dialogues = list(dict.fromkeys(load_dialogsum_csv(data_dir)["test"]["dialogue"])) + DIALOGUES
    settings = load_settings("offline", environ={})
    want = summarize(model, tokenizer, test_dialogues, settings, progress=False)
    served = prepare_for_inference(model, "ctranslate2-fp32", tokenizer)
    assert isinstance(served, CTranslate2Model)
    assert summarize(served, tokenizer, test_dialogues, settings, progress=False) == want
    assert len(set(want)) > 1  # the model reads its input: a test that a constant output would pass is no test
    # a fixed length (the benchmark's: min = max new tokens) maps one to one too
    fixed = {"max_new_tokens": 8, "min_new_tokens": 8, "num_beams": 1, "do_sample": False}
    pytorch = summarize(model, tokenizer, test_dialogues, settings, fixed, progress=False)
    assert summarize(served, tokenizer, test_dialogues, settings, fixed, progress=False) == pytorch
    # int8: every summary has words, and at least half are PyTorch's
    got = summarize(prepare_for_inference(model, "ctranslate2", tokenizer), tokenizer, test_dialogues, settings)
    assert all(s.strip() for s in got) and sum(a == b for a, b in zip(want, got)) >= len(want) // 2


def test_ctranslate2_converts_an_adapter_merged_and_leaves_it_alone(served, tokenizer):
    with_adapter = PeftModel.from_pretrained(served["base"], served["adapter"], is_trainable=False)
    before = fingerprint(with_adapter)
    want = summarize(with_adapter, tokenizer, DIALOGUES, SETTINGS, GEN, progress=False)
    engine = prepare_for_inference(with_adapter, "ctranslate2-fp32", tokenizer)
    assert summarize(engine, tokenizer, DIALOGUES, SETTINGS, GEN, progress=False) == want
    assert fingerprint(with_adapter) == before and hasattr(with_adapter, "peft_config")  # merged on a copy


def test_ctranslate2_engine_refuses_sampling(release_model):
    model, tokenizer = release_model
    engine = prepare_for_inference(model, "ctranslate2", tokenizer)
    with pytest.raises(LabError, match="do_sample"):
        engine.generate(torch.tensor([[5, 6, 1]]), do_sample=True)
    with pytest.raises(LabError, match="num_beams=4"):
        engine.generate(torch.tensor([[5, 6, 1]]), num_beams=4)
    with pytest.raises(LabError, match="tokenizer"):
        prepare_for_inference(model, "ctranslate2")


# --- summarize --engine ctranslate2 ----------------------------------------------------------------------------------


def _stdin(monkeypatch, text: str):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="utf-8"))


def _summarize(monkeypatch, capsys, *args) -> tuple[int, list[str], str]:
    _stdin(monkeypatch, "\n\n".join(DIALOGUES))
    code = main(["summarize", *args, "-"])
    captured = capsys.readouterr()
    return code, captured.out.splitlines()[-3:], captured.err


def test_summarize_engine_ctranslate2_and_its_cache(served, monkeypatch, capsys):
    merged = ["--merged", str(served["merged"])]
    code, pytorch, _ = _summarize(monkeypatch, capsys, *merged)
    assert code == 0 and len(pytorch) == 3
    code, out, err = _summarize(monkeypatch, capsys, "--engine", "ctranslate2-fp32", *merged)
    assert code == 0 and "converting" in err and out == pytorch  # converted, and the same summaries
    (cache,) = (served["tmp"] / "work" / "ctranslate2").iterdir()
    with monkeypatch.context() as m:  # a cache hit loads no PyTorch model
        m.setattr("lab_utils.backstage.summarize_cli.load_for_serving", lambda *a: pytest.fail("loaded for a hit"))
        code, out, err = _summarize(monkeypatch, capsys, "--engine", "ctranslate2-fp32", *merged)
    assert "unchanged since" in err and out == pytorch
    (cache / "converted" / "model.bin").write_bytes(b"truncated")  # a damaged cache is converted again
    code, out, err = _summarize(monkeypatch, capsys, "--engine", "ctranslate2-fp32", *merged)
    assert code == 0 and "converting" in err and out == pytorch
    # the source changes (another adapter merged into the same folder): converted again, and serving the new one
    other = trained_adapter(served["base"], served["tmp"] / "other", seed=9)
    PeftModel.from_pretrained(served["base"], other).merge_and_unload().save_pretrained(served["merged"])
    _, changed, _ = _summarize(monkeypatch, capsys, *merged)
    code, out, err = _summarize(monkeypatch, capsys, "--engine", "ctranslate2-fp32", *merged)
    assert changed != pytorch and "converting" in err and out == changed
    assert not [p for p in served["tmp"].rglob("*.partial*")]
    # an adapter is merged first
    adapter = ["--adapter", str(served["adapter"])]
    _, pytorch, _ = _summarize(monkeypatch, capsys, *adapter)
    code, out, _ = _summarize(monkeypatch, capsys, "--engine", "ctranslate2-fp32", *adapter)
    assert code == 0 and out == pytorch
    code, out, _ = _summarize(monkeypatch, capsys, "--engine", "ctranslate2", *adapter)
    assert code == 0 and len(out) == 3 and all(out)


def test_the_committed_release_is_served_from_the_work_folder(served, monkeypatch, capsys):
    monkeypatch.delenv("LAB_MODEL_ID")
    before = sorted(p.name for p in RELEASE_DIR.iterdir())
    code, out, _ = _summarize(
        monkeypatch, capsys, "--engine", "ctranslate2", "--merged", str(RELEASE_DIR / FULL_CHECKPOINT)
    )
    assert code == 0 and len(out) == 3
    assert sorted(p.name for p in RELEASE_DIR.iterdir()) == before


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--merged", "{tmp}/nothing-here"], "#Person1#: Hi.", "not"),
        (["--adapter", "{tmp}/merged"], "#Person1#: Hi.", "adapter"),
        ([], "", "holds no dialogue"),
        ([], "\n\n  \n", "holds no dialogue"),
    ],
)
def test_summarize_engine_ctranslate2_bad_input(served, monkeypatch, capsys, args, stdin, message):
    args = [a.format(tmp=served["tmp"]) for a in args]
    _stdin(monkeypatch, stdin)
    refused(main(["summarize", "--engine", "ctranslate2", *args, "-"]), capsys, message)
    assert not (served["tmp"] / "work" / "ctranslate2").exists()
