"""Every HF directory we write is complete: its tokenizer with its chat template reproduces our tokens, its
image processor our pixels (with the run's budgets), and its generation config stops at <|im_end|>.

transformers' ``AutoProcessor`` cannot load the directory here: its video processor needs torchvision, which
cannot be installed beside torch 2.13 CPU. So the parts are checked one by one: ``AutoTokenizer`` (with the
chat template from the directory), ``Qwen2VLImageProcessorPil.from_pretrained``, the video preprocessor
config's budgets, ``GenerationConfig``. That ``Qwen2_5_VLForConditionalGeneration.from_pretrained`` on it
gives our logits is tested in test_models_peft.py.
"""

import copy
import json

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoTokenizer, GenerationConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from qwenvl_data._constants import ENDOFTEXT_ID, IM_END_ID, IMAGE_PAD_ID
from qwenvl_data.models._processor_files import write_processor_files
from qwenvl_data.models import qwen2_5_vl_tiny, save_hf_model
from qwenvl_data.transform import Qwen2_5_VLTransform
from qwenvl_data.vocab import qwen_vocab_files

# Budgets other than the defaults, so a directory that ignored the run's would fail.
BUDGETS = dict(
    min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 24, video_min_pixels=28 * 28 * 8, video_max_pixels=28 * 28 * 64
)


@pytest.fixture(scope="module")
def transform():
    return Qwen2_5_VLTransform(*qwen_vocab_files(), **BUDGETS)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, transform):
    out = tmp_path_factory.mktemp("hf_model")
    save_hf_model(qwen2_5_vl_tiny(), out, transform=transform)
    return out


def drawn_image(size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, (240, 240, 230))
    ImageDraw.Draw(image).ellipse((size[0] // 5, size[1] // 4, size[0] // 2, size[1] // 2), fill=(200, 20, 40))
    return image


def test_the_directory_has_every_file_a_released_checkpoint_has(hf_dir):
    expected = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "vocab.json",
                "merges.txt", "tokenizer_config.json", "chat_template.json", "preprocessor_config.json",
                "video_preprocessor_config.json"}  # fmt: skip
    assert expected <= {p.name for p in hf_dir.iterdir()}


def test_its_tokenizer_and_chat_template_reproduce_our_tokens(hf_dir, transform):
    image = drawn_image((120, 90))
    ours = transform({"messages": [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is  red?\n"}]},
        {"role": "assistant", "content": "A circle, top left."},
        {"role": "user", "content": "And the background?"},
        {"role": "assistant", "content": "Off-white."},
    ]})["tokens"]  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    text = tokenizer.apply_chat_template([
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is  red?\n"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A circle, top left."}]},
        {"role": "user", "content": [{"type": "text", "text": "And the background?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Off-white."}]},
    ], tokenize=False)  # fmt: skip
    theirs = tokenizer(text)["input_ids"]
    # The template writes one <|image_pad|> per image; the processor expands it to the image's token count.
    collapsed = [t for i, t in enumerate(ours) if t != IMAGE_PAD_ID or ours[i - 1] != IMAGE_PAD_ID]
    assert collapsed == theirs
    assert tokenizer.eos_token_id == IM_END_ID and tokenizer.pad_token_id == ENDOFTEXT_ID


@pytest.mark.parametrize("size", [(120, 90), (640, 480), (30, 400)])
def test_its_image_processor_reproduces_our_pixels_with_the_runs_budgets(hf_dir, transform, size):
    image = drawn_image(size)
    ours = transform.image_transform({"image": image})
    theirs = Qwen2VLImageProcessorPil.from_pretrained(hf_dir)(images=[image], return_tensors="pt")
    assert torch.equal(ours["image_grid_thw"], theirs["image_grid_thw"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])


def test_its_video_preprocessor_config_holds_the_runs_video_budgets(hf_dir):
    config = json.loads((hf_dir / "video_preprocessor_config.json").read_text())
    assert config["size"] == {"shortest_edge": BUDGETS["video_min_pixels"], "longest_edge": BUDGETS["video_max_pixels"]}
    assert (config["min_pixels"], config["max_pixels"]) == (BUDGETS["video_min_pixels"], BUDGETS["video_max_pixels"])
    assert config["video_processor_type"] == "Qwen2VLVideoProcessor"


def test_its_generation_config_stops_at_the_end_of_a_turn(hf_dir):
    assert IM_END_ID in GenerationConfig.from_pretrained(hf_dir).eos_token_id


def test_a_source_checkpoints_files_are_read_and_written_again_from_its_transform(transform, tmp_path):
    """Exporting a checkpoint (no run transform): the output is written from checkpoint_transform(source), so its
    tokenizer and budgets are the source's; its generation config and tokenizer settings go along."""
    source, out = tmp_path / "source", tmp_path / "out"
    source.mkdir(), out.mkdir()
    write_processor_files(source, transform)
    released = {"generation_config.json": {"eos_token_id": [IM_END_ID, ENDOFTEXT_ID], "repetition_penalty": 1.05},
                "tokenizer_config.json": {"model_max_length": 32768, "tokenizer_class": "Qwen2Tokenizer"}}  # fmt: skip
    for name, content in released.items():
        (source / name).write_text(json.dumps(content))
    write_processor_files(out, source_dir=source)
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "generation_config.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes(), name
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 32768
    budgets = json.loads((out / "preprocessor_config.json").read_text())
    assert (budgets["min_pixels"], budgets["max_pixels"]) == (BUDGETS["min_pixels"], BUDGETS["max_pixels"])


def test_checkpoint_transform_tokenizes_as_the_run_did(hf_dir, transform):
    """What configs/generate.yaml builds: the directory's own vocabulary and budgets, not the defaults."""
    from qwenvl_data.training import checkpoint_transform

    rebuilt = checkpoint_transform(hf_dir)
    image = drawn_image((300, 200))
    messages = {"messages": [{"role": "user", "content": [{"type": "image", "image": image},
                                                            {"type": "text", "text": "What is it?"}]},
                             {"role": "assistant", "content": "A drawing."}]}  # fmt: skip
    ours, theirs = rebuilt(copy.deepcopy(messages)), transform(copy.deepcopy(messages))
    assert ours["tokens"] == theirs["tokens"] and torch.equal(ours["pixel_values"], theirs["pixel_values"])
    assert rebuilt.image_transform.video_options == transform.image_transform.video_options
    assert checkpoint_transform(hf_dir, max_pixels=28 * 28 * 4).image_transform.max_pixels == 28 * 28 * 4
