"""Configs: every shipped YAML names importable components and keys its recipe accepts; bad keys fail clearly."""

import re
import subprocess

import pytest
from omegaconf import OmegaConf
from support.recipes_support import REPO, TINY_OVERRIDES, load_config, load_recipe, recipe_class
from torchtune.config._utils import _get_component_from_path

from qwenvl_data.training._config import check_config_keys

CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))


def _recipe_for(config_name: str) -> str:
    if config_name == "generate":
        return "generate"
    method = "lora" if "lora" in config_name else "full"
    where = "distributed" if config_name.endswith("distributed") else "single_device"
    return f"{method}_finetune_{where}"


def _components(node, path=""):
    if isinstance(node, dict):
        if "_component_" in node:
            yield path, node["_component_"]
        for key, value in node.items():
            yield from _components(value, f"{path}.{key}" if path else key)


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_names_importable_components(name):
    raw = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / f"{name}.yaml"), resolve=False)
    components = list(_components(raw))
    assert components
    for key, component in components:
        assert callable(_get_component_from_path(component)), f"{name}: {key}"


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "generate"])
def test_shipped_config_keys_are_accepted_by_its_recipe(name):
    recipe = recipe_class(_recipe_for(name))
    from qwenvl_data.training._settings import LORA_KEYS, OPTIONAL_KEYS, REQUIRED_KEYS, VALUE_RULES

    cfg = OmegaConf.load(REPO / "configs" / f"{name}.yaml")
    cfg.device = "cpu"  # the released configs ask for cuda, which this machine may not have
    check_config_keys(cfg, name, REQUIRED_KEYS, OPTIONAL_KEYS + (LORA_KEYS if recipe.lora else ()), VALUE_RULES)
    assert recipe.lora == ("lora" in name)


@pytest.mark.parametrize(("model_type", "sizes"), [("qwen2_5_vl", ("3b", "7b", "32b", "72b")), ("qwen2_vl", ("2b", "7b"))])
def test_released_configs_cover_every_size_full_and_lora(model_type, sizes):
    for size in sizes:
        for method in ("full", "lora"):
            assert any(n.startswith(f"{model_type}_{size}_{method}_") for n in CONFIGS), (size, method)


def _recipe_class(name: str = "full_finetune_single_device"):
    return load_recipe(name).FullFinetuneRecipeSingleDevice


def test_misspelled_key_is_named_with_a_suggestion():
    cfg = load_config("tiny_synthetic", {**TINY_OVERRIDES, "epoch": 3})
    with pytest.raises(ValueError, match=r"unknown key `epoch` \(did you mean `epochs`\?\)"):
        _recipe_class()(cfg)


def test_missing_required_key_is_named():
    cfg = load_config("tiny_synthetic", TINY_OVERRIDES)
    del cfg["optimizer"]
    with pytest.raises(ValueError, match="missing required key `optimizer`"):
        _recipe_class()(cfg)


def test_unknown_component_argument_is_refused_before_setup_with_a_suggestion(tmp_path):
    cfg = load_config("tiny_synthetic", {**TINY_OVERRIDES, "output_dir": str(tmp_path), "dataset.num_sample": 5})
    with pytest.raises(ValueError, match=r"unknown key `dataset.num_sample` .*did you mean `dataset.num_samples`"):
        _recipe_class()(cfg)


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("optimizer.lr", "abc", "got the text 'abc'; torch.optim.AdamW's default: 0.001"),
        ("lr_scheduler.num_warmup_steps", "ten", "got the text 'ten'"),  # annotated int, no default
        ("tokenizer.max_seq_len", "abc", "got the text 'abc'"),  # annotated int | None, default None
        ("dataset.num_samples", "512", "got the text '512'; .* write it without quotes"),  # a quoted number
    ],
)
def test_text_where_a_component_takes_a_number_is_named_before_building(tmp_path, key, value, says):
    cfg = load_config("tiny_synthetic", {**TINY_OVERRIDES, "output_dir": str(tmp_path), key: value})
    with pytest.raises(ValueError, match=rf"`{re.escape(key)}` must be a number, {says}"):
        _recipe_class()(cfg)


def test_component_that_does_not_exist_is_named(tmp_path):
    cfg = load_config("tiny_synthetic", {**TINY_OVERRIDES, "output_dir": str(tmp_path),
                                         "loss._component_": "qwenvl_data.training.NoSuchLoss"})  # fmt: skip
    with pytest.raises(ValueError, match=r"`loss._component_`.*NoSuchLoss"):
        _recipe_class()(cfg)


