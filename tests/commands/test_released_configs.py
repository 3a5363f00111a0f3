"""The released configs build what the checkpoint describes, take a config override over the checkpoint's value,
and read your data from one override: `dataset.data_files=...` or `dataset.source=<saved dataset directory>`."""

import functools
import itertools
import json
import re
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from omegaconf import OmegaConf
from support.recipes_support import REPO, load_config, recipe_class, released_lora_setup

from qwenvl_data.errors import ImageLoadError
from qwenvl_data.training._config import build, component_problems
from qwenvl_data.training._data import build_dataset
from qwenvl_data.vocab import qwen_vocab_files

# Every family's released-size configs (qwen2_vl_*, qwen2_5_vl_*); tiny CPU configs are tiny_*.
RELEASED = sorted(p.stem for p in (REPO / "configs").glob("qwen*_vl_*.yaml"))
RECORDS = [
    {"id": f"r{i}", "messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                                 {"role": "assistant", "content": str(2 * i)}]}
    for i in range(3)
]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Tokenizer files whose tokenizer.json adds a token, and the released budgets in the `size` spelling."""
    from tokenizers import AddedToken

    from qwenvl_data.tokenizer import Qwen2_5_VLTokenizer

    root = tmp_path_factory.mktemp("ckpt")
    tokenizer = Qwen2_5_VLTokenizer(*qwen_vocab_files()).tokenizer
    tokenizer.add_special_tokens([AddedToken("<|box_label|>", special=True, normalized=False)])
    tokenizer.save(str(root / "tokenizer.json"))
    for path in qwen_vocab_files():
        shutil.copy(path, root)
    config = {"size": {"shortest_edge": 3136, "longest_edge": 12845056}}
    (root / "preprocessor_config.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize("name", [*RELEASED, "generate"])
def test_every_released_config_builds_its_transform_from_checkpoint_dir(name):
    tokenizer = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / f"{name}.yaml").tokenizer, resolve=False)
    assert tokenizer["_component_"] == "qwenvl_data.training.checkpoint_transform"
    assert tokenizer["model_dir"] == "${checkpoint_dir}"


def test_a_config_override_wins_over_the_checkpoint_and_null_keeps_the_checkpoints(checkpoint):
    cfg = load_config(RELEASED[0], {"checkpoint_dir": str(checkpoint)})
    transform = build(cfg, "tokenizer")
    assert transform.encode("a<|box_label|>b", add_eos=False)[1] == 151665  # the checkpoint's added token
    assert transform.image_transform.max_pixels == cfg.max_pixels == 1003520  # the config's, not 12845056
    assert transform.max_seq_len == 4096
    unset = build(load_config(RELEASED[0], {"checkpoint_dir": str(checkpoint), "max_pixels": None}), "tokenizer")
    assert unset.image_transform.max_pixels == 12845056


def test_the_old_vocab_and_merges_spelling_still_builds(checkpoint):
    cfg = load_config(RELEASED[0], {"checkpoint_dir": str(checkpoint)})
    cfg.tokenizer = OmegaConf.create({
        "_component_": "qwenvl_data.transform.Qwen2_5_VLTransform", "path": "${checkpoint_dir}/vocab.json",
        "merges_file": "${checkpoint_dir}/merges.txt", "max_seq_len": 4096, "max_pixels": "${max_pixels}",
    })  # fmt: skip
    transform = build(cfg, "tokenizer")
    assert transform.image_transform.max_pixels == 1003520 and transform.max_seq_len == 4096


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved") / "train"
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(root))
    return root


@pytest.mark.parametrize("name", [*RELEASED, "generate"])
def test_a_saved_dataset_directory_is_one_override_on_every_released_config(name, saved_dataset):
    cfg = load_config(name, {"dataset.source": str(saved_dataset)})
    dataset = build(cfg, "dataset", None)  # None: records in their internal form, no tokenizer needed
    assert [dataset[i]["id"] for i in range(len(dataset))] == [r["id"] for r in RECORDS]


@pytest.mark.parametrize("name", [*RELEASED, "generate"])
def test_data_files_is_one_override_on_every_released_config(name, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    dataset = build(load_config(name, {"dataset.data_files": str(data)}), "dataset", None)
    assert [dataset[i]["id"] for i in range(len(dataset))] == [r["id"] for r in RECORDS]


@pytest.mark.parametrize("name", [*RELEASED, "tiny_streaming"])
def test_a_weighted_mixture_is_two_overrides_on_every_released_config(name, saved_dataset, tmp_path):
    """A saved dataset directory and a JSON Lines file, 3:1, read by the config's own dataset builder (map-style or
    streaming) with its other keys; the config check takes the two keys."""
    data = tmp_path / "more.jsonl"
    data.write_text("".join(json.dumps({**record, "id": f"m{i}"}) + "\n" for i, record in enumerate(RECORDS)))
    cfg = load_config(name, {"dataset.mixture": [str(saved_dataset), str(data)], "dataset.weights": [3, 1]})
    assert not [problem for problem in component_problems(cfg) if problem.startswith("unknown key `dataset")]
    mixture = build_dataset(cfg, None, seed=0)  # None: records in their internal form, no tokenizer needed
    assert (mixture.names, mixture.weights) == ([str(saved_dataset), str(data)], [3.0, 1.0])
    assert {type(part).__name__ for part in mixture.datasets} == {
        "StreamingChatDataset" if name == "tiny_streaming" else "ChatDataset"}
    assert {sample["id"] for sample in itertools.islice(mixture, 40)} == {"r0", "r1", "r2", "m0", "m1", "m2"}


def test_a_released_config_without_data_says_which_keys_to_set():
    with pytest.raises(ValueError, match="data_files"):
        build(load_config(RELEASED[0], {}), "dataset", None)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A complete HF directory of the tiny model (weights, config.json, tokenizer, preprocessor configs)."""
    from qwenvl_data.models import qwen2_5_vl_tiny, save_hf_model

    torch.manual_seed(0)
    return save_hf_model(qwen2_5_vl_tiny(), tmp_path_factory.mktemp("tiny") / "hf_model")


