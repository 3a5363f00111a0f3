"""One row per model family under test: what a family-parametrized test needs to know about it.

A test that holds for every family takes ``@pytest.mark.parametrize("family", FAMILIES.values(), ids=FAMILIES)``
(or one of these rows); a new family is one more row here.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from support.models_reference import save_random_hf_model, save_random_qwen2_vl_hf_model
from transformers import PreTrainedModel, Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

from qwenvl_data.models import QWEN2_5_VL, QWEN2_VL, ModelFamily


@dataclass(frozen=True)
class FamilyUnderTest:
    """A family, its transformers reference and its shipped tiny configs.

    Attributes:
        family: our description (``models/_families.py``).
        hf_class: transformers' model class, the reference.
        save_random_hf_model: (out_dir, *, seed, tie_word_embeddings) -> a tiny random transformers model of the
            family saved into out_dir (the shapes of the family's ``*_tiny`` builder).
        tiny_config, tiny_lora_config: configs/<name>.yaml of the family's from-scratch CPU runs.
    """

    family: ModelFamily
    hf_class: type[PreTrainedModel]
    save_random_hf_model: Callable[..., PreTrainedModel]
    tiny_config: str
    tiny_lora_config: str

    @property
    def model_type(self) -> str:
        return self.family.model_type

    def save_random(self, out_dir: Path, **config_args: object) -> PreTrainedModel:
        return self.save_random_hf_model(out_dir, **config_args)


FAMILIES = {
    "qwen2_5_vl": FamilyUnderTest(
        QWEN2_5_VL, Qwen2_5_VLForConditionalGeneration, save_random_hf_model, "tiny_synthetic", "tiny_synthetic_lora"
    ),
    "qwen2_vl": FamilyUnderTest(
        QWEN2_VL,
        Qwen2VLForConditionalGeneration,
        save_random_qwen2_vl_hf_model,
        "tiny_synthetic_qwen2_vl",
        "tiny_synthetic_lora_qwen2_vl",
    ),
}
