"""Remote control of worker pools: pause, resume, drain, stop, and plugin load/disable/reload.

A command has an id and a target (every worker, the workers on one host, or one worker). It is
published on ``<ns>:ch:control``; every worker it targets asks its control delegates (any of which
may veto it or answer), acts, and acknowledges: the ack is appended to ``<ns>:control:<id>`` (kept
a few minutes) and published on ``<ns>:ch:control-acks``. The sender subscribes before it sends,
expects an answer from every live worker the target names, and reports who acted (with the
result), who refused, and who did not answer within the timeout — a dead worker, for instance.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from service.keys import Keys
from service.models import now_ms
from service.redis.cluster import publish
from service.redis.connection import broker_errors
from service.redis.pubsub import PubSubMultiplexer
from service.signing import MAX_AGE_S, Signer

__all__ = ["ACK_TTL_S", "COMMANDS", "Command", "ControlAck", "ControlCommand", "ControlReport", "send_control"]

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
    sig: str = Field(default="", description="The command's signature (service.signing), '' when unsigned.")

    def signed(self, signer: Signer) -> ControlCommand:
        """This command with its signature (unchanged without keys)."""
        return self.model_copy(update={"sig": signer.sign("control", self._body())}) if signer.enabled else self

    def verified(self, signer: Signer) -> str:
        """'' if ``signer`` accepts this command; else why not (unsigned, tampered with, too old)."""
        if not signer.enabled:
            return ""
        if not signer.verify(self.sig, "control", self._body()):
            return "the command is not signed with an accepted key (signing_keys)"
        if abs(now_ms() - self.sent_at_ms) > MAX_AGE_S * 1000:
            return f"the command was signed more than {MAX_AGE_S:g}s ago (a replay?)"
        return ""

    def _body(self) -> str:
        return self.model_dump_json(exclude={"sig"})

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
    redis: Redis,
    keys: Keys,
    pubsub: PubSubMultiplexer,
    cmd: ControlCommand,
    *,
    live: Iterable[tuple[str, str]],
    timeout: float = 3.0,
) -> ControlReport:
    """Send ``cmd`` and wait up to ``timeout`` s for every targeted live worker to acknowledge.

    ``live`` lists the live workers as ``(worker id, hostname)`` (from the registry); those the
    command targets are expected to answer, and a worker named by ``cmd.worker`` is expected
    even when it is not live (a dead one is reported as not answering).
    """
    expected = {worker_id for worker_id, hostname in live if cmd.targets(worker_id, hostname)}
    if cmd.worker is not None:
        expected.add(cmd.worker)
    acks: dict[str, ControlAck] = {}
    async with pubsub.subscribe(keys.control_acks_channel()) as sub:
        with broker_errors(f"sending the {cmd.command} command"):
            await publish(redis, keys.control_channel(), cmd.model_dump_json())
        deadline = time.monotonic() + timeout
        while not expected <= set(acks) and (left := deadline - time.monotonic()) > 0:
            message = await sub.get(left)
            if message is None:
                break
            with contextlib.suppress(ValueError):
                ack = ControlAck.model_validate_json(message)
                if ack.command_id == cmd.id:
                    acks[ack.worker_id] = ack
    for ack in await _recorded_acks(redis, keys, cmd.id):  # the durable copy: nothing missed
        acks.setdefault(ack.worker_id, ack)
    ordered = sorted(acks.values(), key=lambda a: a.worker_id)
    return ControlReport(command=cmd, acks=ordered, missing=sorted(expected - set(acks)))


async def _recorded_acks(redis: Redis, keys: Keys, command_id: str) -> list[ControlAck]:
    with broker_errors("reading acknowledgements"):
        raws = await redis.lrange(keys.control_acks(command_id), 0, -1)  # type: ignore[misc]
    return [ControlAck.model_validate_json(raw) for raw in raws]
