"""`tune run` of each family's tiny from-scratch configs (full and LoRA) end to end: the HF directory it writes is
that family's, transformers' class of the family loads it to our logits, and transformers' tokenizer of it renders
the family's chat template to the run's token ids. (The default's runs, Qwen2.5-VL, are
test_recipes_end_to_end's, which also checks each family's LoRA adapter in PEFT against the merged weights.)"""

import json

import pytest
import torch
from support.families import FAMILIES
from support.models_reference import hf_forward
from support.media import photo
from support.recipes_support import TINY_OVERRIDES, as_cli, load_config, metrics, run_command
from torchtune import config as tune_config
from transformers import AutoTokenizer
from support.vl_samples import vl_sample

from qwenvl_data._constants import IMAGE_PAD_ID
from qwenvl_data.collate import padded_collate_qwen2_5_vl
from qwenvl_data.models import family_of_model, load_hf_model

# Logits of the same fp32 weights by two implementations (sums in another order): the model tests' bound.
TOLERANCE = 1e-4
OTHER_FAMILIES = [name for name in FAMILIES if name != "qwen2_5_vl"]


@pytest.fixture(scope="module", params=[(name, method) for name in OTHER_FAMILIES for method in ("full", "lora")],
                ids=lambda param: "-".join(param))  # fmt: skip
def family_run(request, tmp_path_factory):
    """(family, method, output_dir, stdout) of `tune run` of the family's tiny full or LoRA config, a few steps."""
    name, method = request.param
    family = FAMILIES[name]
    config = family.tiny_config if method == "full" else family.tiny_lora_config
    out = tmp_path_factory.mktemp(f"{name}_{method}") / "run"
    command = ["tune", "run", f"recipes/{method}_finetune_single_device.py", "--config", f"configs/{config}.yaml"]
    result = run_command([*command, f"output_dir={out}", *as_cli(TINY_OVERRIDES)], timeout=300)
    return family, method, out, result.stdout


def test_tiny_config_trains_and_writes_the_familys_hf_directory(family_run):
    family, method, out, stdout = family_run
    assert stdout.strip().splitlines()[-1] == f"HF checkpoint: {out / 'hf_model'}"
    assert metrics(out)["steps"] == TINY_OVERRIDES["max_steps_per_epoch"]
    config = json.loads((out / "hf_model" / "config.json").read_text())
    assert config["model_type"] == family.model_type
    assert config["architectures"] == [family.family.architecture]
    assert family_of_model(load_hf_model(out / "hf_model")) is family.family
    assert (out / "adapter").exists() == (method == "lora")  # a LoRA run's adapter beside its merged weights


def test_transformers_loads_the_trained_checkpoint_to_our_logits(family_run):
    family, _, out, _ = family_run
    ours = load_hf_model(out / "hf_model").eval()
    reference = family.hf_class.from_pretrained(out / "hf_model").eval()
    samples = [
        vl_sample((("image", 4, 8), ("video", 2, 4, 4, 1.0)), question_len=5, seed=1, family=family.model_type),
        vl_sample(question_len=9, seed=2, family=family.model_type),
    ]
    batch = padded_collate_qwen2_5_vl(samples, position_rule=family.family.position_rule)
    with torch.no_grad():
        difference = ours(**batch) - hf_forward(reference, batch).logits
    assert difference[batch["attention_mask"]].abs().max() <= TOLERANCE


def test_transformers_tokenizer_of_the_written_directory_gives_the_runs_ids(family_run):
    """The run's transform (its config's ``tokenizer``) against ``AutoTokenizer`` of the HF directory rendering the
    chat template written there: the family's (Qwen3-VL: no default system prompt, ``<think>`` one token)."""
    family, method, out, _ = family_run
    config = family.tiny_config if method == "full" else family.tiny_lora_config
    trained_with = tune_config.instantiate(load_config(config, {}).tokenizer)
    conversation = [
        {"role": "user", "content": [{"type": "image", "image": photo(90, 60, seed=3)},
                                     {"type": "text", "text": "Which shape? <think>red</think> <tool_call>"}]},
        {"role": "assistant", "content": "A square."},
    ]  # fmt: skip
    tokens = trained_with({"messages": conversation})["tokens"]
    tokenizer = AutoTokenizer.from_pretrained(out / "hf_model")
    text = tokenizer.apply_chat_template([
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": conversation[0]["content"][1]["text"]}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
    ], tokenize=False)  # fmt: skip
    assert text.startswith("<|im_start|>system") == (family.family.chat_template.default_system_prompt is not None)
    # The template writes one <|image_pad|> per image; the processor expands it to the image's token count.
    collapsed = [t for i, t in enumerate(tokens) if t != IMAGE_PAD_ID or tokens[i - 1] != IMAGE_PAD_ID]
    assert tokenizer(text)["input_ids"] == collapsed
    for token in family.family.chat_template.added_tokens:
        assert tokenizer.convert_tokens_to_ids(token) == trained_with.special_tokens[token]
