"""The README's main command, shortened: tune run the tiny full fine-tune, then LoRA, then generate."""

import json

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from qwenvl_data.collate import Qwen2_5_VLCollator
from qwenvl_data.models import load_hf_model
from qwenvl_data.training import answer_accuracy, packaged_vocab_transform, run_recipe
from qwenvl_data.training._config import build
from support.families import FAMILIES
from support.recipes_support import (
    TINY_OVERRIDES, as_cli, load_config, load_recipe, metrics, refusal_line, run_command, threads_of_run_command,
)  # fmt: skip

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_command(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    command = ["tune", "run", "recipes/full_finetune_single_device.py", "--config", "configs/tiny_synthetic.yaml"]
    return out, run_command([*command, f"output_dir={out}", *as_cli(TINY_OVERRIDES)], timeout=300)


@pytest.fixture(scope="module")
def tiny_run(tiny_command):
    out, result = tiny_command
    return out, result.stdout


def test_tiny_run_prints_progress_accuracies_and_the_checkpoint_path(tiny_run):
    out, stdout = tiny_run
    assert "loss=" in stdout and "tok_s=" in stdout  # the tqdm bar's postfix
    assert "held-out answer accuracy before training" in stdout
    assert "held-out answer accuracy after training" in stdout
    assert stdout.strip().splitlines()[-1] == f"HF checkpoint: {out / 'hf_model'}"


def test_tiny_run_prints_no_warning_of_a_library(tiny_command):
    """stderr holds only what a person needs: here nothing (no deprecation warnings of torch, torchdata, ...)."""
    _, result = tiny_command
    assert not [line for line in result.stderr.splitlines() if "Warning" in line], result.stderr


def test_tiny_run_shows_generated_answers_to_held_out_questions_before_its_last_lines(tiny_run):
    out, stdout = tiny_run
    cfg = load_config("tiny_synthetic", TINY_OVERRIDES)
    eval_set = build(cfg, "eval_dataset", packaged_vocab_transform(max_seq_len=256, max_pixels=cfg.max_pixels))
    examples = metrics(out)["history"]["examples"]
    assert len(examples) == min(cfg.eval_examples, len(eval_set)) > 0
    lines = stdout.strip().splitlines()
    header = lines.index(f"answers to {len(examples)} held-out questions (generated):")
    assert header < len(lines) - 2  # the run's summary and the checkpoint path stay the last lines
    for i, (example, line) in enumerate(zip(examples, lines[header + 1 :])):
        sample = eval_set[i]
        assert example["truth"] == sample["answer"] and example["picture"] == sample["description"]
        assert example["correct"] == (example["answer"] == example["truth"])
        assert example["question"].endswith("?") and "<|" not in example["question"]
        assert example["picture"] in line and example["question"] in line and repr(example["answer"]) in line


def test_tiny_run_writes_metrics_plot_and_hf_directory(tiny_run):
    out, _ = tiny_run
    run = metrics(out)
    assert run["steps"] == TINY_OVERRIDES["max_steps_per_epoch"]
    assert len(run["history"]["loss"]) == run["steps"]
    assert all(loss > 0 for loss in run["history"]["loss"])
    assert run["history"]["eval_before"]["total"] == TINY_OVERRIDES["eval_dataset.num_samples"]
    assert (out / "loss.png").read_bytes()[:8] == PNG_MAGIC
    hf_dir = out / "hf_model"
    assert json.loads((hf_dir / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    assert list(hf_dir.glob("*.safetensors"))
    assert not list(out.glob("*.partial")) and not list((out / "training_state").glob(".*partial"))


def test_hf_checkpoint_holds_exactly_the_trained_weights(tiny_run):
    """load_hf_model(final dir) == the model weights of the last resumable training state, bit for bit."""
    out, _ = tiny_run
    reloaded = load_hf_model(out / "hf_model").state_dict()
    trained = build(load_config("tiny_synthetic", TINY_OVERRIDES), "model").state_dict()  # the run's model
    last_state = sorted((out / "training_state").glob("step_*"))[-1]
    dcp.load({"model": trained}, checkpoint_id=last_state / "model_optimizer")
    assert reloaded.keys() == trained.keys()
    for key in trained:
        assert torch.equal(reloaded[key], trained[key]), key


def test_reloaded_checkpoint_scores_the_reported_accuracy(tiny_run):
    out, _ = tiny_run
    cfg = load_config("tiny_synthetic", {**TINY_OVERRIDES})
    transform = packaged_vocab_transform(max_seq_len=256, max_pixels=cfg.max_pixels)
    eval_set = build(cfg, "eval_dataset", transform)  # the run's held-out set, every option as configured
    with threads_of_run_command():  # the same computation as the run's, so the same loss to the last bit
        result = answer_accuracy(
            load_hf_model(out / "hf_model"), eval_set, Qwen2_5_VLCollator(), batch_size=8,
            device=torch.device("cpu"), dtype=torch.float32,
        )  # fmt: skip
    assert result == metrics(out)["history"]["eval_after"]


def test_generate_recipe_greedy_answers_agree_with_teacher_forced_accuracy(tiny_run):
    """Exact-match greedy generation and the one-pass teacher-forced check must give the same verdicts."""
    out, _ = tiny_run
    generate = load_recipe("generate")
    cfg = load_config("generate", {
        "checkpoint_dir": str(out / "hf_model"), "output_dir": str(out / "generate"),
        "dataset.num_samples": 8, "dataset.image_size": [56, 56],
    })  # fmt: skip
    recipe = generate.GenerateRecipe(cfg)
    recipe.setup(cfg)
    result = recipe.generate()
    assert result["total"] == 8
    assert result["correct"] == metrics(out)["history"]["eval_after"]["correct"]
    lines = (out / "generate" / "answers.jsonl").read_text().splitlines()
    assert [json.loads(line)["correct"] for line in lines] == [r["correct"] for r in result["records"]]


def test_generate_recipe_answers_a_question_about_an_image_file(tiny_run, tmp_path):
    from PIL import Image

    out, _ = tiny_run
    Image.new("RGB", (56, 56), (220, 30, 30)).save(tmp_path / "red.png")
    generate = load_recipe("generate")
    cfg = load_config("generate", {
        "checkpoint_dir": str(out / "hf_model"), "prompt": "What color is the square?",
        "images": [str(tmp_path / "red.png")], "max_new_tokens": 4,
    })  # fmt: skip
    recipe = generate.GenerateRecipe(cfg)
    recipe.setup(cfg)
    answer = recipe.generate()["answer"]
    assert isinstance(answer, str) and "<|im_end|>" not in answer


def test_generate_recipe_refuses_a_missing_image_or_checkpoint_in_one_line(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    generate = load_recipe("generate")
    missing_image = load_config("generate", {
        "checkpoint_dir": str(out / "hf_model"), "prompt": "Shape?", "images": [str(tmp_path / "nope.png")],
    })  # fmt: skip
    line = refusal_line(capsys, lambda: generate.run_generate(missing_image))
    assert line.startswith("ImageLoadError: ") and "nope.png does not exist" in line
    missing_checkpoint = load_config("generate", {"checkpoint_dir": str(tmp_path / "nothing"), "prompt": "Shape?"})
    line = refusal_line(capsys, lambda: generate.run_generate(missing_checkpoint))
    assert line.startswith("MissingInputError: ") and str(tmp_path / "nothing") in line


def test_generate_recipe_answers_a_batch_of_prompts_as_it_answers_each_alone(tiny_run, tmp_path):
    from PIL import Image

    out, _ = tiny_run
    Image.new("RGB", (56, 84), (30, 30, 220)).save(tmp_path / "blue.png")
    questions = ["What color is the square?", "Shape?", "Is there a circle in this picture, and what color is it?"]
    generate = load_recipe("generate")

    def answers(prompt, **options) -> list[str] | str:
        cfg = load_config("generate", {
            "checkpoint_dir": str(out / "hf_model"), "prompt": prompt, "images": [str(tmp_path / "blue.png")],
            "max_new_tokens": 6, **options,
        })  # fmt: skip
        recipe = generate.GenerateRecipe(cfg)
        recipe.setup(cfg)
        return recipe.generate()["answer"]

    batched = answers(questions)  # one left-padded batch of three prompts of different lengths
    assert batched == [answers(question) for question in questions]
    sampled = answers(questions, temperature=1.5, top_k=50, top_p=0.9)  # the sampling keys reach generate
    assert len(sampled) == 3 and sampled != batched


def run_lora_recipe(out, base_dir, config="tiny_synthetic_lora", **overrides):
    """A tiny LoRA config (a family's ``tiny_lora_config``) for two steps on a saved random base checkpoint, in
    this process."""
    recipe = load_recipe("lora_finetune_single_device")
    cfg = load_config(config, {
        **TINY_OVERRIDES, "max_steps_per_epoch": 2, "eval_dataset.num_samples": 4, "output_dir": str(out),
        "checkpointer.output_dir": str(out), "checkpointer.checkpoint_dir": str(base_dir), "init_std": None,
        **overrides,
    })  # fmt: skip
    run_recipe(recipe.LoRAFinetuneRecipeSingleDevice, cfg)


@pytest.fixture(scope="module")
def base_dir(request, tmp_path_factory):
    """A tiny random transformers checkpoint of a family (Qwen2.5-VL unless a test names another)."""
    family = FAMILIES[getattr(request, "param", "qwen2_5_vl")]
    model_dir = tmp_path_factory.mktemp(f"base_{family.model_type}")
    family.save_random(model_dir, seed=2)
    return model_dir


@pytest.mark.parametrize("base_dir", FAMILIES, indirect=True)
def test_lora_recipe_saves_a_peft_adapter_and_merged_weights_that_agree(tmp_path, base_dir):
    from support.models_reference import hf_forward
    from peft import PeftModel
    from support.vl_samples import vl_sample

    from qwenvl_data.collate import padded_collate_qwen2_5_vl

    family = FAMILIES[json.loads((base_dir / "config.json").read_text())["model_type"]]
    out = tmp_path / "lora"
    run_lora_recipe(out, base_dir, family.tiny_lora_config)
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if k.endswith(".lora_B.weight")]
    assert lora_b and all(k.startswith("base_model.model.model.") for k in adapter)
    assert any(torch.count_nonzero(v) for v in lora_b)  # trained away from 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    # Trained in full beside the adapters: the merger, and Qwen3-VL's DeepStack mergers (one per index the base's
    # config.json lists).
    deepstack = json.loads((base_dir / "config.json").read_text())["vision_config"].get("deepstack_visual_indexes", [])
    mergers = ["visual.merger", *(f"visual.deepstack_merger_list.{i}" for i in range(len(deepstack)))]
    assert (config["peft_type"], config["r"], config["modules_to_save"]) == ("LORA", 8, mergers)
    assert {"tokenizer.json", "chat_template.json", "preprocessor_config.json"} <= {
        p.name for p in (out / "hf_model").iterdir()
    }
    assert json.loads((out / "hf_model" / "config.json").read_text())["model_type"] == family.model_type
    samples = [vl_sample((("image", 8, 8),), seed=1, family=family.model_type), vl_sample(seed=2, family=family.model_type)]
    batch = padded_collate_qwen2_5_vl(samples, position_rule=family.family.position_rule)
    peft_model = PeftModel.from_pretrained(family.hf_class.from_pretrained(base_dir), out / "adapter").eval()
    merged = family.hf_class.from_pretrained(out / "hf_model").eval()
    with torch.no_grad():
        difference = hf_forward(peft_model, batch).logits - hf_forward(merged, batch).logits
    assert difference[batch["attention_mask"]].abs().max() <= 1e-4


def test_qlora_dora_recipe_writes_its_merged_weights_and_leaves_nothing_partial(tmp_path, base_dir):
    out = tmp_path / "qdora"
    # NF4 needs 64 x 256-value blocks: the tiny model's v_proj (64 x 128) is too small, q_proj is not.
    run_lora_recipe(out, base_dir, **{"model.quantize_base": True, "model.use_dora": True,
                                      "model.lora_attn_modules": ["q_proj", "output_proj"]})  # fmt: skip
    merged = load_hf_model(out / "hf_model")
    assert merged.tok_embeddings.weight.dtype == torch.float32  # the run's dtype, not NF4
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    assert not list(out.glob("*.partial"))
