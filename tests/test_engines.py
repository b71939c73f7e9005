"""Serving engines: PyTorch int8 off the deprecated API, CTranslate2 summarizing as PyTorch does, its cache rebuilt
when the source changes, and `summarize --engine ctranslate2` on standard input and bad input."""

from __future__ import annotations

import io
import shutil
import warnings

import pytest
import torch
from conftest import SETTINGS, trained_adapter
from test_serving import DIALOGUES

from lab_utils.__main__ import main
from lab_utils.checkpoints import FULL_CHECKPOINT
from lab_utils.config import RELEASE_DIR, load_settings
from lab_utils.engines import BF16Autocast, CTranslate2Model, Int8Linear, cpu_supports_bf16, prepare_for_inference
from lab_utils.errors import LabError
from lab_utils.generation import summarize
from lab_utils.models import fingerprint

GEN = {"max_new_tokens": 12, "num_beams": 1, "do_sample": False}
GEN4 = {"max_new_tokens": 4, "min_new_tokens": 4, "num_beams": 1, "do_sample": False}


# --- PyTorch int8 ----------------------------------------------------------------------------------------------------


def test_int8_matmul_is_there_and_exact():
    """The lab's int8 path stands on `torch._int_mm`: this fails the day torch drops or changes it."""
    a = torch.randint(-127, 128, (5, 64), dtype=torch.int8)
    b = torch.randint(-127, 128, (64, 24), dtype=torch.int8)
    assert torch.equal(torch._int_mm(a, b), a.int() @ b.int())


def test_int8_linear_is_close_to_fp32_and_int8_inside():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    q = Int8Linear(linear)
    assert q.weight.dtype == torch.int8 and q.weight_int8.shape == (64, 48)
    x = torch.randn(3, 7, 64)
    want, got = linear(x), q(x)
    assert got.shape == want.shape
    # per-row and per-channel scales: the error is a small fraction of the output's size
    assert (got - want).abs().max() < 0.02 * want.abs().max()
    assert not torch.equal(got, want)  # it really is quantized


