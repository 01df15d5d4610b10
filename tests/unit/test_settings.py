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


# -- seed 004's config.yml sections ---------------------------------------------------------------


def test_the_seeds_general_section_maps_onto_settings(tmp_path: Path) -> None:
    config = _write(
        tmp_path, "general:\n  hostname: node-7\n  plugin_package: plugins_test\n  console_log_level: WARNING\n"
    )
    settings = load_settings(config)
    assert settings.hostname == "node-7"
    assert settings.plugin_dir == tmp_path / "plugins_test"  # relative to the file, as plugin_dir is
    assert settings.log_level == "WARNING"


def test_the_seeds_empty_hostname_means_this_machines(tmp_path: Path) -> None:
    import socket

    assert load_settings(_write(tmp_path, 'general:\n  hostname: ""\n')).hostname == socket.gethostname()


def test_an_unknown_general_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"general\.log_file: unknown key \(the seed's general section has hostname"):
        load_settings(_write(tmp_path, "general:\n  log_file: x.log\n"))
    with pytest.raises(ConfigError, match="general: must be a mapping, not list"):
        load_settings(_write(tmp_path, "general: [1]\n"))


def test_a_seed_key_and_its_setting_must_agree(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"general\.hostname \('a'\) and hostname \('b'\) disagree: give one of them"):
        load_settings(_write(tmp_path, "hostname: b\ngeneral:\n  hostname: a\n"))
    with pytest.raises(ConfigError, match=r"general\.console_log_level \('DEBUG'\) and log_level \('INFO'\) disagree"):
        load_settings(_write(tmp_path, "log_level: INFO\ngeneral:\n  console_log_level: DEBUG\n"))
    with pytest.raises(ConfigError, match=r"general\.plugin_package .* and plugin_dir .* disagree"):
        load_settings(_write(tmp_path, "plugin_dir: a\ngeneral:\n  plugin_package: b\n"))
    same = load_settings(_write(tmp_path, "plugin_dir: ./p\nhostname: h\ngeneral: {plugin_package: p, hostname: h}\n"))
    assert (same.plugin_dir, same.hostname) == (tmp_path / "p", "h")


def test_the_environment_overrides_a_seed_key_as_it_does_any_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTIONQ_LOG_LEVEL", "ERROR")
    assert load_settings(_write(tmp_path, "general:\n  console_log_level: DEBUG\n")).log_level == "ERROR"


def test_a_bad_seed_value_names_the_key_as_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"log_level: Input should be .* \(given as general\.console_log_level"):
        load_settings(_write(tmp_path, "general:\n  console_log_level: LOUD\n"))


def test_networking_keys_that_say_what_actionq_does_are_accepted(tmp_path: Path) -> None:
    text = (
        "networking:\n  enabled: true\n  node_ips: []\n  discover_nodes: true\n"
        "  direct_discoverable: true\n  auto_discoverable: true\n"
    )
    assert load_settings(_write(tmp_path, text)).namespace == "actionq"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("enabled: false", r"networking\.enabled: False has no meaning in actionq: actionq has no local-only mode"),
        ("node_ips: [192.168.1.100]", r"networking\.node_ips: \['192\.168\.1\.100'\] .* not by address"),
        ("port: 2510", r"networking\.port: 2510 has no meaning in actionq: actionq opens no port"),
        ("discover_nodes: false", r"networking\.discover_nodes: False .* found through the registry"),
        ("direct_discoverable: false", r"networking\.direct_discoverable: False .* listed in the registry"),
        ("auto_discoverable: false", r"networking\.auto_discoverable: False .* announces itself in the registry"),
        ("enabled: 1", r"networking\.enabled: 1 has no meaning"),
        ("gossip: true", r"networking\.gossip: unknown key"),
    ],
)
def test_networking_keys_actionq_cannot_honour_are_refused_with_the_reason(
    tmp_path: Path, line: str, reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason):
        load_settings(_write(tmp_path, f"networking:\n  {line}\n"))


def test_the_seeds_whole_config_file_lists_every_problem_at_once(tmp_path: Path) -> None:
    seed = (
        "plugins:\n  - name: PluginB\n    enabled: true\n"
        "general:\n  hostname: ''\n  plugin_package: plugins_test\n  console_log_level: INFO\n"
        "networking:\n  enabled: False\n  node_ips: []\n  port: 2510\n  discover_nodes: True\n"
        "  direct_discoverable: True\n  auto_discoverable: True\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(_write(tmp_path, seed))
    assert "networking.enabled: False" in str(refused.value)
    assert "networking.port: 2510" in str(refused.value)
    assert "node_ips" not in str(refused.value)


# -- storage and plugin entries ---------------------------------------------------------------------


def test_storage_defaults_to_redis_and_is_overridden_per_plugin(tmp_path: Path) -> None:
    settings = load_settings(
        _write(
            tmp_path,
            "storage: {backend: file, path: data}\n"
            "plugins:\n  - {name: a}\n  - {name: b, storage: {backend: memory}}\n"
            "  - {name: c, storage: {backend: file, path: ./c-data}}\n",
        )
    )
    assert load_settings().storage.backend == "redis"
    assert settings.storage.path == tmp_path / "data"  # relative to the file
    assert settings.plugin_storage("a") == settings.storage
    assert settings.plugin_storage("b").backend == "memory"
    assert settings.plugin_storage("c").path == tmp_path / "c-data"
    assert settings.plugin_storage("not-configured") == settings.storage


def test_storage_settings_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"storage: the file backend needs a path"):
        load_settings(_write(tmp_path, "storage: {backend: file}\n"))
    with pytest.raises(ConfigError, match=r"path is for the file backend only \(backend is redis\)"):
        load_settings(_write(tmp_path, "storage: {path: x}\n"))
    with pytest.raises(ConfigError, match=r"storage\.backend: Input should be 'redis', 'file' or 'memory'"):
        load_settings(_write(tmp_path, "storage: {backend: s3}\n"))
    with pytest.raises(ConfigError, match=r"plugins\.0\.storage\.ttl: unknown setting"):
        load_settings(_write(tmp_path, "plugins: [{name: a, storage: {backend: memory, ttl: 3}}]\n"))
    monkeypatch.setenv("ACTIONQ_STORAGE__BACKEND", "memory")
    assert load_settings().storage.backend == "memory"


def test_a_plugins_config_block_is_kept_and_not_shown(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, "plugins:\n  - name: a\n    config: {api_key: hunter2, n: 3}\n"))
    entry = settings.plugin_entry("a")
    assert entry is not None
    assert entry.config == {"api_key": "hunter2", "n": 3}
    assert "hunter2" not in repr(settings)
    assert settings.plugin_entry("b") is None
    with pytest.raises(ConfigError, match=r"plugins\.0\.config: Input should be a valid dictionary"):
        load_settings(_write(tmp_path, "plugins: [{name: a, config: [1]}]\n"))


def test_failed_jobs_can_be_kept_longer_than_successes() -> None:
    from service.models import JobState

    both = Settings(result_ttl_s=60, failed_result_ttl_s=604_800)
    assert both.kept_for_s(JobState.SUCCEEDED) == 60
    assert [both.kept_for_s(s) for s in (JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED)] == [604_800] * 3
    assert Settings(result_ttl_s=60).kept_for_s(JobState.FAILED) == 60  # unset: as successes
