"""docker-compose.yml, the Dockerfile, .ci/run and the README agree with the package they run.

No Docker engine is needed: the files are parsed and checked against pyproject.toml, the Typer
app in :mod:`service.cli.app` and the files the image would contain.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import typer
import yaml

from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PATH = REPO_ROOT / "docker-compose.yml"
DOCKERFILE_PATH = REPO_ROOT / "Dockerfile"


# -- parsing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Copy:
    """One ``COPY`` of the Dockerfile: repo sources and the absolute destination in the image."""

    sources: tuple[str, ...]
    dest: PurePosixPath
    dest_is_dir: bool


@dataclass(frozen=True)
class Dockerfile:
    """The parts of a Dockerfile these checks need."""

    base: str
    copies: tuple[Copy, ...]
    cmd: list[str]

    def source_of(self, image_path: PurePosixPath) -> Path | None:
        """The repo file the image gets at ``image_path`` (the last COPY that provides it), if any."""
        found = None
        for copy in self.copies:
            for src in copy.sources:
                candidate = _copied_file(REPO_ROOT / src, copy, image_path)
                if candidate is not None:
                    found = candidate
        return found


def _copied_file(src: Path, copy: Copy, image_path: PurePosixPath) -> Path | None:
    if src.is_dir():  # a directory's contents go into the destination directory
        if not image_path.is_relative_to(copy.dest):
            return None
        candidate = src / image_path.relative_to(copy.dest)
        return candidate if candidate.exists() else None
    target = copy.dest / src.name if copy.dest_is_dir else copy.dest
    return src if target == image_path and src.exists() else None


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            pairs.append((instruction.upper(), args.strip()))
    return pairs


def _words(args: str) -> list[str]:
    """Exec form (a JSON array) or shell form of CMD/COPY arguments."""
    if args.startswith("["):
        words: list[str] = json.loads(args)
        return words
    return shlex.split(args)


def parse_dockerfile(path: Path = DOCKERFILE_PATH) -> Dockerfile:
    """Read FROM, WORKDIR, COPY and CMD (what a build would do with them, for these checks)."""
    base, workdir, cmd = "", PurePosixPath("/"), []
    copies = []
    for instruction, args in _instructions(path.read_text()):
        if instruction == "FROM":
            base = args.split()[0]
        elif instruction == "WORKDIR":
            workdir = workdir / args
        elif instruction == "COPY":
            words = [w for w in _words(args) if not w.startswith("--")]  # --chown=..., --link
            if any(a.startswith("--from") for a in args.split()):
                continue  # from another stage, not from the repo
            *sources, dest = words
            is_dir = dest.endswith("/") or dest in {".", "./"} or len(sources) > 1
            copies.append(Copy(tuple(sources), workdir / dest, is_dir))
        elif instruction == "CMD":
            cmd = _words(args)
    return Dockerfile(base=base, copies=tuple(copies), cmd=cmd)


def load_compose() -> dict[str, Any]:
    """docker-compose.yml as a mapping."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE_PATH.read_text())
    return data


def _worker() -> dict[str, Any]:
    service: dict[str, Any] = load_compose()["services"]["worker"]
    return service