def test_interpolated_helper_keys_are_allowed_but_unused_ones_are_not():
    cfg = OmegaConf.create({"a": 1, "shared": 2, "stray": 3, "b": "${shared}"})
    check_config_keys(OmegaConf.create({"a": 1, "shared": 2, "b": "${shared}"}), "r", ["a", "b"], [])
    with pytest.raises(ValueError, match="unknown key `stray`"):
        check_config_keys(cfg, "r", ["a", "b"], [])


def test_released_config_without_checkpoint_dir_says_so():
    cfg = load_config("qwen2_5_vl_7b_lora_single_device", {"device": "cpu"})
    with pytest.raises(Exception, match="checkpoint_dir"):
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def _setup_error(recipe_name: str, config_name: str, overrides: dict, tmp_path) -> str:
    recipe_type = recipe_class(recipe_name)
    cfg = load_config(config_name, {**TINY_OVERRIDES, "output_dir": str(tmp_path), **overrides})
    recipe = recipe_type(cfg)
    with pytest.raises(ValueError) as error:
        recipe.setup(cfg)
    return str(error.value)


def test_lora_recipe_rejects_a_model_without_adapters(tmp_path):
    message = _setup_error("lora_finetune_single_device", "tiny_synthetic", {}, tmp_path)
    assert "builds a model without LoRA/DoRA adapters: run it with a full_finetune_* recipe" in message


def test_full_recipe_rejects_a_model_with_adapters(tmp_path):
    lora_model = {"model._component_": "qwenvl_data.models.lora_qwen2_5_vl_tiny", "model.lora_attn_modules": ["q_proj"],
                  "model.lora_rank": 4, "model.lora_alpha": 8}  # fmt: skip
    message = _setup_error("full_finetune_single_device", "tiny_synthetic", lora_model, tmp_path)
    assert "builds a model with LoRA/DoRA adapters: run it with a lora_finetune_* recipe" in message


def test_lora_recipe_takes_an_adapted_model_from_a_builder_of_any_name(tmp_path):
    """`qwen2_5_vl_from_hf_config` builds LoRA or not by its arguments: the model decides, not the name."""
    from support.models_reference import tiny_hf_config

    hf_config = tiny_hf_config().to_dict()
    cfg = load_config("tiny_synthetic_lora", {**TINY_OVERRIDES, "output_dir": str(tmp_path)})
    cfg.model = OmegaConf.create({"_component_": "qwenvl_data.models.qwen2_5_vl_from_hf_config",
                                  "config": hf_config, "lora_attn_modules": ["q_proj", "v_proj"],
                                  "lora_rank": 4, "lora_alpha": 8})  # fmt: skip
    recipe = load_recipe("lora_finetune_single_device").LoRAFinetuneRecipeSingleDevice(cfg)
    recipe.setup(cfg)
    trainable = {name for name, p in recipe.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or name.startswith("visual.merger.") for name in trainable)


def test_generate_recipe_needs_a_prompt_or_a_dataset(tmp_path):
    cfg = load_config("generate", {"checkpoint_dir": str(tmp_path), "prompt": None})
    del cfg["dataset"]
    with pytest.raises(ValueError, match="set `prompt`"):
        load_recipe("generate").GenerateRecipe(cfg)




