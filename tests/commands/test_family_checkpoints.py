"""A released LoRA config fine-tunes transformers-made checkpoints of both families, tied or untied, and its
batches carry the checkpoint family's video positions (transformers' ``get_rope_index`` as the reference)."""

import json
import shutil

import pytest
import torch
from PIL import Image
from support.models_reference import mm_token_type_ids, save_random_hf_model, save_random_qwen2_vl_hf_model
from support.recipes_support import released_lora_setup

from qwenvl_data.models import QWEN2_5_VL, QWEN2_VL, family_of_model, load_hf_model
from qwenvl_data.vocab import qwen_vocab_files

SAVERS = {"qwen2_vl": save_random_qwen2_vl_hf_model, "qwen2_5_vl": save_random_hf_model}
FAMILIES = {"qwen2_vl": QWEN2_VL, "qwen2_5_vl": QWEN2_5_VL}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """model_type -> tied -> (directory, the transformers model): transformers' save_pretrained plus the
    tokenizer files (what a released checkpoint directory holds)."""
    out = {}
    for model_type, save in SAVERS.items():
        for tied in (True, False):
            root = tmp_path_factory.mktemp(f"{model_type}_{'tied' if tied else 'untied'}")
            hf = save(root, tie_word_embeddings=tied)
            for path in qwen_vocab_files():
                shutil.copy(path, root)
            out.setdefault(model_type, {})[tied] = root, hf
    return out


@pytest.fixture(scope="module")
def video_records(tmp_path_factory):
    """One question about four 112x112 frames at 1 fps: 2 temporal patches of 2 seconds each, so the two position
    rules give temporal ids 0, 1 (Qwen2-VL) and 0, 4 (Qwen2.5-VL)."""
    root = tmp_path_factory.mktemp("video")
    frames = []
    for index in range(4):
        path = root / f"f{index}.png"
        Image.new("RGB", (112, 112), (60 * index, 255 - 60 * index, 90)).save(path)
        frames.append(str(path))
    record = {"id": "v0", "messages": [
        {"role": "user", "content": [{"type": "video", "video": frames, "fps": 1}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": "Colors."}]}  # fmt: skip
    data = root / "train.jsonl"
    data.write_text(json.dumps(record) + "\n")
    return data


def lora_setup(checkpoint_dir, data, tmp_path, **overrides):
    """setup() of the released 3B LoRA config on CPU (no training), one sample per batch, small video budgets."""
    small = {"batch_size": 1, "tokenizer.video_min_pixels": 3136, "video_max_pixels": 12544}
    return released_lora_setup(checkpoint_dir, data, tmp_path / "run", **{**small, **overrides})


def first_batch(recipe) -> dict:
    recipe.batches.start_epoch(0)
    return recipe.batches.next_batch()


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_released_lora_config_loads_transformers_checkpoints_of_both_families(
    checkpoints, video_records, tmp_path, model_type, tied
):
    checkpoint_dir, _ = checkpoints[model_type][tied]
    recipe = lora_setup(checkpoint_dir, video_records, tmp_path)
    assert family_of_model(recipe.model) is FAMILIES[model_type]
    base = load_hf_model(checkpoint_dir).state_dict()
    assert ("decoder.output.weight" in base) is not tied
    loaded = {name: value for name, value in recipe.model.state_dict().items() if name in base}
    assert loaded.keys() == base.keys() and all(torch.equal(loaded[k], base[k]) for k in base)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_a_qwen2_vl_runs_batches_carry_qwen2_vl_video_positions(checkpoints, video_records, tmp_path, packed):
    checkpoint_dir, hf = checkpoints["qwen2_vl"][False]
    padded = first_batch(lora_setup(checkpoint_dir, video_records, tmp_path / "padded"))
    expected, _ = hf.model.get_rope_index(
        padded["tokens"], mm_token_type_ids(padded["tokens"]), video_grid_thw=padded["video_grid_thw"],
        attention_mask=padded["attention_mask"].long(),
    )  # fmt: skip
    assert padded["video_grid_thw"].tolist() == [[2, 8, 8]]  # two temporal patches of 2 s: the rules differ
    if not packed:
        assert torch.equal(padded["position_ids"], expected)
        return
    overrides = {"dataset.packed": True, "tokenizer.max_seq_len": 512, "max_steps_per_epoch": 1}
    batch = first_batch(lora_setup(checkpoint_dir, video_records, tmp_path / "packed", **overrides))
    first, real = batch["document_ids"][0] == 0, padded["attention_mask"][0]  # the padded row ends in padding
    assert torch.equal(batch["position_ids"][:, 0, first], expected[:, 0, real])


def test_a_collator_setting_that_contradicts_the_model_is_refused_naming_both(checkpoints, video_records, tmp_path):
    checkpoint_dir, _ = checkpoints["qwen2_vl"][True]
    with pytest.raises(ValueError) as error:
        lora_setup(checkpoint_dir, video_records, tmp_path, **{"collate_fn.tokens_per_second": 2})
    message = str(error.value)
    assert "tokens_per_second=2" in message and "Qwen2VLForConditionalGeneration" in message
    assert "tokens_per_second=None" in message


def test_save_hf_model_names_the_familys_processor_class(checkpoints, tmp_path):
    from qwenvl_data.models import save_hf_model

    for model_type, family in FAMILIES.items():
        out = save_hf_model(load_hf_model(checkpoints[model_type][True][0]), tmp_path / model_type)
        for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
            assert json.loads((out / name).read_text())["processor_class"] == family.processor_class
