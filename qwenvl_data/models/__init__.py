"""Qwen2.5-VL and Qwen2-VL in torchtune modules: family descriptions, builders, HF checkpoint conversion and I/O."""

from qwenvl_data.models._adapters import DoRALinear, initialize_dora_magnitudes, merged_state_dict
from qwenvl_data.models._checkpoint_builder import (
    check_builder_fits_checkpoint,
    model_from_checkpoint,
    qwen2_5_vl_from_checkpoint,
)
from qwenvl_data.models._component_builders import (
    lora_qwen2_5_vl,
    qwen2_5_vl,
    qwen2_5_vl_text_decoder,
    qwen2_5_vl_vision_encoder,
)
from qwenvl_data.models._convert_weights import (
    builder_args_from_hf_config,
    hf_config_from_model,
    hf_to_tune,
    peft_to_tune,
    tune_to_hf,
    tune_to_peft,
)
from qwenvl_data.models._families import (
    MODEL_FAMILIES,
    QWEN2_5_VL,
    QWEN2_VL,
    ModelFamily,
    family_of_model,
    model_family,
    model_from_hf_config,
)
from qwenvl_data.models._hf_io import load_hf_model, load_hf_state_dict, save_hf_model
from qwenvl_data.models._model import Qwen2_5_VLModel
from qwenvl_data.models._model_builders import (
    lora_qwen2_5_vl_3b,
    lora_qwen2_5_vl_7b,
    lora_qwen2_5_vl_32b,
    lora_qwen2_5_vl_72b,
    lora_qwen2_5_vl_tiny,
    qwen2_5_vl_3b,
    qwen2_5_vl_7b,
    qwen2_5_vl_32b,
    qwen2_5_vl_72b,
    qwen2_5_vl_from_hf_config,
    qwen2_5_vl_mini,
    qwen2_5_vl_tiny,
)
from qwenvl_data.models._peft import (
    PeftAdapter,
    load_peft_adapter,
    merge_peft_adapter,
    peft_adapter_config,
    read_peft_adapter,
    write_peft_adapter,
)
from qwenvl_data.models._qwen2_vl_component_builders import lora_qwen2_vl, qwen2_vl, qwen2_vl_vision_encoder
from qwenvl_data.models._qwen2_vl_convert_weights import (
    QWEN2_VL_KEY_MAP,
    qwen2_vl_builder_args_from_hf_config,
    qwen2_vl_hf_config_from_model,
)
from qwenvl_data.models._qwen2_vl_model_builders import (
    lora_qwen2_vl_2b,
    lora_qwen2_vl_7b,
    lora_qwen2_vl_72b,
    lora_qwen2_vl_tiny,
    qwen2_vl_2b,
    qwen2_vl_7b,
    qwen2_vl_72b,
    qwen2_vl_tiny,
)
from qwenvl_data.models._mrope import MultimodalRotaryEmbeddings, next_position_ids
from qwenvl_data.models._vision import Qwen2_5_VisionTransformer, VisionBlock

__all__ = [
    "DoRALinear",
    "PeftAdapter",
    "MultimodalRotaryEmbeddings",
    "Qwen2_5_VLModel",
    "Qwen2_5_VisionTransformer",
    "VisionBlock",
    "builder_args_from_hf_config",
    "check_builder_fits_checkpoint",
    "hf_config_from_model",
    "hf_to_tune",
    "initialize_dora_magnitudes",
    "load_hf_model",
    "load_hf_state_dict",
    "load_peft_adapter",
    "lora_qwen2_5_vl",
    "lora_qwen2_5_vl_3b",
    "lora_qwen2_5_vl_7b",
    "lora_qwen2_5_vl_32b",
    "lora_qwen2_5_vl_72b",
    "lora_qwen2_5_vl_tiny",
    "merge_peft_adapter",
    "merged_state_dict",
    "next_position_ids",
    "peft_adapter_config",
    "peft_to_tune",
    "qwen2_5_vl",
    "qwen2_5_vl_3b",
    "qwen2_5_vl_7b",
    "qwen2_5_vl_32b",
    "qwen2_5_vl_72b",
    "qwen2_5_vl_from_checkpoint",
    "qwen2_5_vl_from_hf_config",
    "qwen2_5_vl_text_decoder",
    "qwen2_5_vl_mini",
    "qwen2_5_vl_tiny",
    "qwen2_5_vl_vision_encoder",
    "read_peft_adapter",
    "save_hf_model",
    "tune_to_hf",
    "tune_to_peft",
    "write_peft_adapter",
    "MODEL_FAMILIES",
    "QWEN2_5_VL",
    "QWEN2_VL",
    "ModelFamily",
    "family_of_model",
    "model_family",
    "model_from_checkpoint",
    "model_from_hf_config",
    "lora_qwen2_vl",
    "qwen2_vl",
    "qwen2_vl_vision_encoder",
    "QWEN2_VL_KEY_MAP",
    "qwen2_vl_builder_args_from_hf_config",
    "qwen2_vl_hf_config_from_model",
    "lora_qwen2_vl_2b",
    "lora_qwen2_vl_7b",
    "lora_qwen2_vl_72b",
    "lora_qwen2_vl_tiny",
    "qwen2_vl_2b",
    "qwen2_vl_7b",
    "qwen2_vl_72b",
    "qwen2_vl_tiny",
]