def test_tune_run_finds_this_repos_recipe_and_reports_a_bad_override():
    """`tune run recipes/<name>.py` must run OUR file (torchtune's wheel also installs a `recipes` package)."""
    command = ["tune", "run", "recipes/full_finetune_single_device.py", "--config", "configs/tiny_synthetic.yaml",
               "epoch=3"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "torchtune recipes directory isn't a package" not in result.stderr, (
        "tune resolved torchtune's `recipes` package: the install must register the "
        "`torch.backends` entry point `_qwenvl_recipes_finder:install` (see pyproject.toml)"
    )
    assert result.returncode == 1
    # A refusal is the message alone, as the last line: no traceback burying it.
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ConfigError: FullFinetuneRecipeSingleDevice: bad config: ")
    assert "unknown key `epoch` (did you mean `epochs`?)" in last_line


@pytest.mark.parametrize("freeze_tower, freeze_merger", [(True, False), (False, True), (True, True)])
def test_freeze_options_freeze_the_vision_tower_and_the_merger_separately(freeze_tower, freeze_merger):
    from qwenvl_data.models import qwen2_5_vl_tiny
    from qwenvl_data.training._model_setup import prepare_model

    cfg = load_config("tiny_synthetic", {"freeze_vision_tower": freeze_tower, "freeze_merger": freeze_merger})
    recipe = load_recipe("full_finetune_single_device").FullFinetuneRecipeSingleDevice(cfg)
    model = qwen2_5_vl_tiny()
    prepare_model(model, recipe.settings, lora=False)
    merger = {f"visual.merger.{name}" for name, _ in model.visual.merger.named_parameters()}
    tower = {f"visual.{name}" for name, _ in model.visual.named_parameters()} - merger
    expected = (tower if freeze_tower else set()) | (merger if freeze_merger else set())
    assert {name for name, p in model.named_parameters() if not p.requires_grad} == expected
    assert any(p.requires_grad for p in model.decoder.parameters())


@pytest.mark.parametrize("freeze_tower, freeze_merger", [(True, False), (False, True)])
def test_the_merger_options_cover_qwen3_vl_deepstack_mergers(freeze_tower, freeze_merger):
    """Qwen3-VL's DeepStack mergers project to the language model like its merger: freeze_merger, not the tower's
    option, decides whether they train."""
    from qwenvl_data.models import qwen3_vl_tiny
    from qwenvl_data.training._model_setup import prepare_model

    cfg = load_config("tiny_synthetic", {"freeze_vision_tower": freeze_tower, "freeze_merger": freeze_merger})
    recipe = load_recipe("full_finetune_single_device").FullFinetuneRecipeSingleDevice(cfg)
    model = qwen3_vl_tiny()
    prepare_model(model, recipe.settings, lora=False)
    mergers = {f"visual.{name}" for name, _ in model.visual.named_parameters() if "merger" in name}
    assert any(".deepstack_mergers.1." in name for name in mergers)
    tower = {f"visual.{name}" for name, _ in model.visual.named_parameters()} - mergers
    expected = (tower if freeze_tower else set()) | (mergers if freeze_merger else set())
    assert {name for name, p in model.named_parameters() if not p.requires_grad} == expected


@pytest.mark.parametrize(
    ("overrides", "tower", "merger"),
    [
        ({}, False, True),  # LoRA's default: adapters and the merger
        ({"freeze_merger": True}, False, False),
        ({"freeze_vision_tower": False}, True, True),
        ({"model.train_merger": False}, False, False),  # the older spelling in the model section still works
    ],
)
def test_lora_trainability_uses_the_same_freeze_keys_as_full_fine_tunes(tmp_path, overrides, tower, merger):
    cfg = load_config("tiny_synthetic_lora", {**TINY_OVERRIDES, "output_dir": str(tmp_path), **overrides})
    recipe = load_recipe("lora_finetune_single_device").LoRAFinetuneRecipeSingleDevice(cfg)
    recipe.setup(cfg)
    trainable = {name for name, p in recipe.model.named_parameters() if p.requires_grad}
    assert any(".lora_" in name for name in trainable)
    assert any(n.startswith("visual.merger.") for n in trainable) == merger
    assert any(n.startswith("visual.") and not n.startswith("visual.merger.") for n in trainable) == tower


@pytest.mark.parametrize("loss", ["torch.nn.CrossEntropyLoss", "torchtune.modules.loss.CEWithChunkedOutputLoss"])
def test_a_loss_of_another_contract_is_refused_before_training(tmp_path, loss):
    """(logits, labels) losses would fail only at the first step, after the pre-training evaluation."""
    message = _setup_error("full_finetune_single_device", "tiny_synthetic", {"loss._component_": loss}, tmp_path)
    assert f"config key `loss` ({loss}) takes" in message and "loss_fn(hidden [N, dim], output_projection" in message


def test_every_top_level_value_is_checked_by_the_same_rules_and_reported_at_once():
    """The long-run keys (validation, HF step directories) are checked with all the others, before setup."""
    bad = {"eval_every_n_steps": 0, "keep_last_n_hf": 1.5, "save_hf_every_n_steps": "often", "batch_size": 2.7}
    with pytest.raises(ValueError) as error:
        _recipe_class()(load_config("tiny_synthetic", {**TINY_OVERRIDES, **bad}))
    message = str(error.value)
    assert message.startswith("FullFinetuneRecipeSingleDevice: bad config: ")
    for problem in ("`eval_every_n_steps` must be >= 1, got 0", "`keep_last_n_hf` must be int, got float 1.5",
                    "`save_hf_every_n_steps` must be int or null, got str 'often'", "`batch_size` must be int"):
        assert problem in message, problem
