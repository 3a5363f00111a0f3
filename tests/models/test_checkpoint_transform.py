"""The checkpoint is the one source of tokenization and preprocessing: ``checkpoint_transform`` reads its
tokenizer.json (added tokens included) and its preprocessor configs in either spelling, a YAML override wins
over the checkpoint's value, and the HF directory a run writes reloads to the same token ids, with our reader
and with transformers'."""

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from qwenvl_data._constants import BASE_VOCAB_SIZE, IMAGE_PAD_ID, SPECIAL_TOKENS
from qwenvl_data.models import qwen2_5_vl_tiny, save_hf_model
from qwenvl_data.tokenizer import Qwen2_5_VLTokenizer
from qwenvl_data.training import checkpoint_transform
from qwenvl_data.transform import Qwen2_5_VLTransform

# Tokens a user added before fine-tuning, after Qwen2.5-VL's 22 (ids 151643-151664).
ADDED = {"<|box_label|>": (151665, True), "<obj>": (151666, False)}
TEXT_WITH_ADDED = "Find<|box_label|>the cat <obj> and<obj>dog <tool_call>{}</tool_call>"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, vocab_files) -> Path:
    """Tokenizer files laid out like a released checkpoint's (tokenizer.json beside vocab.json + merges.txt),
    the tokenizer.json holding ``ADDED`` besides Qwen2.5-VL's special tokens."""
    root = tmp_path_factory.mktemp("tokenizer")
    tokenizer = Qwen2_5_VLTokenizer(*vocab_files).tokenizer
    for content, (token_id, special) in ADDED.items():
        token = AddedToken(content, special=special, normalized=False)
        (tokenizer.add_special_tokens if special else tokenizer.add_tokens)([token])
        assert tokenizer.token_to_id(content) == token_id
    tokenizer.save(str(root / "tokenizer.json"))
    shutil.copyfile(vocab_files[0], root / "vocab.json")
    shutil.copyfile(vocab_files[1], root / "merges.txt")
    (root / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 32768, "padding_side": "left"}))
    return root


def with_configs(root: Path, tokenizer_dir: Path, configs: dict[str, dict] | None = None) -> Path:
    """A checkpoint directory at ``root``: those tokenizer files and the given configs ({file name: content})."""
    shutil.copytree(tokenizer_dir, root)
    for name, content in (configs or {}).items():
        (root / name).write_text(json.dumps(content))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir) -> Path:
    # The released checkpoints' budgets, in transformers 5's spelling only.
    config = {"size": {"shortest_edge": 3136, "longest_edge": 12845056}, "patch_size": 14, "merge_size": 2}
    return with_configs(tmp_path_factory.mktemp("released") / "ckpt", tokenizer_dir, {"preprocessor_config.json": config})


