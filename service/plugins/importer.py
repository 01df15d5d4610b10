"""Synthetic packages that plugin code is imported into, one fresh package per load.

A plugin folder is not a Python package and is never imported by name. Each load registers an empty
package ``actionq_plugins.<name>_<n>`` in ``sys.modules`` whose search path is the plugin folder, so
the plugin's modules import as its submodules (and can import sibling files relatively); unloading
removes that package and everything under it. :mod:`service.plugins.loader` does the importing.
"""

from __future__ import annotations

import importlib.machinery
import itertools
import re
import sys
import types
from pathlib import Path

__all__ = ["new_package", "remove_modules"]

_ROOT_PACKAGE = "actionq_plugins"
_package_ids = itertools.count(1)


def new_package(name: str, folder: Path) -> str:
    """Register a fresh, empty package whose search path is the plugin folder."""
    if _ROOT_PACKAGE not in sys.modules:
        sys.modules[_ROOT_PACKAGE] = _package(_ROOT_PACKAGE, [])
    safe_name = re.sub(r"\W", "_", name)
    package = f"{_ROOT_PACKAGE}.{safe_name}_{next(_package_ids)}"
    sys.modules[package] = _package(package, [str(folder)])
    return package


def _package(name: str, path: list[str]) -> types.ModuleType:
    module = types.ModuleType(name, "Synthetic package of an actionq plugin folder.")
    module.__path__ = path
    module.__package__ = name
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__spec__.submodule_search_locations = path
    return module


def remove_modules(package: str) -> None:
    if not package:
        return
    for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
        del sys.modules[key]
