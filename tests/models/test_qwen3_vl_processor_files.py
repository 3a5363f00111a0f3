"""A Qwen3-VL checkpoint's non-weight files -> the Qwen3-VL transform (``checkpoint_transform``), and back
(``write_processor_files``) in the layout transformers loads: the released preprocessor configs in either spelling
and place, its chat template, its tokenizer with Qwen3's added tokens."""

import json
import shutil
import warnings

import pytest
import torch
from support.media import photo
from support.qwen3_reference import (
    QWEN3_TEMPLATE,
    RELEASED_IMAGE_CONFIG,
    RELEASED_VIDEO_CONFIG,
    hf_qwen3_tokenizer,
    qwen3_tokenizer_dir,
    reference_ids,
)
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

from qwenvl_data.models import QWEN2_5_VL, QWEN3_VL
from qwenvl_data.models._processor_files import write_processor_files
from qwenvl_data.training import checkpoint_transform

MESSAGES = [{"role": "user", "content": [{"type": "image", "image": photo(300, 200, seed=1)},
                                         {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": "A photo."}]  # fmt: skip


def _as_min_max(config: dict) -> dict:
    """The same config in the other spelling transformers reads: ``min_pixels``/``max_pixels``."""
    size = config["size"]
    rest = {key: value for key, value in config.items() if key != "size"}
    return {**rest, "min_pixels": size["shortest_edge"], "max_pixels": size["longest_edge"]}


def qwen3_checkpoint(root, layout: str):
    """A Qwen3-VL directory without weights: config.json, tokenizer files, chat_template.json, preprocessor configs."""
    root.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copy(qwen3_tokenizer_dir() / name, root / name)
    (root / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    (root / "chat_template.json").write_text(json.dumps({"chat_template": QWEN3_TEMPLATE}))
    images, videos = RELEASED_IMAGE_CONFIG, RELEASED_VIDEO_CONFIG
    if layout == "min_max":
        images, videos = _as_min_max(images), _as_min_max(videos)
    if layout == "nested":  # transformers 5's processor_config.json
        (root / "processor_config.json").write_text(json.dumps({"image_processor": images, "video_processor": videos}))
    else:
        (root / "preprocessor_config.json").write_text(json.dumps(images))
        (root / "video_preprocessor_config.json").write_text(json.dumps(videos))
    return root


@pytest.mark.parametrize("layout", ["flat", "min_max", "nested"])
def test_a_qwen3_vl_checkpoint_gives_the_qwen3_vl_transform(tmp_path, layout):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its chat template is the official one: nothing to report
        transform = checkpoint_transform(qwen3_checkpoint(tmp_path / "ckpt", layout))
    images = transform.image_transform
    assert transform.family == "qwen3_vl" and transform.tokenizer.chat_template == QWEN3_VL.chat_template
    assert (images.patch_size, images.image_mean, images.min_pixels, images.max_pixels) == (
        16, (0.5, 0.5, 0.5), 65536, 16777216)  # fmt: skip
    assert (images.video_options.min_pixels, images.video_options.max_pixels) == (4096, 25165824)
    assert transform({"messages": MESSAGES})["tokens"] == reference_ids(MESSAGES)


def test_written_files_are_the_qwen3_vl_layout_transformers_loads(tmp_path):
    transform = checkpoint_transform(qwen3_checkpoint(tmp_path / "ckpt", "flat"))
    out = tmp_path / "out"
    out.mkdir()
    write_processor_files(out, transform, family=QWEN3_VL)
    assert json.loads((out / "chat_template.json").read_text())["chat_template"] == QWEN3_TEMPLATE
    images = json.loads((out / "preprocessor_config.json").read_text())
    videos = json.loads((out / "video_preprocessor_config.json").read_text())
    assert images["processor_class"] == videos["processor_class"] == "Qwen3VLProcessor"
    assert videos["video_processor_type"] == "Qwen3VLVideoProcessor"
    for written, released in ((images, RELEASED_IMAGE_CONFIG), (videos, RELEASED_VIDEO_CONFIG)):
        assert {key: written[key] for key in ("size", "patch_size", "merge_size", "image_mean", "image_std")} == {
            key: released[key] for key in ("size", "patch_size", "merge_size", "image_mean", "image_std")}  # fmt: skip
    # transformers reads them back: the tokenizer gives the same ids, the image processor the same pixels.
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    text = hf_qwen3_tokenizer().apply_chat_template(MESSAGES, chat_template=QWEN3_TEMPLATE, tokenize=False)
    reference = hf_qwen3_tokenizer().encode(text, add_special_tokens=False)
    assert tokenizer.encode(text, add_special_tokens=False) == reference
    assert tokenizer.apply_chat_template(MESSAGES, tokenize=False) == text  # the written template is the official one
    pixels = Qwen2VLImageProcessorPil.from_pretrained(str(out))(images=photo(300, 200, seed=1), return_tensors="pt")
    assert torch.equal(transform.image_transform.encode_image(photo(300, 200, seed=1))[0], pixels["pixel_values"])
    assert Qwen3VLVideoProcessor.from_pretrained(str(out)).size.longest_edge == 25165824
    # ... and so does checkpoint_transform, with the weights' config.json beside them.
    shutil.copy(tmp_path / "ckpt" / "config.json", out / "config.json")
    again = checkpoint_transform(out)
    assert again({"messages": MESSAGES})["tokens"] == transform({"messages": MESSAGES})["tokens"]
    assert again.image_transform.video_options == transform.image_transform.video_options


def test_weights_of_one_family_are_not_written_with_the_text_of_another(tmp_path):
    transform = checkpoint_transform(qwen3_checkpoint(tmp_path / "ckpt", "flat"))
    with pytest.raises(ValueError, match="the weights are Qwen2_5_VLForConditionalGeneration's but the run's transform is qwen3_vl's"):
        write_processor_files(tmp_path, transform, family=QWEN2_5_VL)


def test_a_family_given_beside_the_checkpoint_must_be_its_own(tmp_path):
    root = qwen3_checkpoint(tmp_path / "ckpt", "flat")
    assert checkpoint_transform(root, family="qwen3_vl").family == "qwen3_vl"
    with pytest.raises(ValueError, match=r"family='qwen2_5_vl' was given \(the config is written for "
                                         r"Qwen2_5_VLForConditionalGeneration\) but .*config.json is model_type "
                                         r"'qwen3_vl', which processes data differently .*configs/qwen3_vl_\*.yaml"):
        checkpoint_transform(root, family="qwen2_5_vl")
    # The way out it offers says what the config's budgets become under the checkpoint's rules.
    with pytest.raises(ValueError, match=r"tokenizer.family=null .* read by Qwen3VLForConditionalGeneration's rules "
                                         r"\(video_min_pixels / video_max_pixels bound the whole clip; one vision "
                                         r"token per 32x32 px instead of 28x28\)$"):
        checkpoint_transform(root, family="qwen2_5_vl")


def test_a_family_that_processes_alike_yields_to_the_checkpoints(tmp_path):
    """A Qwen2.5-VL config on a Qwen2-VL checkpoint: the same processing, the checkpoint's family is taken."""
    from support.families import FAMILIES

    root = FAMILIES["qwen2_vl"].write_processor_files(tmp_path / "qwen2_vl")
    assert checkpoint_transform(root, family="qwen2_5_vl").family == "qwen2_vl"
    assert checkpoint_transform(root).family == "qwen2_vl"


def test_qwen2_vl_weights_take_the_qwen2_5_vl_transform_which_processes_alike(tmp_path):
    """Qwen2-VL and Qwen2.5-VL share numbers, video rule and chat template: the weights' processor class is written."""
    from qwenvl_data.models import qwen2_vl_tiny, save_hf_model
    from qwenvl_data.training import packaged_vocab_transform

    out = save_hf_model(qwen2_vl_tiny(), tmp_path, transform=packaged_vocab_transform())
    assert json.loads((out / "preprocessor_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"


def test_a_run_whose_transform_processes_for_another_family_is_refused_at_setup(tmp_path):
    from support.recipes_support import TINY_OVERRIDES, load_config, recipe_class

    overrides = {**TINY_OVERRIDES, "output_dir": str(tmp_path / "run"), "tokenizer.family": "qwen2_5_vl",
                 "min_pixels": 3136, "max_pixels": 7056}  # fmt: skip
    cfg = load_config("tiny_synthetic_qwen3_vl", overrides)
    recipe = recipe_class("full_finetune_single_device")(cfg)
    try:
        with pytest.raises(ValueError, match="Qwen3VLForConditionalGeneration .* tokenizer transform is qwen2_5_vl's: "
                                             "set tokenizer.family=qwen3_vl"):  # fmt: skip
            recipe.setup(cfg)
    finally:
        recipe.cleanup()
    assert not (tmp_path / "run" / "hf_model").exists()


def test_the_packaged_qwen3_vl_transform_tokenizes_as_qwen3s_tokenizer():
    """``packaged_vocab_transform(family="qwen3_vl")`` (the tiny Qwen3-VL configs' tokenizer) against transformers'
    reading of Qwen3's tokenizer files: Qwen3's added tokens are one id each."""
    from qwenvl_data.training import packaged_vocab_transform

    text = "<think>\nplan</think> <tool_response>\n{\"ok\": 1}\n</tool_response><|im_end|> plain <thinking>"
    ours = packaged_vocab_transform(family="qwen3_vl").encode(text, add_eos=False)
    assert ours == hf_qwen3_tokenizer()(text)["input_ids"]
    assert {151665, 151666, 151667, 151668} <= set(ours)