def _lora_setup(tiny_checkpoint, tmp_path, **overrides):
    """setup() of the released 3B LoRA config on CPU with the tiny checkpoint and three records (no training)."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    return released_lora_setup(tiny_checkpoint, data, tmp_path / "run", **overrides)


def test_a_released_config_takes_the_model_size_from_checkpoint_dir(tiny_checkpoint, tmp_path):
    from qwenvl_data.models import load_hf_model

    model = _lora_setup(tiny_checkpoint, tmp_path).model
    base = load_hf_model(tiny_checkpoint).state_dict()
    loaded = {name: value for name, value in model.state_dict().items() if name in base}
    assert loaded.keys() == base.keys() and all(torch.equal(loaded[k], base[k]) for k in base)


def test_a_named_builder_of_another_size_is_refused_naming_both(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError) as error:
        _lora_setup(tiny_checkpoint, tmp_path, **{"model._component_": "qwenvl_data.models.lora_qwen2_5_vl_3b"})
    message = str(error.value)
    assert "qwenvl_data.models.lora_qwen2_5_vl_3b" in message and str(tiny_checkpoint / "config.json") in message
    assert "fits qwenvl_data.models.lora_qwen2_5_vl_tiny" in message


def _generate(tiny_checkpoint, tmp_path, **overrides):
    cfg = load_config("generate", {"checkpoint_dir": str(tiny_checkpoint), "output_dir": str(tmp_path / "generate"),
                                   "max_new_tokens": 2, **overrides})  # fmt: skip
    recipe = recipe_class("generate")(cfg)
    recipe.setup(cfg)
    return recipe


def test_generate_scores_your_records_with_one_override_and_counts_skips(tiny_checkpoint, tmp_path, capsys):
    broken = {"id": "no-picture", "messages": [
        {"role": "user", "content": [{"type": "image", "image": "missing.png"}, {"type": "text", "text": "Color?"}]},
        {"role": "assistant", "content": "red"}]}  # fmt: skip
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in [RECORDS[0], broken, *RECORDS[1:]]))
    result = _generate(tiny_checkpoint, tmp_path, **{"dataset.data_files": str(data)}).generate()
    assert [r["id"] for r in result["records"]] == ["r0", "no-picture", "r1", "r2"]
    assert (result["total"], result["skipped"]) == (4, 1)
    assert result["accuracy"] == result["correct"] / 4
    skipped = result["records"][1]
    assert skipped["correct"] is False and skipped["skipped"] == ImageLoadError.cause and "missing.png" in skipped["error"]
    assert "1 of these 4 records could not be asked and count as wrong answers" in capsys.readouterr().out
    lines = (tmp_path / "generate" / "answers.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["r0", "no-picture", "r1", "r2"]


def test_generate_answers_records_without_a_reference_and_leaves_them_unscored(tiny_checkpoint, tmp_path, capsys):
    question = {"id": "q-only", "question": "What is 2 + 2?"}
    no_assistant = {"id": "user-only", "messages": [{"role": "user", "content": "Name a color."}]}
    broken = {"id": "no-picture", "messages": [
        {"role": "user", "content": [{"type": "image", "image": "missing.png"}, {"type": "text", "text": "Color?"}]},
        {"role": "assistant", "content": "red"}]}  # fmt: skip
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [question, RECORDS[0], no_assistant, broken]))
    recipe = _generate(tiny_checkpoint, tmp_path, **{"dataset.data_files": str(data)})
    result = recipe.generate()
    by_id = {r["id"]: r for r in result["records"]}
    for name, text in (("q-only", "What is 2 + 2?"), ("user-only", "Name a color.")):
        record = by_id[name]
        assert record["reference"] is None and record["correct"] is None and isinstance(record["answer"], str)
        prompt = recipe.transform({"messages": [{"role": "user", "content": text}]}, inference=True)
        expected = recipe._answer([prompt])[0]  # the same prompt asked alone
        assert record["answer"] == recipe.transform.decode(expected)
    assert by_id["r0"]["reference"] == "0" and by_id["r0"]["correct"] in (True, False)
    assert (result["total"], result["unscored"], result["skipped"]) == (2, 2, 1)  # r0 and the skipped record
    assert result["accuracy"] == result["correct"] / 2
    out = capsys.readouterr().out
    assert "2 of 4 records have no reference answer: answered, not scored" in out
    assert "1 of these 2 records could not be asked" in out and "dataset.on_error=skip:" in out
    written = [json.loads(line) for line in (tmp_path / "generate" / "answers.jsonl").read_text().splitlines()]
    assert [r["id"] for r in written] == ["q-only", "r0", "user-only", "no-picture"]


def test_generate_takes_max_generated_tokens_as_max_new_tokens(tiny_checkpoint, tmp_path):
    assert _generate(tiny_checkpoint, tmp_path, max_new_tokens=None, max_generated_tokens=3).max_new_tokens == 3
    with pytest.raises(ValueError, match="once"):
        _generate(tiny_checkpoint, tmp_path, max_generated_tokens=3)  # and max_new_tokens=2


def test_generate_answers_a_question_about_a_video(tiny_checkpoint, tmp_path):
    from support.media import write_video

    from qwenvl_data._constants import VIDEO_PAD_ID

    clip = write_video(tmp_path / "clip.mp4", num_frames=8, width=56, height=56, rate=4)
    recipe = _generate(tiny_checkpoint, tmp_path, prompt="What happens?", videos=[clip])
    _, (prompt,) = recipe.prompt_samples()
    t, h, w = prompt["video_grid_thw"][0].tolist()
    assert prompt["tokens"].count(VIDEO_PAD_ID) == t * h * w // 4 > 0
    assert isinstance(recipe.generate()["answer"], str)


@pytest.mark.parametrize("name", RELEASED)
def test_each_released_configs_header_names_its_familys_checkpoint_size_and_builder(name):
    """The comments say which checkpoint to download and which sized builder fits: both of the name's family and size."""
    from torchtune.config._utils import _get_component_from_path

    from qwenvl_data.models import model_family

    model_type, size = re.fullmatch(r"(qwen[\d_]+vl)_(\d+b)_(?:full|lora)_\w+", name).groups()
    family = model_family(model_type)
    assert size in family.sizes
    text = (REPO / "configs" / f"{name}.yaml").read_text()
    header = text[: text.index("checkpoint_dir:")]
    checkpoint = re.search(r"e\.g\. a download of Qwen/(\S+)-Instruct\.", header).group(1)  # Qwen2-VL-2B
    letters_and_digits = lambda text: re.sub(r"[^a-z0-9]", "", text.lower())  # noqa: E731
    assert letters_and_digits(checkpoint) == letters_and_digits(family.architecture.split("For")[0] + size)
    assert f"checkpoint_dir=/models/{checkpoint}-Instruct" in header and f"--config configs/{name}.yaml" in header
    builder = re.search(r"a sized builder named here instead \((qwenvl_data\.models\.\w+)\)", text).group(1)
    assert builder == f"qwenvl_data.models.{'lora_' if '_lora_' in name else ''}{model_type}_{size}"
    assert callable(_get_component_from_path(builder))