def test_int8_is_a_quantized_copy_off_the_deprecated_api(tiny_model, tokenizer):
    before = fingerprint(tiny_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.ao.quantization warns of its deprecation: it must not be called
        quantized = prepare_for_inference(tiny_model, "int8")
    assert quantized is not tiny_model
    assert any(isinstance(m, Int8Linear) for m in quantized.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.modules())
    assert not any(type(m).__module__.startswith("torch.ao") for m in quantized.modules())
    assert fingerprint(tiny_model) == before and tiny_model.training  # the caller's model is untouched
    out = summarize(quantized, tokenizer, DIALOGUES, SETTINGS, GEN, progress=False)
    assert len(out) == 3 and all(isinstance(s, str) for s in out)


def test_int8_of_an_adapter_keeps_the_adapter(tiny_model, tokenizer, tmp_path):
    """int8 merges a LoRA adapter before quantizing: quantized LoRA matrices would round its contribution away."""
    from peft import PeftModel

    adapter = trained_adapter(tiny_model, tmp_path / "adapter", seed=3)
    with_adapter = PeftModel.from_pretrained(tiny_model, adapter, is_trainable=False).eval()
    quantized = prepare_for_inference(with_adapter, "int8")
    batch = tokenizer(DIALOGUES, return_tensors="pt", padding=True)
    start = torch.zeros((len(DIALOGUES), 1), dtype=torch.long)
    with torch.no_grad():
        want = with_adapter(**batch, decoder_input_ids=start).logits
        got = quantized(**batch, decoder_input_ids=start).logits
        with with_adapter.disable_adapter():
            base = with_adapter(**batch, decoder_input_ids=start).logits
    assert (got - want).abs().max() < 0.1 * (base - want).abs().max()  # the adapter's, not the base's
    assert hasattr(with_adapter, "peft_config")  # merged on a copy


def test_int8_refuses_a_model_on_another_device(tiny_model, monkeypatch):
    monkeypatch.setattr("lab_utils.engines.device_of", lambda model: "cuda")
    with pytest.raises(LabError, match="int8 runs on the CPU"):
        prepare_for_inference(tiny_model, "int8")


def test_fp32_is_the_model_itself(tiny_model):
    assert prepare_for_inference(tiny_model, "fp32") is tiny_model


def test_unknown_engine_names_the_valid_ones(tiny_model):
    with pytest.raises(LabError, match="fp32, int8, bf16, ctranslate2, ctranslate2-fp32"):
        prepare_for_inference(tiny_model, "fp16")


def test_bf16_falls_back_with_a_warning(tiny_model, monkeypatch):
    monkeypatch.setattr("lab_utils.engines.cpu_supports_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no bf16 instructions"):
        assert prepare_for_inference(tiny_model, "bf16") is tiny_model


def test_bf16_wrapper_generates_under_autocast(tiny_model, tokenizer, monkeypatch):
    monkeypatch.setattr("lab_utils.engines.cpu_supports_bf16", lambda: True)
    before = fingerprint(tiny_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning when supported
        wrapped = prepare_for_inference(tiny_model, "bf16")
    assert isinstance(wrapped, BF16Autocast)
    assert wrapped.config is tiny_model.config  # attributes pass through
    assert list(wrapped.parameters())[0] is list(tiny_model.parameters())[0]
    wrapped.eval()
    assert not wrapped.training and not tiny_model.training
    out = summarize(wrapped, tokenizer, ["#Person1#: Hello.\n#Person2#: Hi."] * 2, SETTINGS, GEN4, progress=False)
    assert len(out) == 2
    assert fingerprint(tiny_model) == before
    assert isinstance(cpu_supports_bf16(), bool)


# --- CTranslate2 -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release_model():
    """The offline release's trained instruct model and its tokenizer (committed)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    return (
        AutoModelForSeq2SeqLM.from_pretrained(RELEASE_DIR / FULL_CHECKPOINT, dtype=torch.float32),
        AutoTokenizer.from_pretrained(RELEASE_DIR / "flan-t5-tiny"),
    )


@pytest.fixture(scope="module")
def test_dialogues(data_dir):
    from lab_utils.data import load_dialogsum_csv

    return list(dict.fromkeys(load_dialogsum_csv(data_dir)["test"]["dialogue"])) + DIALOGUES


def test_ctranslate2_fp32_summarizes_exactly_as_pytorch(release_model, test_dialogues):
    """The same greedy summaries, word for word: fp32 on both sides, the same prompts, batches and settings.

    Measured on the 64 first DialogSum test dialogues with this model: 64 of 64 identical in fp32; int8 (CTranslate2's
    or PyTorch's) changed 14 of 64, both times the ROUGE change is in `bench --only h`.
    """
    model, tokenizer = release_model
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


def test_ctranslate2_int8_stays_close(release_model, test_dialogues):
    model, tokenizer = release_model
    settings = load_settings("offline", environ={})
    want = summarize(model, tokenizer, test_dialogues, settings, progress=False)
    got = summarize(prepare_for_inference(model, "ctranslate2", tokenizer), tokenizer, test_dialogues, settings)
    assert all(s.strip() for s in got)
    assert sum(a == b for a, b in zip(want, got)) >= len(want) // 2


def test_ctranslate2_converts_an_adapter_merged_and_leaves_it_alone(served, tokenizer):
    from peft import PeftModel

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


def test_summarize_engine_ctranslate2_on_stdin_and_its_cache(served, monkeypatch, capsys):
    _stdin(monkeypatch, "\n\n".join(DIALOGUES))
    assert main(["summarize", "--merged", str(served["merged"]), "-"]) == 0
    pytorch = capsys.readouterr().out.splitlines()
    assert len(pytorch) == 3

    _stdin(monkeypatch, "\n\n".join(DIALOGUES))
    assert main(["summarize", "--engine", "ctranslate2-fp32", "--merged", str(served["merged"]), "-"]) == 0
    out = capsys.readouterr().out
    assert "first use" in out and out.splitlines()[-3:] == pytorch  # converted, and the same summaries
    cache = served["tmp"] / "merged.ctranslate2-float32"  # next to its source
    assert (cache / "model.bin").is_file() and (cache / "lab_source.json").is_file()

    _stdin(monkeypatch, "\n\n".join(DIALOGUES))
    assert main(["summarize", "--engine", "ctranslate2-fp32", "--merged", str(served["merged"]), "-"]) == 0
    out = capsys.readouterr().out
    assert "unchanged since" in out and "converting" not in out and out.splitlines()[-3:] == pytorch

    # the source changes (another adapter merged into the same folder): the cache is converted again, and serves it
    from peft import PeftModel

    other = trained_adapter(served["base"], served["tmp"] / "other", seed=9)
    PeftModel.from_pretrained(served["base"], other).merge_and_unload().save_pretrained(served["merged"])
    _stdin(monkeypatch, "\n\n".join(DIALOGUES))
    assert main(["summarize", "--merged", str(served["merged"]), "-"]) == 0
    changed = capsys.readouterr().out.splitlines()
    assert changed != pytorch
    _stdin(monkeypatch, "\n\n".join(DIALOGUES))
    assert main(["summarize", "--engine", "ctranslate2-fp32", "--merged", str(served["merged"]), "-"]) == 0
    out = capsys.readouterr().out
    assert "its source changed" in out and out.splitlines()[-3:] == changed
    assert not (served["tmp"] / "merged.ctranslate2-float32.partial").exists()


def test_summarize_engine_ctranslate2_merges_an_adapter_first(served, monkeypatch, capsys):
    (served["tmp"] / "d.txt").write_text("\n\n".join(DIALOGUES))
    assert main(["summarize", "--adapter", str(served["adapter"]), str(served["tmp"] / "d.txt")]) == 0
    pytorch = capsys.readouterr().out.splitlines()
    args = ["summarize", "--engine", "ctranslate2-fp32", "--adapter", str(served["adapter"])]
    assert main([*args, str(served["tmp"] / "d.txt")]) == 0
    assert capsys.readouterr().out.splitlines()[-3:] == pytorch
    assert (served["tmp"] / "adapter.merged.ctranslate2-float32" / "model.bin").is_file()
    # int8: every dialogue gets a summary
    assert (
        main(
            ["summarize", "--engine", "ctranslate2", "--adapter", str(served["adapter"]), str(served["tmp"] / "d.txt")]
        )
        == 0
    )
    assert len(capsys.readouterr().out.splitlines()[-3:]) == 3


@pytest.mark.parametrize("files", [["notes.txt"], ["config.json", "model.bin", "shared_vocabulary.json"]])
def test_a_cache_place_holding_a_users_files_is_left_alone(served, monkeypatch, capsys, files):
    """A user's notes, or a conversion the user made (without the lab's stamp), are not the lab's to replace."""
    sibling = served["tmp"] / "merged.ctranslate2-int8"
    sibling.mkdir()
    for name in files:
        (sibling / name).write_text("mine")
    _stdin(monkeypatch, DIALOGUES[0])
    assert main(["summarize", "--engine", "ctranslate2", "--merged", str(served["merged"]), "-"]) == 0
    assert sorted(p.name for p in sibling.iterdir()) == sorted(files)
    assert all((sibling / name).read_text() == "mine" for name in files)
    assert any((served["tmp"] / "work" / "ctranslate2").iterdir())  # converted under the work folder instead


def test_summarize_engine_ctranslate2_on_the_folder_one_stands_in(served, monkeypatch, capsys):
    monkeypatch.chdir(served["merged"])
    _stdin(monkeypatch, DIALOGUES[0])
    assert main(["summarize", "--engine", "ctranslate2", "--merged", ".", "-"]) == 0
    assert (served["tmp"] / "merged.ctranslate2-int8" / "model.bin").is_file()


def test_a_bad_adapter_is_refused_before_any_conversion(served, monkeypatch, capsys):
    bad = served["tmp"] / "not-an-adapter"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{}")
    _stdin(monkeypatch, DIALOGUES[0])
    assert main(["summarize", "--engine", "ctranslate2", "--adapter", str(bad), "-"]) == 2
    captured = capsys.readouterr()
    assert "peft_type" in captured.err and "converting" not in captured.out


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
    assert main(["summarize", "--engine", "ctranslate2", *args, "-"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_summarize_refuses_an_unknown_engine(served, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["summarize", "--engine", "onnx", "-"])
    assert exc.value.code == 2 and "ctranslate2" in capsys.readouterr().err


def test_the_cache_is_never_written_into_the_lab_sources(served, monkeypatch, capsys):
    """The committed release lies in the lab's sources: its conversion goes under the work folder."""
    release = RELEASE_DIR / FULL_CHECKPOINT
    _stdin(monkeypatch, DIALOGUES[0])
    monkeypatch.delenv("LAB_MODEL_ID")
    assert main(["summarize", "--engine", "ctranslate2", "--merged", str(release), "-"]) == 0
    assert not release.with_name(release.name + ".ctranslate2-int8").exists()
    assert (served["tmp"] / "work" / "ctranslate2").is_dir()
    shutil.rmtree(served["tmp"] / "work")
