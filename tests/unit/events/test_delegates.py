"""DelegateManager: thread safety, isolation, never blocking the caller, filters, controls, bounds.

No timing assertions: "the caller did not wait" is shown by the caller returning while the
delegate is still held on an event that only the test releases.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from service.events.delegates import DelegateManager, any_true
from service.events.models import DelegateExecutionErrorEvent, Event, EventKind, JobStartedEvent, JobSucceededEvent

pytestmark = pytest.mark.timeout(30)


def job(i: int, worker: str = "w1", plugin: str = "p") -> JobSucceededEvent:
    return JobSucceededEvent(worker_id=worker, job_id=f"j{i}", plugin=plugin, action="a", attempt=1, duration_ms=i)


class Recorder:
    """A sync notification delegate that records what it got, from whichever thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str, Event]] = []
        self.lock = threading.Lock()

    def __call__(self, sender: Any, event_type: str, **kwargs: Any) -> None:
        assert set(kwargs) == {"event"}
        with self.lock:
            self.calls.append((sender, event_type, kwargs["event"]))

    @property
    def events(self) -> list[Event]:
        with self.lock:
            return [event for _, _, event in self.calls]


async def test_sync_and_async_delegates_get_the_seed_shape() -> None:
    manager = DelegateManager()
    sync_rec = Recorder()
    got: list[tuple[Any, str, Event]] = []

    async def async_rec(sender: Any, event_type: str, **kwargs: Any) -> None:
        got.append((sender, event_type, kwargs["event"]))

    manager.register("job_succeeded", sync_rec)
    manager.register(EventKind.JOB_SUCCEEDED, async_rec)
    sender, event = object(), job(1)
    manager.invoke_notification(event, sender=sender)
    await manager.aclose()
    assert sync_rec.calls == [(sender, "job_succeeded", event)]
    assert got == sync_rec.calls


async def test_invoke_returns_before_a_slow_delegate_finishes() -> None:
    manager = DelegateManager()
    release_async, release_sync = asyncio.Event(), threading.Event()
    started, finished = asyncio.Event(), asyncio.Event()
    sync_finished = threading.Event()

    async def slow_async(sender: Any, event_type: str, **kwargs: Any) -> None:
        started.set()
        await release_async.wait()
        finished.set()

    def slow_sync(sender: Any, event_type: str, **kwargs: Any) -> None:
        release_sync.wait(20)
        sync_finished.set()

    manager.register("*", slow_async)
    manager.register("*", slow_sync)
    manager.invoke_notification(job(1))  # returns although both delegates are held
    assert not finished.is_set()
    assert not sync_finished.is_set()
    await started.wait()
    manager.invoke_notification(job(2))  # still returns at once while a delegate is mid-call
    release_async.set()
    release_sync.set()
    await manager.aclose()
    assert finished.is_set()
    assert sync_finished.is_set()


async def test_a_slow_delegate_does_not_delay_the_others() -> None:
    manager = DelegateManager()
    release = asyncio.Event()
    fast = Recorder()

    async def stuck(sender: Any, event_type: str, **kwargs: Any) -> None:
        await release.wait()

    manager.register("*", stuck)
    manager.register("*", fast)
    for i in range(5):
        manager.invoke_notification(job(i))
    while len(fast.events) < 5:  # the fast delegate gets all five while `stuck` holds the first
        await asyncio.sleep(0.01)
    assert [e.job_id for e in fast.events] == [f"j{i}" for i in range(5)]  # type: ignore[union-attr]
    release.set()
    await manager.aclose()


async def test_a_raising_delegate_is_reported_and_isolated() -> None:
    manager = DelegateManager()
    good, errors = Recorder(), Recorder()

    def broken(sender: Any, event_type: str, **kwargs: Any) -> None:
        raise RuntimeError("delegate bug")

    async def broken_async(sender: Any, event_type: str, **kwargs: Any) -> None:
        raise ValueError("async bug")

    manager.register("job_succeeded", broken)
    manager.register("job_succeeded", broken_async)
    manager.register("job_succeeded", good)
    manager.register("delegate_execution_error", errors)
    manager.invoke_notification(job(1))
    manager.invoke_notification(job(2))
    await manager.aclose()
    assert len(good.events) == 2
    reports = [e for e in errors.events if isinstance(e, DelegateExecutionErrorEvent)]
    assert len(reports) == 4
    assert {(r.delegate.rsplit(".", 1)[-1], r.error.type, r.error.message) for r in reports} == {
        ("broken", "RuntimeError", "delegate bug"),
        ("broken_async", "ValueError", "async bug"),
    }
    assert all(r.event_kind == "job_succeeded" and r.worker_id == "w1" for r in reports)
    assert all(r.delegate.startswith(f"{__name__}.") for r in reports)