def _command_words(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _config_option(words: list[str]) -> PurePosixPath:
    for i, word in enumerate(words):
        if word == "--config" and i + 1 < len(words):
            return PurePosixPath(words[i + 1])
        if word.startswith("--config="):
            return PurePosixPath(word.partition("=")[2])
    raise AssertionError(f"no --config in {words}")


def _typer_subcommands() -> set[str]:
    """Top-level subcommands of the Typer app ``service.cli.app`` (registered by ``service.cli``)."""
    cli = importlib.import_module("service.cli")
    app = cli.app
    assert isinstance(app, typer.Typer), "service.cli.app must be the Typer app"
    # Duck-typed: recent typer versions vendor click, so the group is not a `click.Group`.
    commands = getattr(typer.main.get_command(app), "commands", None)
    return set(commands) if isinstance(commands, dict) else set()


# -- compose ------------------------------------------------------------------------------------
def test_compose_has_a_healthchecked_redis_and_a_worker() -> None:
    services = load_compose()["services"]

    assert {"redis", "worker"} <= set(services)
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:")
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert "ping" in redis["healthcheck"]["test"]


def test_worker_waits_for_a_healthy_redis() -> None:
    depends_on = _worker()["depends_on"]

    assert "redis" in depends_on
    assert depends_on["redis"]["condition"] == "service_healthy"


def test_worker_points_at_the_redis_service_with_known_settings() -> None:
    environment = _worker()["environment"]
    env = environment if isinstance(environment, dict) else dict(e.split("=", 1) for e in environment)

    assert env["ACTIONQ_REDIS_URL"].startswith("redis://redis:")
    unknown = [name for name in env if name.startswith("ACTIONQ_") and name[8:].lower() not in Settings.model_fields]
    assert not unknown, f"compose sets unknown settings (the worker would refuse to start): {unknown}"


def test_worker_can_be_scaled() -> None:
    worker = _worker()

    # A fixed container name or a published host port makes `--scale worker=N` fail.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["deploy"]["replicas"] >= 1
    build = worker["build"]
    assert (build if isinstance(build, str) else build["context"]) == "."


def test_worker_health_is_checked_with_the_health_command() -> None:
    test = _worker()["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    words = shlex.split(test[1].replace("$$", "$"))
    assert [w for w in words[1:] if w in _typer_subcommands()] == ["health"], words
    assert words[words.index("--host") + 1] == "$(hostname)"  # this container's worker, not any


def test_worker_command_is_a_real_cli_subcommand() -> None:
    words = _command_words(_worker()["command"])
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]

    assert words[0] in scripts, f"{words[0]!r} is not a console script in pyproject.toml"
    module_name, _, attr = scripts[words[0]].partition(":")
    assert callable(getattr(importlib.import_module(module_name), attr))
    # The shared options come before the command: `actionq --config F worker`.
    commands = [w for w in words[1:] if w in _typer_subcommands()]
    assert commands == ["worker"], words
    assert words[words.index("worker") - 2] == "--config"


def _gateway() -> dict[str, Any]:
    service: dict[str, Any] = load_compose()["services"]["gateway"]
    return service


def test_the_gateway_runs_the_gateway_command_and_publishes_its_port() -> None:
    gateway = _gateway()
    words = _command_words(gateway["command"])

    assert [w for w in words[1:] if w in _typer_subcommands()] == ["gateway"], words
    port = words[words.index("--port") + 1]
    assert f"{port}:{port}" in gateway["ports"]
    assert f"127.0.0.1:{port}/healthz" in " ".join(gateway["healthcheck"]["test"])
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert gateway["image"] == _worker()["image"]  # one image: workers and gateway


def test_the_gateway_settings_parse_and_give_it_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    env: dict[str, str] = _gateway()["environment"]
    # Compose substitutes ${ACTIONQ_GATEWAY_TOKEN:?...}; without one it refuses to start (so would the gateway).
    token = "t" * 16
    for name, value in env.items():
        monkeypatch.setenv(name, re.sub(r"\$\{ACTIONQ_GATEWAY_TOKEN:\?[^}]*\}", token, value))
    settings = Settings()
    assert settings.redis_url == "redis://redis:6379/0"
    assert [(t.name, t.token.get_secret_value(), t.scopes) for t in settings.gateway.tokens] == [
        ("compose", token, ["admin"])
    ]


# -- Dockerfile ---------------------------------------------------------------------------------
def test_dockerfile_cmd_is_the_compose_command() -> None:
    dockerfile = parse_dockerfile()

    assert dockerfile.base.startswith("python:3.11")
    assert dockerfile.cmd == _command_words(_worker()["command"])
    assert dockerfile.cmd[0] == "actionq"


@pytest.mark.parametrize("where", ["compose", "dockerfile"])
def test_the_config_file_and_its_plugins_are_in_the_image(where: str) -> None:
    dockerfile = parse_dockerfile()
    words = _command_words(_worker()["command"]) if where == "compose" else dockerfile.cmd
    config_in_image = _config_option(words)

    config_source = dockerfile.source_of(config_in_image)

    assert config_source is not None, f"the Dockerfile copies nothing to {config_in_image}"
    config = yaml.safe_load(config_source.read_text()) or {}
    for plugin in config.get("plugins", []):
        path = plugin.get("path", f"{config.get('plugin_dir', 'plugins')}/{plugin['name']}")
        in_image = PurePosixPath(os.path.normpath(config_in_image.parent / path))
        source = dockerfile.source_of(in_image)
        assert source is not None, f"plugin {plugin['name']} ({in_image}) is not in the image"
        assert source.is_dir(), f"plugin {plugin['name']}: {source} is not a folder"


def test_the_package_is_installed_in_the_image() -> None:
    dockerfile = parse_dockerfile()
    text = DOCKERFILE_PATH.read_text()

    found = re.search(r"^RUN\s+pip install\b.*\s\.(\[(?P<extras>[\w,]+)\])?(\s|$)", text, re.MULTILINE)
    assert found, "the image must `pip install .` (with extras or without)"
    assert "gateway" in (found.group("extras") or "").split(","), "the image runs the gateway too: .[gateway]"
    for needed in ("pyproject.toml", "README.md", "service/__init__.py"):
        assert dockerfile.source_of(PurePosixPath("/app") / needed) is not None, f"{needed} not copied"


# -- the two commands -----------------------------------------------------------------------------
def test_ci_runs_make_check() -> None:
    script = REPO_ROOT / ".ci" / "run"
    lines = [line.strip() for line in script.read_text().splitlines() if not line.strip().startswith("#")]

    assert os.access(script, os.X_OK), ".ci/run must be executable"
    assert lines[0].startswith("#!") or script.read_text().startswith("#!")
    assert "set -euo pipefail" in lines
    assert any(re.fullmatch(r"(exec\s+)?make\s+check", line) for line in lines)


def test_makefile_has_run_and_check() -> None:
    targets = set(re.findall(r"^([a-z-]+):", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE))

    assert {"run", "check", "lint", "types", "test"} <= targets


def _readme_setup_commands(text: str) -> list[str]:
    """The commands of the README's first shell code block that runs ``make``."""
    for lang, body in re.findall(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        if lang not in {"", "bash", "sh", "shell", "console", "zsh"}:
            continue
        commands = [re.sub(r"\s+#.*$", "", line.strip().removeprefix("$ ")) for line in body.splitlines()]
        commands = [c for c in commands if c and not c.startswith("#")]
        if any(c.startswith("make ") for c in commands):
            return commands
    return []


def test_readme_second_setup_command_is_make_check() -> None:
    commands = _readme_setup_commands((REPO_ROOT / "README.md").read_text())

    assert len(commands) == 2, f"the README must start with exactly two set-up commands: {commands}"
    assert commands == ["make run", "make check"]
