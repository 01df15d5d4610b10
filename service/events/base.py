"""The fields every event has: :class:`BaseEvent`, the base of the built-in and the plugin-defined events."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.models import now_ms

__all__ = ["BaseEvent"]


class BaseEvent(BaseModel):
    """Fields every event has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(description="The event kind (the discriminator).")
    worker_id: str = Field(description="Id of the worker that emitted it (as in `actionq workers`).")
    ts_ms: int = Field(default_factory=now_ms, description="When it happened, epoch milliseconds.")
