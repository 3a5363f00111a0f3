"""Make `tune run recipes/<name>.py` find this repository's recipes/ instead of torchtune's.

torchtune 0.6.1 runs a recipe given as a path with `runpy.run_module("recipes.<name>")` after
appending the working directory to sys.path, so the `recipes` package that torchtune's own wheel
installs in site-packages (whose __init__ raises on import) is found first. This module is
loaded through the `torch.backends` entry point (which torch calls at the end of `import torch`,
before tune resolves the recipe) and puts a finder in front that maps the top-level name
`recipes` to ./recipes when the working directory holds a recipes package, the same resolution
`python -m recipes.<name>` gives. Nothing else is touched, and torchtune's `recipes` package can
never be imported anyway. It imports nothing heavy: it runs while torch is still initializing.
"""

import importlib.util
import os
import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec


class _LocalRecipesFinder(MetaPathFinder):
    """Resolve the top-level `recipes` package to <cwd>/recipes/__init__.py when it exists."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if fullname != "recipes":
            return None
        package_dir = os.path.join(os.getcwd(), "recipes")
        init = os.path.join(package_dir, "__init__.py")
        if not os.path.isfile(init):
            return None
        return importlib.util.spec_from_file_location("recipes", init, submodule_search_locations=[package_dir])


def install() -> None:
    """Entry point: idempotently put the finder first on sys.meta_path."""
    if not any(isinstance(finder, _LocalRecipesFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LocalRecipesFinder())
