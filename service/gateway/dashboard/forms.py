"""The run form of an action, generated from its arguments' JSON Schema (as ``/v1/plugins`` gives it).

Each argument becomes one labelled field; ``kind`` tells ``static/dashboard.js`` how to turn the
text typed into the JSON value the submit sends (a number, a boolean, a JSON document, a string).
A value that does not parse as its kind is sent as the string typed, so the gateway's own
validation names the field (``InvalidParamsError`` with ``fields``), and the form shows that
message next to it: the browser does not second-guess the server's rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["FormField", "form_fields"]


@dataclass(frozen=True)
class FormField:
    """One input of a run form."""

    name: str
    kind: str  # integer | number | boolean | enum | string | json
    required: bool
    default: str  # the default as the input's initial text ("" when none)
    description: str
    options: list[str]
    secret: bool
    nullable: bool


def _without_null(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The schema of ``T | None`` as ``T``, and whether ``None`` was allowed."""
    options = schema.get("anyOf")
    if not isinstance(options, list) or not any(o.get("type") == "null" for o in options):
        return schema, False
    rest = [o for o in options if o.get("type") != "null"]
    return (rest[0] if len(rest) == 1 else {"anyOf": rest}), True


def _kind(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "enum"
    kind = schema.get("type")
    if kind in ("integer", "number", "boolean", "string"):
        return str(kind)
    options = schema.get("anyOf", [])
    if {o.get("type") for o in options} == {"integer", "number"}:
        return "number"
    return "json"


def _default_text(schema: dict[str, Any], kind: str) -> str:
    if "default" not in schema or schema["default"] is None:
        return ""
    value = schema["default"]
    return value if kind in ("string", "enum") and isinstance(value, str) else json.dumps(value)


def form_fields(arguments: dict[str, Any]) -> list[FormField]:
    """The fields of the run form for an action's ``arguments`` schema, in the declared order."""
    required = set(arguments.get("required", []))
    fields = []
    for name, raw in arguments.get("properties", {}).items():
        schema, nullable = _without_null(raw)
        kind = _kind(schema)
        fields.append(
            FormField(
                name=name, kind=kind, required=name in required, default=_default_text(raw, kind),
                description=str(raw.get("description", "")), options=[json.dumps(v) for v in schema.get("enum", [])],
                secret=bool(raw.get("writeOnly")), nullable=nullable,
            )
        )  # fmt: skip
    return fields
