"""Reading ``text/event-stream`` in tests: the events of a body, or of a live httpx response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Event:
    """One server-sent event (``comment`` for a ``:`` line alone)."""

    event: str | None = None
    id: str | None = None
    data: str | None = None
    comment: str | None = None

    def json(self) -> Any:
        """The event's data, parsed."""
        assert self.data is not None, f"event {self} has no data"
        return json.loads(self.data)


def _event(lines: list[str]) -> Event:
    fields: dict[str, list[str]] = {}
    comments = []
    for line in lines:
        if line.startswith(":"):
            comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value.removeprefix(" "))
    data = "\n".join(fields["data"]) if "data" in fields else None
    return Event(
        event=fields.get("event", [None])[-1],
        id=fields.get("id", [None])[-1],
        data=data,
        comment="\n".join(comments) or None,
    )


def parse(lines: Iterable[str]) -> list[Event]:
    """The events of a stream's lines (an event ends at a blank line)."""
    events: list[Event] = []
    block: list[str] = []
    for line in lines:
        if line == "":
            if block:
                events.append(_event(block))
            block = []
        else:
            block.append(line)
    if block:
        events.append(_event(block))
    return events


def events_of(text: str) -> list[Event]:
    """The events of a whole body."""
    return parse(text.replace("\r\n", "\n").split("\n"))


async def follow(response: httpx.Response) -> AsyncIterator[Event]:
    """The events of a live response, as they arrive."""
    block: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if block:
                yield _event(block)
            block = []
        else:
            block.append(line)
    if block:
        yield _event(block)
