"""Parameter figures of the flan-t5-base architecture, LoRA that leaves the original model alone, the stand-in."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from conftest import SETTINGS, TINY
from notebook import notebook_trainer
from peft import PeftModel, get_peft_model
from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

from lab_utils.backstage import standin
from lab_utils.backstage.instructor import lora_config, tokenize
from lab_utils.backstage.standin import FLAN_T5_BASE_CONFIG, TINY_CONFIG, build_tiny_t5, denoise
from lab_utils.data import load_dialogsum_csv
from lab_utils.errors import LabError
from lab_utils.models import check_adapter_dir, check_model_dir, count_parameters, fingerprint, parameter_report


def add_lora(model, config):
    """What the notebook's cell 4.1 does: LoRA on a copy of the model."""
    return get_peft_model(copy.deepcopy(model), config)


def train(model, tokenizer, train_dataset, out, lora: bool, **changes):
    """3 steps of the notebook's own trainer (its cells) at a high learning rate, so that weights really move."""
    settings = SETTINGS.replace(train_batch_size=4, full_lr=1e-2, lora_lr=1e-2, notebook_full_steps=3,
                                notebook_lora_steps=3, **changes)  # fmt: skip
    trainer = notebook_trainer(model, tokenizer, train_dataset, out, settings, lora=lora)
    trainer.train()
    return trainer


def loss_history(trainer) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]


@pytest.fixture(scope="module")
def flan_t5_base_shape():
    """flan-t5-base's architecture from its public config values, on the meta device (no weights, no download)."""
    with torch.device("meta"):
        return T5ForConditionalGeneration(T5Config(**FLAN_T5_BASE_CONFIG))


def test_flan_t5_base_parameter_count_and_the_course_s_lora_figures(flan_t5_base_shape):
    assert count_parameters(flan_t5_base_shape) == (247_577_856, 247_577_856)
    assert "percentage of trainable model parameters: 100.00%" in parameter_report(flan_t5_base_shape)
    # T5 v1.1: the lm_head is its own matrix, not the shared embedding
    assert flan_t5_base_shape.lm_head.weight is not flan_t5_base_shape.shared.weight
    peft_model = add_lora(flan_t5_base_shape, lora_config())
    assert count_parameters(peft_model) == (3_538_944, 251_116_800)
    assert "percentage of trainable model parameters: 1.41%" in parameter_report(peft_model)
    assert count_parameters(flan_t5_base_shape) == (247_577_856, 247_577_856)  # original not wrapped
    assert not any("lora" in name for name, _ in flan_t5_base_shape.named_modules())


@pytest.fixture
def dataset(tokenizer, data_dir):
    return tokenize(load_dialogsum_csv(data_dir), tokenizer, SETTINGS)["train"]


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_training_spares_the_original_and_checkpointing_trains_the_same(kind, tiny_model, tokenizer, dataset, tmp_path):
    """Training changes a copy, never the original model; LAB_GRADIENT_CHECKPOINTING trades time for memory only:
    same losses, same trained weights."""
    before, runs = fingerprint(tiny_model), []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # LoRA's A matrices start random: the same start for both runs
        trainer = train(tiny_model, tokenizer, dataset, tmp_path / str(checkpointing), lora=kind == "lora",
                        gradient_checkpointing=checkpointing)  # fmt: skip
        model = trainer.model
        assert model.is_gradient_checkpointing == checkpointing and len(loss_history(trainer)) == 3
        assert fingerprint(model) != before  # training did change the trained model...
        assert fingerprint(tiny_model) == before  # ...and not the original
        assert not any("lora" in name for name, _ in tiny_model.named_modules())
        trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        runs.append(([loss for _, loss in loss_history(trainer)], trained))
    (losses, weights), (losses_ck, weights_ck) = runs
    assert losses == pytest.approx(losses_ck, rel=1e-4)  # dropout masks are replayed in the recomputation
    assert weights.keys() == weights_ck.keys()
    for name in weights:
        torch.testing.assert_close(weights[name], weights_ck[name], rtol=1e-3, atol=1e-5, msg=name)


def test_offline_stand_in_is_t5_v1_1_with_untied_head_and_stays_so_when_saved(tmp_path):
    model = build_tiny_t5(4100)
    assert model.config.feed_forward_proj == "gated-gelu" and not model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    assert model.config.d_model == TINY_CONFIG["d_model"]
    # the re-initialised head gives a first loss near a uniform guess (ln 4100 = 8.3), not far above it
    ids = torch.randint(3, 4000, (4, 20))
    assert model(input_ids=ids, labels=ids).loss.item() < 10
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert not loaded.config.tie_word_embeddings
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert not torch.equal(loaded.lm_head.weight, loaded.shared.weight)


def test_denoising_masks_spans_and_asks_for_the_clean_text():
    ids = list(range(10, 74))  # 64 tokens, as in the second pretraining phase
    sentinels = list(range(1000, 900, -1))
    source, target = denoise(ids, sentinels, eos_id=1, rng=random.Random(0))
    assert target == ids + [1]  # the whole clean chunk: the decoder must read the encoder to write it
    assert source[-1] == 1
    kept = [t for t in source[:-1] if t not in sentinels]
    assert kept == [t for t in ids if t in kept]  # unmasked tokens stay, in order
    masked = len(ids) - len(kept)
    assert 0.1 * len(ids) <= masked <= 0.3 * len(ids)  # about 15%, in spans
    assert 0 < sum(t in sentinels for t in source) < masked  # one sentinel per span, spans longer than 1 on average


