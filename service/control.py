"""Remote control of worker pools: pause, resume, drain, stop, and plugin load/disable/reload.

A command has an id and a target (every worker, the workers on one host, or one worker). It is
published on ``<ns>:ch:control``; every worker it targets asks its control delegates (any of which
may veto it or answer), acts, and acknowledges: the ack is appended to ``<ns>:control:<id>`` (kept
a few minutes) and published on ``<ns>:ch:control-acks``. The sender subscribes before it sends,
expects an answer from every live worker the target names, and reports who acted (with the
result), who refused, and who did not answer within the timeout — a dead worker, for instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.broker import broker_errors
from service.models import now_ms

if TYPE_CHECKING:
    from service.client import JobClient

__all__ = ["COMMANDS", "ControlAck", "ControlCommand", "ControlReport", "send_control"]

Command = Literal["pause", "resume", "drain", "stop", "load_plugin", "disable_plugin", "reload_plugin"]
COMMANDS: tuple[str, ...] = ("pause", "resume", "drain", "stop", "load_plugin", "disable_plugin", "reload_plugin")
# How long the acknowledgements of a command are kept for later inspection.
ACK_TTL_S = 300


class ControlCommand(BaseModel):
    """A command to workers; ``worker`` / ``host`` narrow the target (neither: every worker)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    command: Command
    args: dict[str, Any] = Field(default_factory=dict)
    worker: str | None = None
    host: str | None = None
    sent_at_ms: int = Field(default_factory=now_ms)

    def targets(self, worker_id: str, hostname: str) -> bool:
        """Whether the worker ``worker_id`` on ``hostname`` should act on this command."""
        return (self.worker is None or self.worker == worker_id) and (self.host is None or self.host == hostname)


class ControlAck(BaseModel):
    """One worker's answer to a command."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command_id: str
    worker_id: str
    hostname: str
    ok: bool
    result: Any = None
    error: str | None = None
    at_ms: int = Field(default_factory=now_ms)


class ControlReport(BaseModel):
    """What came of a command: the acks, and the targeted live workers that did not answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: ControlCommand
    acks: list[ControlAck]
    missing: list[str] = Field(description="Worker ids expected to answer that did not, within the timeout.")

    @property
    def acted(self) -> list[str]:
        """Workers that carried the command out."""
        return [a.worker_id for a in self.acks if a.ok]

    @property
    def refused(self) -> list[str]:
        """Workers that answered but did not carry it out (vetoed, or it failed there)."""
        return [a.worker_id for a in self.acks if not a.ok]


async def send_control(
    client: JobClient,
    command: Command,
    *,
    worker: str | None = None,
    host: str | None = None,
    args: dict[str, Any] | None = None,
    timeout: float = 3.0,
) -> ControlReport:
    """Send ``command`` and wait up to ``timeout`` s for every targeted live worker to acknowledge."""
    cmd = ControlCommand(command=command, worker=worker, host=host, args=args or {})
    expected = {w.worker_id for w in await client.workers() if cmd.targets(w.worker_id, w.hostname)}
    if worker is not None:
        expected.add(worker)  # named explicitly: a dead one is reported as not answering
    keys = client.keys
    acks: dict[str, ControlAck] = {}
    async with client.pubsub.subscribe(keys.control_acks_channel()) as sub:
        with broker_errors(f"sending the {command} command"):
            await client.redis.publish(keys.control_channel(), cmd.model_dump_json())
        deadline = time.monotonic() + timeout
        while not expected <= set(acks) and (left := deadline - time.monotonic()) > 0:
            message = await sub.get(left)
            if message is None:
                break
            with contextlib.suppress(ValueError):
                ack = ControlAck.model_validate_json(message)
                if ack.command_id == cmd.id:
                    acks[ack.worker_id] = ack
    for ack in await _recorded_acks(client, cmd.id):  # the durable copy: nothing missed
        acks.setdefault(ack.worker_id, ack)
    ordered = sorted(acks.values(), key=lambda a: a.worker_id)
    return ControlReport(command=cmd, acks=ordered, missing=sorted(expected - set(acks)))


async def _recorded_acks(client: JobClient, command_id: str) -> list[ControlAck]:
    with broker_errors("reading acknowledgements"):
        raws = await client.redis.lrange(client.keys.control_acks(command_id), 0, -1)  # type: ignore[misc]
    return [ControlAck.model_validate_json(raw) for raw in raws]


async def record_ack(redis: Any, keys: Any, ack: ControlAck) -> None:
    """Keep ``ack`` (a few minutes) and publish it to whoever is waiting (worker side)."""
    body = ack.model_dump_json()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.rpush(keys.control_acks(ack.command_id), body)
        pipe.expire(keys.control_acks(ack.command_id), ACK_TTL_S)
        pipe.publish(keys.control_acks_channel(), body)
        await pipe.execute()


async def wait_idle(tasks: dict[str, asyncio.Task[Any]]) -> None:
    """Wait until none of ``tasks`` (the worker's running jobs) is left (for a drain)."""
    while any(not t.done() for t in tasks.values()):
        await asyncio.wait([t for t in tasks.values() if not t.done()])
