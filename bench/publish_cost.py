"""``python -m bench.publish_cost [--jobs N] [--rounds R]``: Redis commands per job with and without
``publish_job_channels`` (docs/progress-and-streams.md quotes its figures).

A private redis-server, one worker with the bundled plugins, and a producer that submits ``N`` jobs
one after the other and nobody follows (no ``result()``, no ``progress()``: a follower marks a job
followed, which publishes it whatever the setting). The traffic is the difference of two
``INFO commandstats`` snapshots around each batch, which counts the commands the scripts run too
(``EVALSHA`` once, each ``HSET``, ``PUBLISH`` ... inside it once more), less the batch's own probe
(one ``ZCARD`` per look at the queue: a job has settled once it left its queue; the subscription and
the marker below). A pattern subscriber to every job channel counts the messages they carry, which
the other ``PUBLISH``es (hand-offs and wake-ups to workers, the events bridge) are not. Two jobs: one
without progress (``PluginB.calculate_square``), one reporting three steps
(``long_running.count_slowly``, steps 60 ms apart, above the coalescing interval, so each is
written). The two settings alternate, ``R`` rounds each; the figures are the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections import Counter
from typing import Any

from bench.harness import REPO_ROOT, BenchEnv
from bench.redisstats import command_calls, commands_delta
from service.client.client import JobClient

__all__ = ["measure", "run"]

JOBS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "no progress": ("PluginB", "calculate_square", {"x": 3}),
    "3 progress updates": ("long_running", "count_slowly", {"steps": 3, "delay_s": 0.06}),
}
_PLUGINS = [{"name": name, "path": str(REPO_ROOT / "plugins" / name)} for name in ("PluginB", "long_running")]


async def measure(env: BenchEnv, job: str, jobs: int, *, publish: bool) -> Counter[str]:
    """Commands per batch of ``jobs`` jobs of kind ``job``, submitted with the setting ``publish``, and
    (as ``job channel messages``) the messages a pattern subscriber to every job channel heard."""
    plugin, action, params = JOBS[job]
    settings = env.client.settings.model_copy(update={"publish_job_channels": publish})
    client = JobClient(env.client.redis, settings, owns_redis=False)
    queue = client.keys.queue(plugin)
    await client.submit(plugin, action, params)  # warm: the registry read is cached for a second
    await _settled(client, queue, Counter())
    listener = client.redis.pubsub()
    await listener.psubscribe(client.keys.job_channel_prefix() + "*")
    probes: Counter[str] = Counter({"psubscribe": 1})
    before = await command_calls(client.redis)
    for _ in range(jobs):
        await client.submit(plugin, action, params)
    await _settled(client, queue, probes)
    calls = commands_delta(before, await command_calls(client.redis), probes)
    calls["publish"] -= 1  # the marker below
    calls["job channel messages"] = await _heard(client, listener)
    return calls


async def _heard(client: JobClient, listener: Any) -> int:
    """The messages ``listener`` got before a marker published now (after everything the batch sent)."""
    marker = client.keys.job_channel("marker")
    await client.redis.publish(marker, b"marker")
    heard = 0
    try:
        while True:
            message = await listener.get_message(ignore_subscribe_messages=True, timeout=5)
            if message is not None and message["channel"] == marker.encode():
                return heard
            heard += message is not None
    finally:
        await listener.aclose()


async def _settled(client: JobClient, queue: str, probes: Counter[str]) -> None:
    """Wait until every job of ``queue`` has settled (it left its queue), counting the probes."""
    while True:
        probes["zcard"] += 1
        if await client.redis.zcard(queue) == 0:
            return
        await asyncio.sleep(0.05)


async def run(jobs: int, rounds: int) -> dict[tuple[str, bool], Counter[str]]:
    """Per (job kind, setting): the median commands per job, by command."""
    samples: dict[tuple[str, bool], list[Counter[str]]] = {}
    async with BenchEnv() as env:
        await env.start_worker({"plugins": _PLUGINS})
        for n in range(rounds):
            for job in JOBS:
                for publish in (n % 2 == 0, n % 2 == 1):  # alternate which setting goes first
                    samples.setdefault((job, publish), []).append(await measure(env, job, jobs, publish=publish))
    return {key: _median(counts, jobs) for key, counts in samples.items()}


def _median(counts: list[Counter[str]], jobs: int) -> Counter[str]:
    names = {name for c in counts for name in c}
    return Counter({name: statistics.median(c[name] for c in counts) / jobs for name in names})


def _report(figures: dict[tuple[str, bool], Counter[str]]) -> str:
    lines = [
        "| job | publish_job_channels | commands per job | PUBLISH per job | job channel messages per job |"
        " the commonest commands |",
        "|---|---|---|---|---|---|",
    ]
    for (job, publish), calls in sorted(figures.items()):
        heard = calls.pop("job channel messages", 0)
        top = ", ".join(f"{name} {n:.2f}" for name, n in calls.most_common(6))
        total = sum(calls.values())
        lines.append(f"| {job} | {str(publish).lower()} | {total:.2f} | {calls['publish']:.2f} | {heard:.2f} | {top} |")
    return "\n".join(lines)


def main() -> None:
    """Measure and print the table (Markdown)."""
    parser = argparse.ArgumentParser(prog="python -m bench.publish_cost", description=__doc__)
    parser.add_argument("--jobs", type=int, default=200, help="jobs per batch")
    parser.add_argument("--rounds", type=int, default=3, help="batches per setting and job kind")
    args = parser.parse_args()
    print(_report(asyncio.run(run(args.jobs, args.rounds))))


if __name__ == "__main__":
    main()
