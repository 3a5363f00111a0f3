"""README.md: the quick-start commands match CI and the repo, and the training-loop snippet runs."""

import re
import shlex

from omegaconf import OmegaConf
from support.recipes_support import REPO, recipe_class

from qwenvl_data.training._config import check_config_keys

README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_quick_start_is_two_commands_and_the_test_one_is_what_ci_runs():
    block = re.search(r"```bash\n(.*?)```", _section("Quick start"), re.S).group(1)
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert commands == [
        'pip install -e ".[vocab]" && tune run recipes/full_finetune_single_device.py --config configs/tiny_synthetic.yaml',
        'pip install -e ".[dev]" && python -m pytest -q',
    ]
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in ci and "-m pytest -q" in ci


def test_every_recipe_and_config_the_readme_names_exists():
    for recipe in set(re.findall(r"recipes/(\w+)\.py", README)):
        assert (REPO / "recipes" / f"{recipe}.py").is_file(), recipe
    for config in set(re.findall(r"configs/(\w+)\.yaml", README)) | set(re.findall(r"`(\w+)\.yaml`", README)):
        assert (REPO / "configs" / f"{config}.yaml").is_file(), config


def test_own_training_loop_snippet_runs(capsys):
    code = re.search(r"```python\n(.*?)```", _section("Use the dataset and collator"), re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    losses = [float(line.split()[1]) for line in capsys.readouterr().out.splitlines() if line.startswith("loss ")]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)


def test_generation_snippet_runs(capsys):
    code = re.search(r"```python\n(.*?)```", _section("Generate answers in your own code"), re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    answers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("answer ")]
    assert len(answers) == 2


def _tune_run_commands() -> list[list[str]]:
    """Every `tune run ...` command of README's bash blocks, continuation lines joined, as argv lists."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].split("&& ")[-1].strip()
            if line.startswith("tune run"):
                commands.append(shlex.split(line))
    return commands


def test_every_tune_run_command_passes_its_recipes_config_checks():
    """The released configs with README's overrides: keys, nested keys and values as the recipe checks them."""
    commands = _tune_run_commands()
    assert len(commands) >= 8
    for argv in commands:
        recipe_name = next(a for a in argv if a.startswith("recipes/")).removeprefix("recipes/").removesuffix(".py")
        config = argv[argv.index("--config") + 1]
        overrides = [a for a in argv[argv.index("--config") + 2 :] if "=" in a]
        cfg = OmegaConf.merge(OmegaConf.load(REPO / config), OmegaConf.from_dotlist([*overrides, "device=cpu"]))
        recipe = recipe_class(recipe_name)
        if recipe_name == "generate":
            recipe(cfg)  # its __init__ only checks the config
            continue
        from qwenvl_data.training._settings import LORA_KEYS, OPTIONAL_KEYS, REQUIRED_KEYS, VALUE_RULES

        optional = OPTIONAL_KEYS + (LORA_KEYS if recipe.lora else ())
        check_config_keys(cfg, " ".join(argv), REQUIRED_KEYS, optional, VALUE_RULES)


def test_the_useful_keys_are_in_every_released_config():
    sentence = README[README.index("Useful keys (all in the released configs):") :].split("\n\n")[0]
    keys = {k.split("=")[0] for k in re.findall(r"`([\w.]+(?:=\w+)?)`", sentence)}
    keys = {k for k in keys if not k.startswith("dataset.")}  # dataset options are shown, not set, there
    assert {"freeze_vision_tower", "freeze_merger", "tokenizer.max_seq_len", "max_skip_fraction"} <= keys
    for config in sorted((REPO / "configs").glob("qwen*_vl_*.yaml")):
        cfg = OmegaConf.load(config)
        missing = [k for k in keys if OmegaConf.select(cfg, k, default="__missing__") == "__missing__"]
        assert not missing, (config.name, missing)


def test_quick_start_figures_agree_with_the_default_config():
    """The default run as README's Quick start describes it: sizes, schedule, chance and per-seed accuracies."""
    from qwenvl_data.datasets._synthetic import SyntheticVQASource

    text = " ".join(_section("Quick start").split())
    cfg = OmegaConf.load(REPO / "configs" / "tiny_synthetic.yaml")
    steps, batch = (int(n) for n in re.search(r"trains for (\d+) steps of (\d+) samples", text).groups())
    assert (steps, batch) == (cfg.dataset.num_samples // cfg.batch_size, cfg.batch_size)
    assert int(re.search(r"evaluates (\d+) held-out questions", text)[1]) == cfg.eval_dataset.num_samples
    assert int(re.search(r"measured every (\d+) steps", text)[1]) == cfg.eval_every_n_steps
    assert int(re.search(r"to (\d+) held-out questions next to the truth", text)[1]) == cfg.eval_examples
    side = cfg.dataset.image_size
    assert f"{side}x{side} picture" in text and cfg.eval_dataset.image_size == side
    assert f"`{cfg.model._component_.rsplit('.', 1)[-1]}`" in text
    options = {k: v for k, v in OmegaConf.to_container(cfg.eval_dataset).items() if k != "_component_"}
    held_out = SyntheticVQASource(**options)
    chance = sum(held_out[i]["chance"] for i in range(len(held_out))) / len(held_out)
    assert f"chance {100 * chance:.1f}%" in text  # what the run prints beside its accuracy
    rows = re.findall(r"\| (\d)(?: \(default\))? \| ([\d.]+)% \((\d+)/(\d+)\) \| ([\d.]+) \| ([\d.]+) \|", text)
    assert sorted(int(seed) for seed, *_ in rows) == [0, 1, 2]
    for seed, percent, correct, total, train_seconds, command_seconds in rows:
        assert int(total) == cfg.eval_dataset.num_samples >= 256, seed
        assert percent == f"{100 * int(correct) / int(total):.1f}", seed  # as the run prints it
        # What the default run promises (issue 23): at least 90% at each seed, in at most 90 s of training.
        assert int(correct) / int(total) >= 0.9 > chance, seed
        assert float(train_seconds) <= 90 and float(train_seconds) < float(command_seconds), seed
    assert f"`trained {steps} steps in" in text  # the console line the training seconds are read from
