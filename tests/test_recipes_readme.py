"""README.md: the quick-start commands match CI and the repo, and the training-loop snippet runs."""

import re

from recipes_support import REPO

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