async def test_a_failing_error_handler_does_not_recurse() -> None:
    manager = DelegateManager()
    calls: list[str] = []
    watcher = Recorder()

    def always_fails(sender: Any, event_type: str, **kwargs: Any) -> None:
        calls.append(event_type)
        raise RuntimeError("fails on everything")

    manager.register("*", always_fails)
    manager.register("delegate_execution_error", watcher)
    manager.invoke_notification(job(1))
    await manager.aclose()
    # job_succeeded fails -> one report; the report fails too -> only logged.
    assert calls == ["job_succeeded", "delegate_execution_error"]
    assert len(watcher.events) == 1


async def test_a_delegate_past_its_timeout_is_reported_as_timeout() -> None:
    manager = DelegateManager(delegate_timeout_s=0.05)
    never = asyncio.Event()
    errors = Recorder()
    after = Recorder()

    async def hangs(sender: Any, event_type: str, **kwargs: Any) -> None:
        await never.wait()

    manager.register("job_succeeded", hangs)
    manager.register("job_succeeded", after)
    manager.register("delegate_execution_error", errors)
    manager.invoke_notification(job(1))
    manager.invoke_notification(job(2))
    while len(errors.events) < 2:  # the lane moved on to the second event after the first timed out
        await asyncio.sleep(0.01)
    await manager.aclose()
    assert [e.error.type for e in errors.events] == ["TimeoutError", "TimeoutError"]  # type: ignore[union-attr]
    assert len(after.events) == 2


async def test_filters_by_kinds_and_predicate() -> None:
    manager = DelegateManager()
    several, only_p2, everything = Recorder(), Recorder(), Recorder()
    manager.register(None, several, kinds=["job_started", EventKind.JOB_SUCCEEDED])
    manager.register("job_succeeded", only_p2, predicate=lambda e: getattr(e, "plugin", None) == "p2")
    manager.register("*", everything)
    started = JobStartedEvent(worker_id="w", job_id="s", plugin="p", action="a", attempt=1, queue="q")
    for event in (started, job(1, plugin="p1"), job(2, plugin="p2")):
        manager.invoke_notification(event)
    manager.invoke_notification(
        DelegateExecutionErrorEvent(worker_id="w", event_kind="x", delegate="d", error={"type": "E", "message": "m"})
    )
    await manager.aclose()
    assert [e.kind for e in several.events] == ["job_started", "job_succeeded", "job_succeeded"]
    assert [e.job_id for e in only_p2.events] == ["j2"]  # type: ignore[union-attr]
    assert len(everything.events) == 4


def test_unknown_kinds_are_rejected() -> None:
    manager = DelegateManager()
    with pytest.raises(ValueError, match="job_failled"):
        manager.register("job_failled", Recorder())
    with pytest.raises(ValueError, match="at least one"):
        manager.register(None, Recorder())


async def test_unregister_by_registration_and_seed_form() -> None:
    manager = DelegateManager()
    rec = Recorder()
    reg = manager.register("*", rec)
    assert manager.unregister("job_started", rec)  # narrows "*" to every kind but job_started
    assert reg.kinds is not None
    assert "job_started" not in reg.kinds
    assert "job_succeeded" in reg.kinds
    assert not manager.unregister("job_started", rec)  # nothing left to remove
    started = JobStartedEvent(worker_id="w", job_id="s", plugin="p", action="a", attempt=1, queue="q")
    manager.invoke_notification(started)
    manager.invoke_notification(job(1))
    await asyncio.sleep(0)
    assert manager.unregister(reg)
    assert not manager.unregister(reg)
    manager.invoke_notification(job(2))  # after unregister: not delivered
    await manager.aclose()
    assert [e.kind for e in rec.events] == ["job_succeeded"]
    assert manager.registrations() == ()
    other = DelegateManager()
    other.register(None, rec, kinds=["job_started", "job_succeeded"])
    assert other.unregister("*", rec)
    assert other.registrations() == ()


