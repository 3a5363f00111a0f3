"""Full fine-tune of Qwen2.5-VL on one device (CPU or GPU).

Run from the repository root:
    tune run recipes/full_finetune_single_device.py --config configs/<config>.yaml [key=value ...]

The loop lives in qwenvl_data.training.FinetuneRecipe; this file only picks the variant, so all
recipes share one tested implementation. It imports nothing from `recipes.*`: torchtune's wheel
installs its own top-level `recipes` package.
"""

from omegaconf import DictConfig
from torchtune import config

from qwenvl_data.training import FinetuneRecipe, run_recipe


class FullFinetuneRecipeSingleDevice(FinetuneRecipe):
    """setup(cfg) builds everything from the config, train() runs the steps, save_checkpoint()
    writes a resumable state, finish() writes the HF weights and report, cleanup() releases."""

    distributed = False
    lora = False


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    run_recipe(FullFinetuneRecipeSingleDevice, cfg)


if __name__ == "__main__":
    recipe_main()
