"""A plugin that calls sys.exit() or raises KeyboardInterrupt while loading is skipped, never fatal."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import PluginLoadError
from service.plugins.loader import PluginLoader

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "plugins"
PLUGINS = Path(__file__).resolve().parents[3] / "plugins"


@pytest.mark.parametrize(
    ("name", "raised"), [("exits_on_import", "SystemExit"), ("interrupts_on_import", "KeyboardInterrupt")]
)
async def test_it_is_that_plugins_failure(name: str, raised: str) -> None:
    loader = PluginLoader(enable_timeout_s=5)
    with pytest.raises(PluginLoadError, match=raised):
        await loader.load(name, FIXTURES / name)
    await loader.load_all([(name, FIXTURES / name), ("PluginB", PLUGINS / "PluginB")])
    assert set(loader.loaded) == {"PluginB"}
    assert raised in loader.failures[name].reason
    await loader.unload_all()
