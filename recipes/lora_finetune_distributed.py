"""LoRA fine-tune of Qwen2.5-VL sharded with FSDP2 over torchrun ranks.

Run from the repository root:
    tune run --nproc_per_node N recipes/lora_finetune_distributed.py --config configs/<config>.yaml [key=value ...]

The loop lives in qwenvl_data.training.FinetuneRecipe; this file only picks the variant, so all
recipes share one tested implementation. It imports nothing from `recipes.*`: torchtune's wheel
installs its own top-level `recipes` package.
"""

from omegaconf import DictConfig
from torchtune import config

from qwenvl_data.training import FinetuneRecipe, run_recipe


class LoRAFinetuneRecipeDistributed(FinetuneRecipe):
    """setup(cfg) builds everything from the config, train() runs the steps, save_checkpoint()
    writes a resumable state, finish() writes the HF weights and report, cleanup() releases."""

    distributed = True
    lora = True


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    run_recipe(LoRAFinetuneRecipeDistributed, cfg)


if __name__ == "__main__":
    recipe_main()
