"""FSDP2 over 2 CPU ranks (gloo) computes the same losses as one process on the same global batch."""

import torch
from safetensors.torch import load_file

from support.recipes_support import TINY_OVERRIDES, as_cli, load_config, load_recipe, metrics, run_command

# One rank with batch 4 sees the same samples per step as 2 ranks with batch 2 (same sampler seed).
STEPS = {**TINY_OVERRIDES, "max_steps_per_epoch": 3, "eval_dataset.num_samples": 4}


def test_two_rank_fsdp_run_matches_single_process_loss_and_weights(tmp_path):
    single = load_recipe("full_finetune_single_device")
    single.run_recipe(
        single.FullFinetuneRecipeSingleDevice,
        load_config("tiny_synthetic", {**STEPS, "batch_size": 4, "output_dir": str(tmp_path / "single")}),
    )
    command = ["tune", "run", "--nproc_per_node", "2", "recipes/full_finetune_distributed.py",
               "--config", "configs/tiny_synthetic.yaml"]  # fmt: skip
    overrides = {**STEPS, "batch_size": 2, "output_dir": str(tmp_path / "fsdp")}
    result = run_command([*command, *as_cli(overrides)], timeout=420)
    assert f"HF checkpoint: {tmp_path / 'fsdp' / 'hf_model'}" in result.stdout

    fsdp, one = metrics(tmp_path / "fsdp"), metrics(tmp_path / "single")
    assert fsdp["world_size"] == 2 and one["world_size"] == 1
    torch.testing.assert_close(fsdp["history"]["loss"], one["history"]["loss"], rtol=1e-5, atol=1e-5)
    sharded = load_file(tmp_path / "fsdp" / "hf_model" / "model.safetensors")
    unsharded = load_file(tmp_path / "single" / "hf_model" / "model.safetensors")
    assert sharded.keys() == unsharded.keys()
    for key in unsharded:
        torch.testing.assert_close(sharded[key], unsharded[key], rtol=1e-4, atol=1e-5, msg=key)


def test_two_rank_lora_from_hf_checkpoint_on_llava_data_keeps_base_weights_at_lr_zero(tmp_path):
    """Released 7B LoRA config, tiny model: rank 0 reads the checkpoint and streams it to both shards.

    With lr=0 nothing moves and the LoRA B matrices stay zero, so the merged weights written at the
    end must equal the input checkpoint bit for bit: that checks load, broadcast, sharding, gather
    and save together (with activation checkpointing on, as in the config).
    """
    import json
    import shutil

    from support.media import photo
    from qwenvl_data.models import qwen2_5_vl_tiny, save_hf_model
    from qwenvl_data.vocab import qwen_vocab_files

    checkpoint = tmp_path / "base"
    torch.manual_seed(0)
    save_hf_model(qwen2_5_vl_tiny(), checkpoint)
    for path in qwen_vocab_files():
        shutil.copy(path, checkpoint)
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "train.jsonl", "w") as f:
        for i in range(4):
            photo(64 + 8 * i, 56, seed=i).save(data / f"img{i}.png")
            f.write(json.dumps({"id": f"r{i}", "image": f"img{i}.png", "conversations": [
                {"from": "human", "value": "<image>\nDescribe the picture."}, {"from": "gpt", "value": f"Picture {i}."}]}) + "\n")  # fmt: skip
    overrides = {
        "checkpoint_dir": str(checkpoint), "output_dir": str(tmp_path / "out"), "device": "cpu", "dtype": "fp32",
        "dataset.data_files": str(data / "train.jsonl"),  # the model: what checkpoint_dir's config.json describes
        "max_pixels": 3136, "batch_size": 1, "gradient_accumulation_steps": 2, "max_steps_per_epoch": 1,
        "num_workers": 0, "optimizer.lr": 0.0, "optimizer.fused": False,
    }  # fmt: skip
    command = ["tune", "run", "--nproc_per_node", "2", "recipes/lora_finetune_distributed.py",
               "--config", "configs/qwen2_5_vl_7b_lora_distributed.yaml"]  # fmt: skip
    run_command([*command, *as_cli(overrides)], timeout=420)
    base = load_file(checkpoint / "model.safetensors")
    merged = load_file(tmp_path / "out" / "hf_model" / "model.safetensors")
    assert base.keys() == merged.keys()
    for key in base:
        assert torch.equal(base[key], merged[key]), key
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