@pytest.mark.parametrize(
    ("damage", "named"),
    [("truncate", "model.safetensors"), ("config", "config.json"), ("remove", "model.safetensors or pytorch_model.bin"),
     ("folder", "does not exist"), ("nan", r"non-finite weights \(NaN or inf in 1, e\.g\. decoder\.block\.1\.")],
)  # fmt: skip
def test_a_damaged_checkpoint_is_named_before_it_loads(damage, named, tiny_model, tmp_path):
    """Each damage is named; NaN weights (what a diverged run saves) load, so only the finite check stops them."""
    if damage == "nan":
        with torch.no_grad():
            tiny_model.decoder.block[1].layer[0].SelfAttention.v.weight[3, 5] = float("nan")
    tiny_model.save_pretrained(tmp_path / "ckpt")
    weights, config = tmp_path / "ckpt" / "model.safetensors", tmp_path / "ckpt" / "config.json"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "config":
        config.write_text(config.read_text()[:40])
    elif damage == "remove":
        weights.unlink()
    elif damage == "nan":
        assert check_model_dir(tmp_path / "ckpt") == tmp_path / "ckpt"  # whole and readable
    with pytest.raises(LabError, match=named):
        check_model_dir(tmp_path / ("nope" if damage == "folder" else "ckpt"), finite=True)


def test_rerunning_the_lora_cell_does_not_stack_adapters(tiny_model):
    first = add_lora(tiny_model, lora_config(r=4))
    second = add_lora(tiny_model, lora_config(r=4))  # the cell run again
    assert count_parameters(first) == count_parameters(second)
    lora_a = [[n for n, _ in model.named_parameters() if "lora_A" in n] for model in (first, second)]
    assert lora_a[0] == lora_a[1]
    assert not any("lora" in name for name, _ in tiny_model.named_modules())


@pytest.fixture
def adapter(tiny_model, tmp_path):
    add_lora(tiny_model, lora_config(r=4)).save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def _damage(adapter, how):
    config, weights = adapter / "adapter_config.json", adapter / "adapter_model.safetensors"
    if how == "no config":
        config.unlink()
    elif how == "truncated config":
        config.write_text(config.read_text()[:30])
    elif how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "no weights":
        weights.unlink()
    elif how == "config of another rank":
        config.write_text(json.dumps(dict(json.loads(config.read_text()), r=8)))
    elif how == "config without r":
        config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "r"}))
    elif how == "non-finite weights":  # what a diverged training saves
        from safetensors.torch import load_file, save_file

        state = load_file(str(weights))
        name = sorted(k for k in state if ".lora_B." in k)[0]
        state[name][0, 0] = float("inf")
        save_file(state, str(weights))


@pytest.mark.parametrize(
    ("how", "message", "fix"),
    [
        ("no config", "no readable adapter_config.json", "publish the adapter folder again"),
        ("truncated config", "no readable adapter_config.json", "publish the adapter folder again"),
        ("truncated weights", "adapter_model.safetensors cannot be read", "publish the adapter folder again"),
        ("no weights", "has no adapter_model.safetensors or adapter_model.bin", "publish"),
        ("config of another rank", "has rank 4, but .* says r=8", "different adapters"),
        ("config without r", "has no `r` field", "publish the adapter folder again"),
        ("non-finite weights", r"adapter weight .*lora_B.* is not finite \(NaN or inf\)", "publish the adapter"),
    ],
)
def test_a_damaged_adapter_is_reported_before_peft_loads_it(how, message, fix, adapter, tiny_model):
    _damage(adapter, how)
    with pytest.raises(LabError, match=message) as error:
        check_adapter_dir(adapter, tiny_model, "the tiny model")
    assert fix in error.value.fix


def test_an_adapter_for_another_base_model_is_named(tokenizer, adapter):
    config = adapter / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": "google/flan-t5-large"}))
    wider = build_tiny_t5(len(tokenizer), **{**TINY, "d_model": 48})
    with pytest.raises(LabError, match=r"trained for a different model \(google/flan-t5-large\): wider has 48"):
        check_adapter_dir(adapter, wider, "wider")


def test_a_sound_adapter_passes_and_loads_frozen_on_a_fresh_base(tiny_model, tokenizer, tmp_path):
    peft_model = add_lora(tiny_model, lora_config(r=4))
    with torch.no_grad():  # make the adapter do something, so loading it is observable
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    peft_model.save_pretrained(tmp_path / "adapter")
    fresh = build_tiny_t5(len(tokenizer), **TINY)
    assert check_adapter_dir(tmp_path / "adapter", fresh, "tiny")["r"] == 4
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter", is_trainable=False)
    assert count_parameters(loaded)[0] == 0
    ids = tokenizer(["#Person1#: hello"], return_tensors="pt").input_ids
    peft_model.eval()
    with torch.no_grad():
        a = peft_model(input_ids=ids, decoder_input_ids=ids[:, :3]).logits
        b = loaded(input_ids=ids, decoder_input_ids=ids[:, :3]).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_a_failed_build_leaves_no_half_built_model(tmp_path, monkeypatch):
    """A crash while pretraining the stand-in (here: a diverging loss) leaves neither the model nor `.building`."""
    monkeypatch.setattr(standin, "pretrain", lambda *a, **k: [float("nan")])
    texts = ["#Person1#: Hello there, how are you?\n#Person2#: Fine, thanks."] * 40
    with pytest.raises(LabError, match="diverged"):
        standin.build_offline_model(tmp_path / "stand-in", texts, pretrain_steps=1)
    assert list(tmp_path.iterdir()) == []
