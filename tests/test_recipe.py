"""One recipe: the calls the notebook writes (tokenization, collator, training arguments, LoRA) build exactly what the
instructor command trains with (`lab_utils.backstage.recipe`). The notebook's cells are executed here, by cell id."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from notebook import run_cells

from lab_utils.backstage import recipe
from lab_utils.data import build_prompt, load_dialogsum_csv, split_sizes
from lab_utils.models import fingerprint


@pytest.fixture(scope="module")
def data_400(tmp_path_factory):
    """Tiny DialogSum-shaped data with 400 training rows: every 100th leaves the collator cell 4 examples."""
    from conftest import write_dialogsum

    return write_dialogsum(tmp_path_factory.mktemp("dialogsum-400"), n_train=400)


@pytest.fixture
def namespace(data_400, tokenizer, tiny_model, tmp_path):
    """What the cells before each recipe cell leave in the kernel, on tiny data and a tiny model."""
    from conftest import SETTINGS

    settings = SETTINGS.replace(work_dir=str(tmp_path), max_source_length=40, max_target_length=12)
    namespace = {
        "settings": settings,
        "dataset": load_dialogsum_csv(data_400),
        "tokenizer": tokenizer,
        "original_model": tiny_model,
        "original_fingerprint": fingerprint(tiny_model),
        "fingerprint": fingerprint,
        "build_prompt": build_prompt,
        "split_sizes": split_sizes,
        "torch": torch,
    }
    return run_cells(["parameters"], namespace)  # the notebook's own LORA_RANK, as a learner has it


def _as_json(args) -> dict:
    return json.loads(json.dumps(recipe.recipe_of(args), default=str))


def test_tokenization_is_the_recipes(namespace):
    ns = run_cells(["tokenize"], namespace)
    settings, dataset, tokenizer = ns["settings"], ns["dataset"], ns["tokenizer"]
    ours = dataset.map(ns["tokenize_function"], batched=True, remove_columns=dataset["train"].column_names)
    theirs = recipe.tokenize(dataset, tokenizer, settings)
    for split in ("train", "validation", "test"):
        assert ours[split].to_dict() == theirs[split].to_dict()
    # truncation at the settings' lengths (40 / 12 here), so a change of either would show
    assert max(len(x) for x in theirs["train"]["input_ids"]) == 40
    assert max(len(x) for x in theirs["train"]["labels"]) == 12
    # and the notebook keeps every 100th example, as the course did
    assert ns["tokenized_datasets"]["test"].to_dict() == theirs["test"].select([0]).to_dict()


def test_collator_is_the_recipes(namespace):
    ns = run_cells(["tokenize", "collator"], namespace)
    ours, theirs = ns["data_collator"], recipe.data_collator(ns["tokenizer"], ns["original_model"])
    assert (ours.label_pad_token_id, ours.padding, ours.model) == (-100, True, ns["original_model"])
    assert (theirs.label_pad_token_id, theirs.padding, theirs.model) == (-100, True, ns["original_model"])


@pytest.mark.parametrize(
    ("cell", "args", "lr"),
    [("full-training-args", "training_args", "full_lr"), ("lora-training-args", "peft_training_args", "lora_lr")],
)
def test_training_arguments_are_the_recipes(namespace, cell, args, lr):
    cells = ["tokenize", "collator", "full-training-args"]
    if cell == "lora-training-args":
        cells += ["lora-config", "lora-training-args"]
    ns = run_cells(cells, namespace)
    settings = ns["settings"]
    ours = ns[args]
    theirs = recipe.training_arguments(settings, getattr(settings, lr), "elsewhere", max_steps=1000, logging_steps=50)
    assert _as_json(ours) == _as_json(theirs)
    assert ours.learning_rate == getattr(settings, lr) and ours.weight_decay == 0.01
    # what may differ is only where and how long the run goes
    assert ours.max_steps == getattr(settings, f"notebook_{lr.split('_')[0]}_steps")


def test_lora_config_is_the_recipes_and_wraps_a_copy(namespace):
    ns = run_cells(["lora-config"], {**namespace, "copy": copy, "fingerprint": fingerprint})
    assert ns["lora_config"].to_dict() == recipe.lora_config().to_dict()
    assert fingerprint(ns["original_model"]) == ns["original_fingerprint"]
    assert not any("lora" in name for name, _ in ns["original_model"].named_modules())
    assert any("lora_A" in name for name, _ in ns["peft_model"].named_parameters())


def test_the_course_values_are_in_the_recipe():
    from lab_utils.config import load_settings

    course = load_settings("course", environ={})
    args = recipe.training_arguments(course, course.full_lr, "x", max_steps=1)
    assert (args.learning_rate, args.weight_decay, args.per_device_train_batch_size) == (1e-5, 0.01, 8)
    assert course.lora_lr == 1e-3
    config = recipe.lora_config()
    assert (config.r, config.lora_alpha, sorted(config.target_modules), config.lora_dropout) == (
        32,
        32,
        ["q", "v"],
        0.05,
    )
    assert config.task_type == "SEQ_2_SEQ_LM"


def test_a_stage_s_recipe_identity_is_what_the_recipe_sets_whatever_is_installed(monkeypatch):
    """The instructor's stage identity lists what the recipe sets beyond the libraries' defaults; a logging package
    installed on another machine (the Trainer's default `report_to`) must not make every stage retrain there."""
    import transformers.integrations

    from lab_utils.config import load_settings

    settings = load_settings("offline", environ={})
    here = recipe.recipe_identity(settings, 1e-3, lora=True, prompt=build_prompt)
    assert here["training_arguments"]["weight_decay"] == 0.01 and here["training_arguments"]["group_by_length"]
    assert here["lora_config"]["r"] == 32 and here["lora_config"]["target_modules"] == ["q", "v"]
    assert here["prompt"] == build_prompt("{dialogue}")
    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", lambda: ["tensorboard"])
    assert recipe.recipe_identity(settings, 1e-3, lora=True, prompt=build_prompt) == here
