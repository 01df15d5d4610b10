"""The public surface is explicit and complete."""

from __future__ import annotations

import inspect

import service
from service import errors


def test_all_names_exist_and_are_documented() -> None:
    for name in service.__all__:
        obj = getattr(service, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_every_error_is_exported_and_in_the_drawn_tree() -> None:
    tree = errors.__doc__ or ""
    for name in errors.__all__:
        obj = getattr(errors, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert name in service.__all__, name
            assert name in tree, f"{name} missing from the tree in service/errors.py"
            assert issubclass(obj, errors.ActionQError | errors.ActionQSignal)


def test_no_pickle_anywhere_in_the_package() -> None:
    import pathlib

    root = pathlib.Path(service.__file__).parent
    for path in root.rglob("*.py"):
        assert "import pickle" not in path.read_text(), path
