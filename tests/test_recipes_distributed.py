"""FSDP2 over 2 CPU ranks (gloo) computes the same losses as one process on the same global batch."""

import torch
from safetensors.torch import load_file

from recipes_support import TINY_OVERRIDES, as_cli, load_config, load_recipe, metrics, run_command

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
