"""One row per model family under test: what a family-parametrized test needs to know about it.

A test that holds for every family takes ``@pytest.mark.parametrize("family", FAMILIES.values(), ids=FAMILIES)``
(or one of these rows); a new family is one more row here.
"""

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from support.models_reference import (
    save_random_hf_model,
    save_random_qwen2_vl_hf_model,
    tiny_hf_config,
    tiny_qwen2_vl_hf_config,
)
from support.qwen3_reference import RELEASED_IMAGE_CONFIG, RELEASED_VIDEO_CONFIG, qwen3_tokenizer_dir
from support.qwen3_vl_reference import save_random_qwen3_vl_hf_model, tiny_qwen3_vl_hf_config
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
)

from qwenvl_data.models import QWEN2_5_VL, QWEN2_VL, QWEN3_VL, ModelFamily
from qwenvl_data.tokenizer import Qwen2_5_VLTokenizer
from qwenvl_data.vocab import qwen_vocab_files

DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True)
class FamilyUnderTest:
    """A family, its transformers reference and its shipped tiny configs.

    Attributes:
        family: our description (``models/_families.py``).
        hf_class: transformers' model class, the reference.
        hf_config: (*, tie_word_embeddings, vision_depth, vision_width, **text_config keys) -> the config of a
            small transformers model of the family (the tiny builder's shapes by default).
        save_random: (out_dir, *, seed, tie_word_embeddings) -> a tiny random transformers model of the family
            saved into out_dir (the shapes of the family's ``*_tiny`` builder).
        tiny_config, tiny_lora_config: configs/<name>.yaml of the family's from-scratch CPU runs.
        chat_template_file: the released Instruct checkpoints' chat template, verbatim, in tests/support/data.
        released_preprocessor_config: the released Instruct checkpoints' preprocessor_config.json.
        released_video_preprocessor_config: their video_preprocessor_config.json (None: they ship none).
        tokenizer_dir: a directory with the released tokenizer's files (tokenizer.json with the family's added
            tokens, vocab.json, merges.txt); None: Qwen's vocabulary with Qwen2.5-VL's 22 special tokens.
    """

    family: ModelFamily
    hf_class: type[PreTrainedModel]
    hf_config: Callable[..., PretrainedConfig]
    save_random: Callable[..., PreTrainedModel]
    tiny_config: str
    tiny_lora_config: str
    chat_template_file: str
    released_preprocessor_config: dict
    released_video_preprocessor_config: dict | None = None
    tokenizer_dir: Callable[[], Path] | None = None

    @property
    def model_type(self) -> str:
        return self.family.model_type

    def write_processor_files(self, root: Path) -> Path:
        """A checkpoint directory at ``root`` with the released processor files (no weights): config.json's
        ``model_type``, preprocessor_config.json (and video_preprocessor_config.json where released),
        chat_template.json, and tokenizer.json (Qwen's real vocabulary with the family's special tokens) beside
        vocab.json and merges.txt."""
        root.mkdir(parents=True, exist_ok=True)
        template = (DATA_DIR / self.chat_template_file).read_text()
        files = {
            "config.json": {"model_type": self.model_type, "architectures": [self.family.architecture]},
            "preprocessor_config.json": self.released_preprocessor_config,
            "chat_template.json": {"chat_template": template},
        }
        if self.released_video_preprocessor_config is not None:
            files["video_preprocessor_config.json"] = self.released_video_preprocessor_config
        for name, content in files.items():
            (root / name).write_text(json.dumps(content))
        if self.tokenizer_dir is None:
            Qwen2_5_VLTokenizer(*qwen_vocab_files()).tokenizer.save(str(root / "tokenizer.json"))
            for path in qwen_vocab_files():
                shutil.copy(path, root)
        else:
            for name in ("tokenizer.json", "vocab.json", "merges.txt"):
                shutil.copy(self.tokenizer_dir() / name, root / name)
        return root


def _released_preprocessor_config(processor_class: str) -> dict:
    """preprocessor_config.json of Qwen/Qwen2-VL-*-Instruct and Qwen/Qwen2.5-VL-*-Instruct: the same numbers,
    their own processor class."""
    return {
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": processor_class,
    }  # fmt: skip


FAMILIES = {
    "qwen2_5_vl": FamilyUnderTest(
        family=QWEN2_5_VL,
        hf_class=Qwen2_5_VLForConditionalGeneration,
        hf_config=tiny_hf_config,
        save_random=save_random_hf_model,
        tiny_config="tiny_synthetic",
        tiny_lora_config="tiny_synthetic_lora",
        chat_template_file="qwen2_5_vl_chat_template.jinja",
        released_preprocessor_config=_released_preprocessor_config("Qwen2_5_VLProcessor"),
    ),
    "qwen2_vl": FamilyUnderTest(
        family=QWEN2_VL,
        hf_class=Qwen2VLForConditionalGeneration,
        hf_config=tiny_qwen2_vl_hf_config,
        save_random=save_random_qwen2_vl_hf_model,
        tiny_config="tiny_synthetic_qwen2_vl",
        tiny_lora_config="tiny_synthetic_lora_qwen2_vl",
        chat_template_file="qwen2_5_vl_chat_template.jinja",  # Qwen2-VL's Instruct checkpoints ship the same bytes
        released_preprocessor_config=_released_preprocessor_config("Qwen2VLProcessor"),
    ),
    "qwen3_vl": FamilyUnderTest(
        family=QWEN3_VL,
        hf_class=Qwen3VLForConditionalGeneration,
        hf_config=tiny_qwen3_vl_hf_config,
        save_random=save_random_qwen3_vl_hf_model,
        tiny_config="tiny_synthetic_qwen3_vl",
        tiny_lora_config="tiny_synthetic_lora_qwen3_vl",
        chat_template_file="qwen3_vl_chat_template.jinja",
        released_preprocessor_config=RELEASED_IMAGE_CONFIG,
        released_video_preprocessor_config=RELEASED_VIDEO_CONFIG,
        tokenizer_dir=qwen3_tokenizer_dir,  # Qwen3's tokenizer.json: <tool_response> ... </think> at 151665-151668
    ),
}