async def test_threads_register_unregister_and_invoke_concurrently() -> None:
    manager = DelegateManager()
    everything = Recorder()
    manager.register("*", everything)
    threads, per_thread = 8, 50
    recorders = [Recorder() for _ in range(threads)]
    late: list[Recorder] = [Recorder() for _ in range(threads)]

    def work(t: int) -> None:
        mine = f"w{t}"
        reg = manager.register("job_succeeded", recorders[t], predicate=lambda e: e.worker_id == mine)
        for i in range(per_thread):
            manager.invoke_notification(job(i, worker=mine))
            if i % 10 == 0:  # churn: registrations that come and go while others invoke
                manager.unregister(manager.register("*", late[t]))
        assert manager.unregister(reg)
        manager.invoke_notification(job(per_thread, worker=mine))  # after unregister: not for recorders[t]

    await asyncio.gather(*(asyncio.to_thread(work, t) for t in range(threads)))
    await manager.aclose()
    for t, rec in enumerate(recorders):
        assert [e.job_id for e in rec.events] == [f"j{i}" for i in range(per_thread)], t  # type: ignore[union-attr]
    assert len(everything.events) == threads * (per_thread + 1)
    assert manager.registrations()[0].delegate is everything
    assert len(manager.registrations()) == 1  # every churned registration is gone, none lost
    assert manager.dropped == 0


async def test_a_delegate_that_cannot_keep_up_loses_its_oldest_events() -> None:
    manager = DelegateManager(max_pending=3)
    first_started, release = asyncio.Event(), asyncio.Event()
    seen: list[str] = []

    async def slow(sender: Any, event_type: str, **kwargs: Any) -> None:
        seen.append(kwargs["event"].job_id)
        first_started.set()
        await release.wait()

    manager.register("*", slow)
    manager.invoke_notification(job(0))
    await first_started.wait()  # j0 is being handled; the next ones queue behind it
    for i in range(1, 10):
        manager.invoke_notification(job(i))
    assert manager.dropped == 6
    release.set()
    await manager.aclose()
    assert seen == ["j0", "j7", "j8", "j9"]


async def test_aclose_gives_up_after_its_deadline() -> None:
    manager = DelegateManager()
    never = asyncio.Event()

    async def hangs(sender: Any, event_type: str, **kwargs: Any) -> None:
        await never.wait()

    manager.register("*", hangs)
    manager.invoke_notification(job(1))
    await manager.aclose(timeout_s=0.05)
    manager.invoke_notification(job(2))  # closed: dropped, not raised
    assert manager.dropped == 1


def test_without_an_event_loop_notifications_are_dropped_not_raised() -> None:
    manager = DelegateManager()
    manager.register("*", Recorder())
    manager.invoke_notification(job(1))
    assert manager.dropped == 1
    manager.close()


async def test_close_from_another_thread() -> None:
    manager = DelegateManager()
    rec = Recorder()
    manager.register("*", rec)
    manager.invoke_notification(job(1))
    await asyncio.to_thread(manager.close)
    assert len(rec.events) == 1
    with pytest.raises(RuntimeError, match="aclose"):
        DelegateManager().close()


async def test_controls_collect_responses_and_exclude_failures() -> None:
    manager = DelegateManager(worker_id="w9")
    errors = Recorder()
    manager.register("delegate_execution_error", errors)
    seen_kwargs: list[dict[str, Any]] = []

    def says_no(sender: Any, control_type: str, **kwargs: Any) -> bool:
        seen_kwargs.append(kwargs)
        return False

    async def says_yes(sender: Any, control_type: str, **kwargs: Any) -> bool:
        return control_type == "pause"

    def broken(sender: Any, control_type: str, **kwargs: Any) -> bool:
        raise RuntimeError("control bug")

    assert await manager.invoke_control("pause") == []
    manager.register_control("pause", says_no)
    manager.register_control("pause", broken)
    manager.register_control("pause", says_yes)
    responses = await manager.invoke_control("pause", sender="worker", job_id="j1")
    assert responses == [False, True]
    assert any_true(responses)
    assert seen_kwargs == [{"job_id": "j1"}]
    assert manager.unregister_control("pause", says_yes)
    assert not manager.unregister_control("pause", says_yes)
    assert not any_true(await manager.invoke_control("pause"))
    await manager.aclose()
    assert [(e.event_kind, e.delegate_type, e.worker_id) for e in errors.events] == [  # type: ignore[union-attr]
        ("pause", "control", "w9"),
        ("pause", "control", "w9"),
    ]


def test_any_true_needs_exactly_true() -> None:
    assert not any_true([])
    assert not any_true([False, None, 1, "yes"])
    assert any_true([False, True])
