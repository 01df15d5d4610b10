"""Settings: config.yml + ACTIONQ_* environment, loud about unknown keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from service.errors import ConfigError
from service.settings import Settings, load_settings

# The repository root, wherever under tests/ this file lives.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
CONFIGURATION_PAGE = ROOT / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ACTIONQ_"):
            monkeypatch.delenv(name)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


def test_defaults_without_any_configuration() -> None:
    settings = load_settings()
    assert settings.redis_url is None
    assert settings.namespace == "actionq"
    assert settings.queues == ["default"]


def test_file_then_environment_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _write(tmp_path, "namespace: fromfile\nconcurrency: 3\nredis_url: redis://file:6379/0\n")
    assert load_settings(config).concurrency == 3
    monkeypatch.setenv("ACTIONQ_CONCURRENCY", "7")
    settings = load_settings(config)
    assert (settings.namespace, settings.concurrency) == ("fromfile", 7)
    assert load_settings(config, concurrency=9, redis_url=None).concurrency == 9  # None overrides are ignored
    assert load_settings(config).redis_url == "redis://file:6379/0"


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIONQ_CONFIG", str(_write(tmp_path, "namespace: viaenv\n")))
    assert load_settings().namespace == "viaenv"


def test_misspelt_key_in_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"concurency: unknown setting"):
        load_settings(_write(tmp_path, "concurency: 3\n"))


def test_misspelt_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIONQ_CONCURENCY", "3")
    with pytest.raises(ConfigError, match="ACTIONQ_CONCURENCY"):
        load_settings()


def test_bad_values_name_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"concurrency: Input should be greater than or equal to 1"):
        load_settings(_write(tmp_path, "concurrency: 0\n"))
    with pytest.raises(ConfigError, match=r"plugins\.0\.enabeld: unknown setting"):
        load_settings(_write(tmp_path, "plugins: [{name: a, enabeld: true}]\n"))
    monkeypatch.setenv("ACTIONQ_NAMESPACE", "has space")
    with pytest.raises(ConfigError, match="namespace"):
        load_settings()


def test_unreadable_or_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(_write(tmp_path, "a: [1\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(_write(tmp_path, "- 1\n- 2\n"))


def test_relative_plugin_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    config = sub / "config.yml"
    config.write_text("plugin_dir: myplugins\nplugins: [{name: a, path: ./x}, {name: b}]\n")
    settings = load_settings(config)
    assert settings.plugin_path(settings.plugins[0]) == sub / "x"
    assert settings.plugin_path(settings.plugins[1]) == sub / "myplugins" / "b"


def test_plugins_list_from_environment_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIONQ_PLUGINS", '[{"name": "PluginB", "path": "/p/PluginB"}]')
    assert load_settings().plugins[0].name == "PluginB"


def _settings_table(text: str) -> dict[str, list[str]]:
    """The rows of the page's settings table (``| setting | environment | default | meaning |``), by setting."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| setting | environment | default |"))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows[cells[0].strip("`")] = cells
    return rows


def _written_default(value: object) -> str | None:
    """How the settings table writes a plain default; ``None``: one described in words (not compared)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):  # as config.yml and ACTIONQ_* write it
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float | str | Path):
        return f"`{value}`"
    if isinstance(value, list):
        return f"`{json.dumps(value)}`"
    return None


def test_docs_document_every_setting() -> None:
    rows = _settings_table(CONFIGURATION_PAGE.read_text())
    for name, field in Settings.model_fields.items():
        assert name in rows, f"docs/configuration.md: {name} is missing from the settings table"
        env, default, meaning = rows[name][1:4]
        assert re.fullmatch(rf"`ACTIONQ_{name.upper()}`( \(JSON\))?", env), f"{name}: environment {env!r}"
        assert default, f"{name}: no default"
        assert meaning, f"{name}: no meaning"
        written = None if field.default_factory is not None else _written_default(field.default)
        assert written is None or default == written, f"{name}: the table says {default}, the code {written}"
    assert set(rows) == set(Settings.model_fields), "the settings table lists a setting the code does not have"
