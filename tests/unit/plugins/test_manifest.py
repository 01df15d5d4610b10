"""Manifests: both file shapes, the type language, params validation and the JSON round trip."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from service.errors import FieldError, InvalidParamsError, ManifestError, UnknownActionError
from service.plugins.manifest import MISSING, ArgumentSpec, PluginManifest, load_manifest, parse_type

PLUGINS = Path(__file__).resolve().parents[3] / "plugins"


def write(folder: Path, filename: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / filename).write_text(text)
    return folder


def manifest(*arguments: dict[str, Any], **action: Any) -> PluginManifest:
    return PluginManifest.model_validate(
        {"name": "p", "actions": [{"name": "act", "arguments": list(arguments), **action}]}
    )


# --- our shape -------------------------------------------------------------------------------


def test_our_shape_with_mapping_arguments(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "calc",
        "plugin.yml",
        """
name: calc
version: 2.1
class: Calculator
module: calc.py
actions:
  - name: add
    method: add_numbers
    timeout_s: 5
    tags: [math]
    arguments:
      a: int
      b: {type: int, default: 1, description: second}
      c: {default: null}
      d:
""",
    )
    m = load_manifest(folder)
    assert (m.name, m.version, m.class_name, m.module) == ("calc", "2.1", "Calculator", "calc.py")
    add = m.action("add")
    assert (add.method, add.timeout_s, add.tags) == ("add_numbers", 5, ["math"])
    a, b, c, d = add.arguments
    assert (a.type, a.required) == ("int", True)
    assert (b.default, b.description, b.required) == (1, "second", False)
    assert (c.type, c.default, c.required) == ("any", None, False)
    assert d.required
    assert d.default is MISSING


def test_list_arguments_and_method_defaults_to_name() -> None:
    m = manifest({"name": "x", "type": "str"})
    assert m.action("act").method == "act"
    assert m.action("act").argument_names() == ["x"]


def test_configured_name_fills_in_and_must_match(tmp_path: Path) -> None:
    folder = write(tmp_path / "folder", "plugin.yml", "description: no name here\n")
    assert load_manifest(folder).name == "folder"
    assert load_manifest(folder, "configured").name == "configured"
    named = write(tmp_path / "named", "plugin.yml", "name: one\n")
    with pytest.raises(ManifestError, match="differs from the configured name 'two'"):
        load_manifest(named, "two")


# --- the seed's shape ------------------------------------------------------------------------


def test_seed_shape_bundled_plugin_b() -> None:
    m = load_manifest(PLUGINS / "PluginB")
    assert (m.name, m.version) == ("PluginB", "1.0.0")
    spec = m.action("calculate_square")
    assert spec.method == "calculate_square"
    assert [(a.name, a.type) for a in spec.arguments] == [("x", "number")]


def test_seed_shape_access_name_and_ignored_networking_keys(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "Seedy",
        "plugin_config.yml",
        """
description: seed
version: 1.0
remote: True
arguments: []
endpoints:
  - internal_name: do_it
    access_name: public_name
    tags: [t]
    remote: False
    accessible_by_other_plugins: False
    description: does it
    arguments:
      - {name: n, type: integer, description: count}
