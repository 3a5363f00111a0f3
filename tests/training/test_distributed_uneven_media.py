"""2 FSDP2 ranks whose batches hold different media (none, images, a video) train as one process does.

A rank without media still runs the vision tower (on zero patches, with zero weight; Qwen3-VL's DeepStack mergers
too), so both ranks issue the same all-gathers and reduce-scatters; the losses and weights equal a single-process run
over the same global batches.
"""

import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from support.families import FAMILIES
from support.media import photo
from support.recipes_support import REPO, load_recipe, metrics, run_command

# Without shuffling, rank r reads records r, r + 2, ...: step 1 gives rank 0 two text-only records and rank 1
# one and two images; step 2 gives rank 0 a video and a text, rank 1 two texts (each rank is text-only once).
MEDIA_OF_RECORD = [(), ("image",), (), ("image", "image"), ("video",), (), (), ()]
STEPS = 2
# Each video's frames at 64 x 64 px: a per-frame budget (Qwen2/2.5-VL) or the whole clip's (Qwen3-VL, 4 frames).
VIDEO_OPTIONS = {"qwen2_5_vl": {"min_pixels": 3136, "max_pixels": 3136},
                 "qwen3_vl": {"min_pixels": 4096, "max_pixels": 4 * 64 * 64}}  # fmt: skip


def _write_records(data_dir):
    lines = []
    for index, media in enumerate(MEDIA_OF_RECORD):
        record = {"id": f"r{index}"}
        images = [f"img{index}_{k}.png" for k, kind in enumerate(media) if kind == "image"]
        for k, name in enumerate(images):
            photo(56 + 28 * k, 56, seed=10 * index + k).save(data_dir / name)
        if images:
            record["image"] = images
        if "video" in media:
            frames = [f"vid{index}_{t}.png" for t in range(4)]
            for t, name in enumerate(frames):
                photo(56, 56, seed=100 + t).save(data_dir / name)
            record["video"] = [frames]  # one video of 4 frames
        question = "".join(f"<{kind}>\n" for kind in media) + f"Question {index}: what is shown?"
        record["conversations"] = [{"from": "human", "value": question},
                                   {"from": "gpt", "value": f"Answer number {index}, in a few words."}]  # fmt: skip
        lines.append(json.dumps(record))
    (data_dir / "train.jsonl").write_text("\n".join(lines) + "\n")


def _config(tmp_path, family="qwen2_5_vl", **overrides):
    data_dir = tmp_path / "data"
    if not data_dir.is_dir():
        data_dir.mkdir()
        _write_records(data_dir)
    cfg = OmegaConf.load(REPO / "configs" / f"{FAMILIES[family].tiny_config}.yaml")
    cfg.dataset = {"_component_": "qwenvl_data.datasets.multimodal_chat_dataset", "source": "jsonl",
                   "data_files": str(data_dir / "train.jsonl"), "image_dir": str(data_dir),
                   "video_options": VIDEO_OPTIONS[family]}  # fmt: skip
    cfg.pop("eval_dataset")
    cfg.eval_every_n_steps = None  # it validates on eval_dataset
    # SGD: a weight's difference between the two runs is lr x the gradients' difference, which the float32
    # bound below covers (Adam divides by sqrt(v) and would amplify rounding in near-zero gradients).
    settings = {"shuffle": False, "batch_size": 2, "max_steps_per_epoch": STEPS, "epochs": 1,
                "checkpointer.save_every_n_steps": None,
                "optimizer": {"_component_": "torch.optim.SGD", "lr": 0.5, "fused": False}, "lr_scheduler": None,
                "metric_logger._component_": "torchtune.training.metric_logging.DiskLogger", **overrides}  # fmt: skip
    for key, value in settings.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def _single_and_two_ranks(tmp_path, recipe_name, family="qwen2_5_vl", **overrides):
    """(one process with the global batch, two ranks with half of it each): their output directories."""
    single_cfg = _config(tmp_path, family, output_dir=str(tmp_path / "single"), **overrides)
    single_cfg.batch_size = 2 * single_cfg.batch_size
    module = load_recipe(f"{recipe_name}_single_device")
    recipe_class = next(v for k, v in vars(module).items() if k.endswith("SingleDevice"))
    module.run_recipe(recipe_class, single_cfg)
    ranks_cfg = _config(tmp_path, family, output_dir=str(tmp_path / "ranks"), **overrides)
    config_path = tmp_path / "ranks.yaml"
    OmegaConf.save(ranks_cfg, config_path)
    run_command(["tune", "run", "--nproc_per_node", "2", f"recipes/{recipe_name}_distributed.py",
                 "--config", str(config_path)], timeout=420)  # fmt: skip
    return tmp_path / "single", tmp_path / "ranks"


def _assert_same_training(single, ranks):
    """Losses and weights equal up to float32 rounding of two differently shaped computations.

    The runs sum the same terms in other orders (batches of 2 vs 4 rows padded to other lengths, gradients
    summed over ranks by gloo), so each result is off by rounding only. A float32 sum of K terms is off by about
    eps * sqrt(K) of the terms' scale (rounding errors of random sign); the longest chain of sums here is the
    151,936-way logsumexp plus every matmul's reduction (2 decoder layers of 128 + 256 + 256 + 128 + 128 and the
    vision tower's 64 + 256 + 64 + 128 per block; Qwen3-VL's tiny model is no wider, its patch rows 1536 values):
    K < 2e5, so eps * sqrt(K) < 6e-5 relative; twice that for two
    runs, per step. An SGD step moves a weight by lr x its gradient, whose elements the clip (norm 1) bounds
    by 1: after S steps two runs' weights are apart by at most S * lr * 1.2e-4.
    """
    eps, longest_sum = torch.finfo(torch.float32).eps, 2e5
    relative = 2 * eps * longest_sum**0.5
    one, two = metrics(single), metrics(ranks)
    assert two["world_size"] == 2 and len(one["history"]["loss"]) == STEPS
    torch.testing.assert_close(two["history"]["loss"], one["history"]["loss"], rtol=STEPS * relative, atol=0)
    lr = 0.5
    unsharded = load_file(single / "hf_model" / "model.safetensors")
    sharded = load_file(ranks / "hf_model" / "model.safetensors")
    assert sharded.keys() == unsharded.keys()
    for key in unsharded:
        torch.testing.assert_close(sharded[key], unsharded[key], rtol=0, atol=STEPS * lr * relative, msg=key)


@pytest.mark.parametrize("family", VIDEO_OPTIONS)
def test_ranks_with_text_only_images_or_a_video_train_as_one_process_full(tmp_path, family):
    """Full fine-tune, padded batches, tower and merger(s) trained: the tower's weights move on both runs alike."""
    single, ranks = _single_and_two_ranks(tmp_path, "full_finetune", family)
    _assert_same_training(single, ranks)


def test_ranks_with_text_only_images_or_a_video_train_as_one_process_lora_packed(tmp_path):
    """LoRA, packed rows (one sample a row, so both runs pack the same rows), frozen tower, trained merger."""
    packed = {"dataset.packed": True, "dataset.packed_buffer_size": 1, "tokenizer.max_seq_len": 128,
              "model._component_": "qwenvl_data.models.lora_qwen2_5_vl_tiny",
              "model.lora_attn_modules": ["q_proj", "v_proj"],
              "model.lora_rank": 4, "model.lora_alpha": 8,
              "batch_size": 1, "gradient_accumulation_steps": 2}  # fmt: skip
    single, ranks = _single_and_two_ranks(tmp_path, "lora_finetune", **packed)
    _assert_same_training(single, ranks)