def drawn_image(size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, (235, 240, 230))
    ImageDraw.Draw(image).rectangle((size[0] // 4, size[1] // 3, size[0] // 2, size[1] // 2), fill=(30, 90, 200))
    return image


def test_an_added_token_is_one_id_as_transformers_reads_the_checkpoint(checkpoint):
    ours = checkpoint_transform(checkpoint).encode(TEXT_WITH_ADDED, add_eos=False)
    theirs = PreTrainedTokenizerFast(tokenizer_file=str(checkpoint / "tokenizer.json"))(TEXT_WITH_ADDED)["input_ids"]
    auto = AutoTokenizer.from_pretrained(checkpoint)(TEXT_WITH_ADDED)["input_ids"]
    assert ours == theirs == auto
    for content, (token_id, _) in ADDED.items():
        assert ours.count(token_id) == TEXT_WITH_ADDED.count(content)
    assert SPECIAL_TOKENS["<tool_call>"] in ours
    # The keyword's earlier name, as configs/generate.yaml spelled it, reads the same directory.
    assert checkpoint_transform(checkpoint_dir=checkpoint).encode(TEXT_WITH_ADDED, add_eos=False) == ours


def test_the_old_vocab_and_merges_spelling_still_builds_qwens_22_special_tokens(checkpoint):
    """`Qwen2_5_VLTransform(path=vocab.json, merges_file=merges.txt)` in a user's own config keeps working,
    with the constant special tokens it always had (the checkpoint's added tokens need checkpoint_transform)."""
    old = Qwen2_5_VLTransform(str(checkpoint / "vocab.json"), str(checkpoint / "merges.txt"))
    assert old.vocab_size == BASE_VOCAB_SIZE + len(SPECIAL_TOKENS)
    assert old.encode("<tool_call>", add_eos=False) == [SPECIAL_TOKENS["<tool_call>"]]
    assert 151665 not in old.encode(TEXT_WITH_ADDED, add_eos=False)


def test_the_written_directory_tokenizes_as_the_run_did(checkpoint, tmp_path):
    """Train side (the released configs' transform) == checkpoint_transform(output) == AutoTokenizer(output)."""
    trained_with = checkpoint_transform(checkpoint, max_pixels=28 * 28 * 30, max_seq_len=4096)
    out = save_hf_model(qwen2_5_vl_tiny(), tmp_path / "hf_model", transform=trained_with, source_dir=checkpoint)
    reloaded = checkpoint_transform(out)
    conversation = [
        {"role": "user", "content": [{"type": "image", "image": drawn_image((200, 150))},
                                     {"type": "text", "text": TEXT_WITH_ADDED}]},
        {"role": "assistant", "content": "<|box_label|>(10,20),(30,40)<obj>"},
    ]  # fmt: skip
    train_side = trained_with({"messages": conversation})
    reload_side = reloaded({"messages": conversation})
    assert reload_side["tokens"] == train_side["tokens"] and reload_side["labels"] == train_side["labels"]
    assert torch.equal(reload_side["pixel_values"], train_side["pixel_values"])
    assert 151665 in train_side["tokens"] and 151666 in train_side["tokens"]

    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template([
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TEXT_WITH_ADDED}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<|box_label|>(10,20),(30,40)<obj>"}]},
    ], tokenize=False)  # fmt: skip
    # The template writes one <|image_pad|> per image; the processor expands it to the image's token count.
    tokens = train_side["tokens"]
    collapsed = [t for i, t in enumerate(tokens) if t != IMAGE_PAD_ID or tokens[i - 1] != IMAGE_PAD_ID]
    assert tokenizer(text)["input_ids"] == collapsed
    # Settings of the source's tokenizer_config.json that do not change ids go along.
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert (config["model_max_length"], config["padding_side"]) == (32768, "left")
    assert reloaded.image_transform.max_pixels == 28 * 28 * 30


BUDGETS = {"min_pixels": 28 * 28 * 3, "max_pixels": 28 * 28 * 40}


@pytest.mark.parametrize(
    "spelling",
    [
        {"min_pixels": BUDGETS["min_pixels"], "max_pixels": BUDGETS["max_pixels"]},
        {"size": {"shortest_edge": BUDGETS["min_pixels"], "longest_edge": BUDGETS["max_pixels"]}},
        # Both: min_pixels/max_pixels win, as in transformers.
        {**BUDGETS, "size": {"shortest_edge": 3136, "longest_edge": 12845056}},
    ],
    ids=["min_max_pixels", "size", "both"],
)
def test_both_budget_spellings_give_the_same_transform_as_transformers(tmp_path, tokenizer_dir, spelling):
    root = with_configs(tmp_path / "ckpt", tokenizer_dir, {"preprocessor_config.json": spelling})
    image_transform = checkpoint_transform(root).image_transform
    assert (image_transform.min_pixels, image_transform.max_pixels) == (BUDGETS["min_pixels"], BUDGETS["max_pixels"])
    reference = Qwen2VLImageProcessorPil.from_pretrained(root)
    image = drawn_image((640, 300))
    theirs = reference(images=[image], return_tensors="pt")
    ours = image_transform({"image": image})
    assert torch.equal(ours["image_grid_thw"], theirs["image_grid_thw"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])


def test_a_preprocessor_config_written_by_transformers_is_read(tmp_path, tokenizer_dir):
    """transformers 5 writes only `size`; the released checkpoints both spellings (with all their other keys)."""
    root = with_configs(tmp_path / "ckpt", tokenizer_dir)
    Qwen2VLImageProcessorPil(**BUDGETS, image_mean=[0.5, 0.5, 0.5]).save_pretrained(root)
    image_transform = checkpoint_transform(root).image_transform
    assert (image_transform.min_pixels, image_transform.max_pixels) == (BUDGETS["min_pixels"], BUDGETS["max_pixels"])
    assert image_transform.image_mean == (0.5, 0.5, 0.5)


def test_video_budgets_are_read_in_both_spellings(tmp_path, tokenizer_dir):
    budgets = []
    for spelling in ({"min_pixels": 28 * 28 * 16, "max_pixels": 28 * 28 * 64},
                     {"size": {"shortest_edge": 28 * 28 * 16, "longest_edge": 28 * 28 * 64}}):  # fmt: skip
        root = with_configs(tmp_path / str(len(budgets)), tokenizer_dir)
        (root / "video_preprocessor_config.json").write_text(json.dumps({**spelling, "fps": 1.0, "max_frames": 32}))
        options = checkpoint_transform(root).image_transform.video_options
        budgets.append((options.min_pixels, options.max_pixels, options.fps, options.max_frames))
    assert budgets == [(28 * 28 * 16, 28 * 28 * 64, 1.0, 32)] * 2


def test_transformers_5_nested_processor_config_is_read(tmp_path, tokenizer_dir):
    root = with_configs(tmp_path / "ckpt", tokenizer_dir, {"preprocessor_config.json": {"min_pixels": 3136, "max_pixels": 12845056}})
    nested = {"image_processor": {"size": {"shortest_edge": 28 * 28 * 2, "longest_edge": 28 * 28 * 50}},
              "video_processor": {"size": {"shortest_edge": 28 * 28 * 10, "longest_edge": 28 * 28 * 90}}}  # fmt: skip
    (root / "processor_config.json").write_text(json.dumps(nested))
    image_transform = checkpoint_transform(root).image_transform
    # processor_config.json's entry first, as transformers 5 reads it.
    assert (image_transform.min_pixels, image_transform.max_pixels) == (28 * 28 * 2, 28 * 28 * 50)
    video = image_transform.video_options
    assert (video.min_pixels, video.max_pixels) == (28 * 28 * 10, 28 * 28 * 90)


# Every setting that reaches the transform from both the checkpoint's files and a config override:
# (config file, key there, transform argument, checkpoint's value, override, how to read it off the transform).
SETTINGS = [
    ("preprocessor_config.json", "min_pixels", "min_pixels", 28 * 28 * 2, 28 * 28 * 5, lambda t: t.min_pixels),
    ("preprocessor_config.json", "max_pixels", "max_pixels", 28 * 28 * 50, 28 * 28 * 70, lambda t: t.max_pixels),
    ("preprocessor_config.json", "patch_size", "patch_size", 16, 12, lambda t: t.patch_size),
    ("preprocessor_config.json", "merge_size", "merge_size", 1, 3, lambda t: t.merge_size),
    ("preprocessor_config.json", "temporal_patch_size", "temporal_patch_size", 1, 4, lambda t: t.temporal_patch_size),
    ("preprocessor_config.json", "image_mean", "image_mean", [0.5] * 3, [0.25] * 3, lambda t: list(t.image_mean)),
    ("preprocessor_config.json", "image_std", "image_std", [0.5] * 3, [0.2] * 3, lambda t: list(t.image_std)),
    ("video_preprocessor_config.json", "min_pixels", "video_min_pixels", 28 * 28 * 90, 28 * 28 * 110,
     lambda t: t.video_options.min_pixels),
    ("video_preprocessor_config.json", "max_pixels", "video_max_pixels", 28 * 28 * 999, 28 * 28 * 777,
     lambda t: t.video_options.max_pixels),
    ("video_preprocessor_config.json", "fps", "video_fps", 1.0, 4.0, lambda t: t.video_options.fps),
    ("video_preprocessor_config.json", "min_frames", "video_min_frames", 2, 6, lambda t: t.video_options.min_frames),
    ("video_preprocessor_config.json", "max_frames", "video_max_frames", 64, 16, lambda t: t.video_options.max_frames),
]  # fmt: skip


def test_an_override_wins_over_the_checkpoint_which_wins_over_the_default(tmp_path, tokenizer_dir):
    """One transform per case with every setting at once (a tokenizer takes a second to build)."""
    configs: dict[str, dict] = {}
    for file, key, _, in_checkpoint, _, _ in SETTINGS:
        configs.setdefault(file, {})[key] = in_checkpoint
    defaults = checkpoint_transform(with_configs(tmp_path / "bare", tokenizer_dir)).image_transform
    root = with_configs(tmp_path / "ckpt", tokenizer_dir, configs)
    from_checkpoint = checkpoint_transform(root).image_transform
    overridden = checkpoint_transform(root, **{argument: override for _, _, argument, _, override, _ in SETTINGS})
    kept = checkpoint_transform(root, **{argument: None for _, _, argument, *_ in SETTINGS})  # null in YAML
    for file, key, argument, in_checkpoint, override, read in SETTINGS:
        assert read(defaults) not in (in_checkpoint, override), argument
        assert read(from_checkpoint) == in_checkpoint, f"{file} {key}"
        assert read(overridden.image_transform) == override, argument
        assert read(kept.image_transform) == in_checkpoint, f"{argument}=None"


def test_a_preprocessing_step_the_transform_cannot_take_is_an_error_naming_it(tmp_path, tokenizer_dir):
    root = with_configs(tmp_path / "ckpt", tokenizer_dir, {"preprocessor_config.json": {"resample": 2}})
    with pytest.raises(ValueError, match=r"preprocessor_config.json: resample=2"):
        checkpoint_transform(root)


def test_image_and_video_configs_that_disagree_on_the_patch_size_are_an_error(tmp_path, tokenizer_dir):
    root = with_configs(tmp_path / "ckpt", tokenizer_dir, {"preprocessor_config.json": {"patch_size": 14}})
    (root / "video_preprocessor_config.json").write_text(json.dumps({"patch_size": 16}))
    with pytest.raises(ValueError, match="patch_size=14 but video_preprocessor_config.json has 16"):
        checkpoint_transform(root)


def test_a_chat_template_other_than_the_official_one_is_reported(tmp_path, tokenizer_dir):
    root = with_configs(tmp_path / "ckpt", tokenizer_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint_transform(root)  # no template: nothing to say
    (root / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    with pytest.warns(UserWarning, match="chat_template.jinja differs from the official"):
        checkpoint_transform(root)


def test_a_directory_without_tokenizer_files_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        checkpoint_transform(tmp_path)


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen3_vl"])
def test_the_numbers_preprocessor_configs_leave_out_are_the_checkpoint_familys(tmp_path, tokenizer_dir, model_type):
    from qwenvl_data.models import model_family

    family = model_family(model_type)
    transform = checkpoint_transform(with_configs(tmp_path / "q", tokenizer_dir, {"config.json": {
        "model_type": model_type}}))  # fmt: skip
    images = transform.image_transform
    assert transform.family == model_type and transform.tokenizer.chat_template == family.chat_template
    assert (images.patch_size, images.merge_size, images.temporal_patch_size) == (
        family.patch_size, family.merge_size, family.temporal_patch_size)  # fmt: skip
    assert (images.min_pixels, images.max_pixels) == (family.image_min_pixels, family.image_max_pixels)
    assert (images.image_mean, images.image_std, images.video_rule) == (family.image_mean, family.image_std,
                                                                        family.video_rule)  # fmt: skip
    assert (images.video_options.min_pixels, images.video_options.max_pixels) == (
        family.video_min_pixels, family.video_max_pixels)  # fmt: skip


def test_a_family_whose_numbers_are_not_known_is_refused(tmp_path, tokenizer_dir):
    # Refused, not given another family's patches.
    with pytest.raises(ValueError, match="model_type 'qwen3_vl_moe' .Qwen3-VL-MoE. is not yet supported"):
        checkpoint_transform(with_configs(tmp_path / "q3", tokenizer_dir, {"config.json": {
            "model_type": "qwen3_vl_moe"}}))  # fmt: skip