@functools.cache
def _tiny_family_checkpoint(model_type: str, root: Path) -> Path:
    """A complete HF directory of a family's tiny model (``<model_type>_tiny``), its processor files the family's."""
    import qwenvl_data.models as models

    torch.manual_seed(0)
    return models.save_hf_model(getattr(models, f"{model_type}_tiny")(), root / model_type / "hf_model")


# The single-device LoRA configs of the families besides Qwen2.5-VL (whose own are checked above).
OTHER_FAMILY_LORA = [n for n in RELEASED if n.startswith(("qwen2_vl_", "qwen3_vl_")) and "_lora_single_device" in n]


@pytest.mark.parametrize("name", OTHER_FAMILY_LORA)
def test_each_familys_lora_config_builds_the_checkpoints_family_with_its_weights(tmp_path_factory, tmp_path, name):
    from qwenvl_data.models import family_of_model, load_hf_model, model_family

    family = model_family(re.match(r"qwen[\d_]+vl", name).group(0))
    checkpoint = _tiny_family_checkpoint(family.model_type, tmp_path_factory.getbasetemp())
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    recipe = released_lora_setup(checkpoint, data, tmp_path / "run", name)
    assert family_of_model(recipe.model) is family and recipe.model.tokens_per_second == family.tokens_per_second
    assert recipe.collate_fn.position_rule == family.position_rule and recipe.transform.family == family.model_type
    base = load_hf_model(checkpoint).state_dict()
    loaded = {key: value for key, value in recipe.model.state_dict().items() if key in base}
    assert loaded.keys() == base.keys() and all(torch.equal(loaded[k], base[k]) for k in base)
