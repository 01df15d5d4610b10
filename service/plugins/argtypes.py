"""Argument types of manifests: a small type language parsed with :mod:`ast`, never ``eval``::

any  str  int  float  bool  list  dict  none      (also: string integer number boolean
list[int]  dict[str, int]  int | None             array object null; number = int | float)
Optional[int]  Union[int, str]  Literal["a", "b"]
"""

from __future__ import annotations

import ast
import functools
import operator
from collections.abc import Mapping
from typing import Any, Final, Literal

__all__ = ["parse_type"]

_SIMPLE_TYPES: Final[Mapping[str, Any]] = {
    "any": Any,
    "Any": Any,
    "str": str,
    "string": str,
    "int": int,
    "integer": int,
    "float": float,
    "number": int | float,
    "bool": bool,
    "boolean": bool,
    "list": list[Any],
    "array": list[Any],
    "dict": dict[str, Any],
    "object": dict[str, Any],
    "none": None,
    "None": None,
    "null": None,
}
_GENERIC_ARITY: Final[Mapping[str, int]] = {"list": 1, "array": 1, "dict": 2, "object": 2, "Optional": 1}


def parse_type(text: str) -> Any:
    """The Python annotation of a manifest type string; ``ValueError`` names what is wrong."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot parse type {text!r}") from None
    return _convert(tree.body, text)


def _convert(node: ast.expr, text: str) -> Any:
    if isinstance(node, ast.Name):
        if node.id not in _SIMPLE_TYPES:
            raise ValueError(f"unknown type {node.id!r} in {text!r} (known: {', '.join(sorted(_SIMPLE_TYPES))})")
        return _SIMPLE_TYPES[node.id]
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union_member(_convert(node.left, text)) | _union_member(_convert(node.right, text))
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return _convert_generic(node.value.id, items, text)
    raise ValueError(f"unsupported type syntax {ast.unparse(node)!r} in {text!r}")


def _union_member(annotation: Any) -> Any:
    # `None` stands for NoneType in annotations, but `|` and `Union` at runtime need the type itself.
    return type(None) if annotation is None else annotation


def _convert_generic(base: str, items: list[ast.expr], text: str) -> Any:
    if base == "Literal":
        values = [item.value for item in items if isinstance(item, ast.Constant)]
        if len(values) != len(items) or not all(isinstance(v, str | int | bool | None) for v in values):
            raise ValueError(f"Literal takes only str, int, bool or None constants in {text!r}")
        return Literal.__getitem__(tuple(values))
    args = [_union_member(_convert(item, text)) for item in items]
    arity = _GENERIC_ARITY.get(base)
    if base == "Union" and args:
        return functools.reduce(operator.or_, args)
    if arity is None:
        raise ValueError(f"unknown generic type {base!r} in {text!r}")
    if len(args) != arity:
        raise ValueError(f"{base}[...] takes {arity} type(s), got {len(args)} in {text!r}")
    if base in ("list", "array"):
        return list[args[0]]  # type: ignore[valid-type]
    if base == "Optional":
        return args[0] | None
    return dict[args[0], args[1]]  # type: ignore[valid-type]
