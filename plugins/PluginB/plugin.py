"""The seed's PluginB: squares a number."""

from __future__ import annotations

from typing import Any

from service.plugins.plugin import Plugin


class PluginB(Plugin):
    """Squares numbers."""

    def on_load(self, *args: Any, **kwargs: Any) -> None:
        """Seed plugins name themselves here; the manifest's name stays authoritative."""
        self.plugin_name = "PluginB"

    async def on_enable(self) -> None:
        """Log that the plugin is ready."""
        self._logger.info("plugin_b_enabled")

    async def on_disable(self) -> None:
        """Log that the plugin stops."""
        self._logger.info("plugin_b_disabled")

    async def calculate_square(self, x: float) -> float:
        """``x * x`` (36 for 6, not 36.0)."""
        return x * x
