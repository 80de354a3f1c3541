"""Run from a source checkout without installing: the repository's ``models/`` and ``convert/`` folders
are the packages ``srsmc_jax.models`` and ``srsmc_jax.convert`` (an installed wheel holds them inside
``srsmc_jax/``; an editable install maps them the same way). Only a checkout of this project
qualifies (its ``pyproject.toml`` names ``srsmc-jax``), so an unrelated ``models`` package beside an
installed ``srsmc_jax`` is never picked up."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

SUBPACKAGES = ("models", "convert")


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, sub = fullname.partition(".")
        if prefix == "srsmc_jax" and sub in SUBPACKAGES:
            folder = self.root / sub
            return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                          submodule_search_locations=[str(folder)])
        return None


def install() -> None:
    here = Path(__file__).resolve().parent
    root = here.parent
    if any((here / sub).exists() for sub in SUBPACKAGES):
        return  # an installed wheel
    try:
        ours = 'name = "srsmc-jax"' in (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return
    if ours and all((root / sub / "__init__.py").is_file() for sub in SUBPACKAGES):
        if not any(isinstance(f, _CheckoutFinder) and f.root == root for f in sys.meta_path):
            sys.meta_path.insert(0, _CheckoutFinder(root))


install()