""",
    )
    m = load_manifest(folder, "Seedy")
    assert (m.name, m.version, m.description) == ("Seedy", "1.0", "seed")
    spec = m.action("public_name")
    assert (spec.method, spec.tags, spec.description) == ("do_it", ["t"], "does it")
    assert spec.arguments == [ArgumentSpec(name="n", type="integer", description="count")]


def test_our_shape_wins_over_seed_shape(tmp_path: Path) -> None:
    folder = write(tmp_path / "both", "plugin.yml", "name: both\nversion: '9'\n")
    write(folder, "plugin_config.yml", "version: '1'\n")
    assert load_manifest(folder).version == "9"


@pytest.mark.parametrize(
    ("filename", "text", "expected"),
    [
        ("plugin.yml", "name: p\ncolour: blue\n", "plugin.yml: colour: unknown key"),
        (
            "plugin.yml",
            "name: p\nactions: [{name: a, timeout_s: 0}]\n",
            "plugin.yml: actions.0.timeout_s: Input should be greater than 0",
        ),
        ("plugin.yml", "name: p\nactions: [{name: a, argumnts: []}]\n", "plugin.yml: actions.0.argumnts: unknown key"),
        ("plugin.yml", "name: p\nactions: [{name: a}, {name: a}]\n", "duplicate action name(s): a"),
        ("plugin.yml", "name: p\nactions: [{name: a, arguments: {x: {}, ctx: {}}}]\n", "'ctx' is reserved"),
        ("plugin.yml", "name: p\nactions: [{name: a, method: _private}]\n", "not a public method name"),
        ("plugin.yml", "name: p\nactions: [{name: a, method: on_enable}]\n", "not a public method name"),
        ("plugin.yml", "name: 'bad name'\n", "plugin.yml: name: String should match pattern"),
        ("plugin.yml", "- just\n- a list\n", "plugin.yml: must be a mapping, not list"),
        ("plugin.yml", "name: [unclosed\n", "plugin.yml: not valid YAML"),
        (
            "plugin_config.yml",
            "endpoints: [{internal_name: f, host: x}]\n",
            "plugin_config.yml: endpoints.0.host: unknown key",
        ),
        (
            "plugin_config.yml",
            "endpoints: [{access_name: f}]\n",
            "plugin_config.yml: endpoints.0.internal_name: Field required",
        ),
        ("plugin_config.yml", "name: p\n", "plugin_config.yml: name: unknown key"),
    ],
)
def test_manifest_errors_name_file_and_field(tmp_path: Path, filename: str, text: str, expected: str) -> None:
    folder = write(tmp_path / "p", filename, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(folder)
    assert expected in info.value.reason
    assert info.value.plugin == "p"


def test_missing_manifest(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match=r"no plugin\.yml or plugin_config\.yml"):
        load_manifest(tmp_path / "empty")


# --- the type language -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("int", "6", 6),
        ("integer", "6", 6),
        ("number", 6, 6),
        ("number", "6", 6),
        ("number", 6.5, 6.5),
        ("float", 6, 6.0),
        ("str", "x", "x"),
        ("bool", "true", True),
        ("boolean", "false", False),
        ("list[int]", ["1", 2], [1, 2]),
        ("array", [1, "a"], [1, "a"]),
        ("dict[str, int]", {"a": "1"}, {"a": 1}),
        ("object", {"a": [1]}, {"a": [1]}),
        ("int | None", None, None),
        ("None | int", "3", 3),
        ("Optional[int]", None, None),
        ("Union[int, str]", "x", "x"),
        ('Literal["a", "b"]', "b", "b"),
        ("list[Literal[1, 2]] | null", [2], [2]),
        ("any", {"x": object}, {"x": object}),
    ],
)
def test_types_coerce_like_pydantic_lax_mode(text: str, value: Any, expected: Any) -> None:
    m = manifest({"name": "v", "type": text})
    result = m.validate_params("act", {"v": value})["v"]
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bytes", "unknown type 'bytes'"),
        ("list[bytes]", "unknown type 'bytes'"),
        ("tuple[int]", "unknown generic type 'tuple'"),
        ("list[int, str]", "takes 1 type(s), got 2"),
        ("dict[str]", "takes 2 type(s), got 1"),
        ("Literal[x]", "Literal takes only"),
        ('__import__("os")', "unsupported type syntax"),
        ("int.real", "unsupported type syntax"),
        ("int |", "cannot parse type"),
    ],
)
def test_bad_types_are_rejected_without_evaluating(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_type(text)


def test_unknown_type_in_manifest_names_argument_and_type(tmp_path: Path) -> None:
    folder = write(tmp_path / "p", "plugin.yml", "name: p\nactions: [{name: a, arguments: {count: {type: integr}}}]\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(folder)
    assert "actions.0.arguments.0.type" in info.value.reason
    assert "argument 'count'" in info.value.reason
    assert "'integr'" in info.value.reason


def test_default_must_fit_declared_type() -> None:
    with pytest.raises(ValueError, match="default of argument 'n' does not fit type 'int'"):
        ArgumentSpec(name="n", type="int", default="many")


# --- params validation -----------------------------------------------------------------------


def test_validate_fills_defaults_and_coerces() -> None:
    m = manifest(
        {"name": "n", "type": "int"},
        {"name": "flag", "type": "bool", "default": False},
        {"name": "label", "type": "str | None", "default": None},
    )
    assert m.validate_params("act", {"n": "6"}) == {"n": 6, "flag": False, "label": None}
    assert m.validate_params("act", {"n": 1, "flag": "true", "label": "x"}) == {"n": 1, "flag": True, "label": "x"}


def test_validate_names_every_bad_field() -> None:
    m = manifest(
        {"name": "n", "type": "int"}, {"name": "m", "type": "int"}, {"name": "s", "type": "str", "default": ""}
    )
    with pytest.raises(InvalidParamsError) as info:
        m.validate_params("act", {"m": "six", "s": 5, "extra": 1, "other": 2})
    fields = {e.field: e.message for e in info.value.errors}
    assert set(fields) == {"n", "m", "s", "extra", "other"}
    assert fields["n"] == "Field required"
    assert "valid integer" in fields["m"]
    assert fields["extra"] == "unknown argument"
    assert (info.value.plugin, info.value.action) == ("p", "act")


def test_union_errors_are_merged_into_one_field_error() -> None:
    m = manifest({"name": "v", "type": "int | bool"})
    with pytest.raises(InvalidParamsError) as info:
        m.validate_params("act", {"v": "neither"})
    assert [e.field for e in info.value.errors] == ["v"]
    assert "int" in info.value.errors[0].message
    assert "bool" in info.value.errors[0].message


def test_nested_error_location_is_in_the_message() -> None:
    m = manifest({"name": "v", "type": "list[int]"})
    with pytest.raises(InvalidParamsError) as info:
        m.validate_params("act", {"v": [1, "x"]})
    assert info.value.errors == (FieldError(field="v", message=info.value.errors[0].message),)
    assert info.value.errors[0].message.startswith("1: ")


def test_argument_names_that_are_not_identifiers() -> None:
    m = manifest({"name": "model_config", "type": "int"}, {"name": "a-b", "default": 2})
    assert m.validate_params("act", {"model_config": "1"}) == {"model_config": 1, "a-b": 2}


def test_unknown_action() -> None:
    m = manifest()
    with pytest.raises(UnknownActionError) as info:
        m.validate_params("nope", {})
    assert info.value.known == ("act",)


def test_params_model_is_cached_per_spec() -> None:
    m = manifest({"name": "n", "type": "int"})
    m.validate_params("act", {"n": 1})
    model = m._params_models["act"][1]
    m.validate_params("act", {"n": 2})
    assert m._params_models["act"][1] is model
    # model_copy shares private attributes: the copy must not reuse a model built from the old spec.
    spec = m.action("act")
    changed = spec.model_copy(update={"arguments": [spec.arguments[0].model_copy(update={"default": 7})]})
    copy = m.model_copy(update={"actions": [changed]})
    assert copy.validate_params("act", {}) == {"n": 7}


def test_bind_positional() -> None:
    m = manifest({"name": "a"}, {"name": "b", "default": 1})
    assert m.bind_positional("act", [6]) == {"a": 6}
    assert m.bind_positional("act", (6, 7)) == {"a": 6, "b": 7}
    with pytest.raises(InvalidParamsError) as info:
        m.bind_positional("act", [1, 2, 3])
    assert info.value.errors[0].field == "args"
    assert "at most 2" in info.value.errors[0].message


# --- JSON round trip (the registry publishes manifests as JSON) ------------------------------


def test_json_round_trip_keeps_missing_and_none_defaults_apart() -> None:
    m = PluginManifest.model_validate(
        {
            "name": "p",
            "class": "K",
            "actions": [
                {
                    "name": "act",
                    "timeout_s": 1.5,
                    "arguments": {"req": {"type": "int"}, "opt": {"type": "int | None", "default": None}},
                }
            ],
        }
    )
    data = m.model_dump(mode="json", by_alias=True)
    assert data["class"] == "K"
    req, opt = data["actions"][0]["arguments"]
    assert "default" not in req
    assert opt["default"] is None
    again = PluginManifest.model_validate(data)
    assert again == m
    assert again.action("act").arguments[0].required
    assert not again.action("act").arguments[1].required
    assert PluginManifest.model_validate_json(m.model_dump_json(by_alias=True)) == m


def test_bundled_manifests_round_trip() -> None:
    for folder in sorted(p for p in PLUGINS.iterdir() if p.is_dir()):
        m = load_manifest(folder)
        assert PluginManifest.model_validate(m.model_dump(mode="json", by_alias=True)) == m
