"""Cancel pushes apply to the generation of the job they name, never to a later job reusing its id."""

from __future__ import annotations

from service.worker.cancels import Cancels


async def test_a_push_for_a_job_not_started_yet_is_applied_when_it_starts() -> None:
    cancels = Cancels()
    assert not cancels.cancel("j", "stop", generation=100)
    assert cancels.token("j", 100).reason == "stop"


async def test_a_remembered_push_does_not_cancel_a_later_job_with_the_same_id() -> None:
    cancels = Cancels()
    cancels.cancel("j", "stop the old one", generation=100)
    assert not cancels.token("j", 200).is_cancelled  # submitted again later: another generation
    cancels.forget("j")


async def test_a_push_for_another_generation_leaves_the_running_job_alone() -> None:
    cancels = Cancels()
    running = cancels.token("j", 200)
    assert not cancels.cancel("j", "meant for the old one", generation=100)
    assert not running.is_cancelled
    assert cancels.cancel("j", "this one", generation=200)
    assert running.reason == "this one"


async def test_the_durable_flag_wins() -> None:
    cancels = Cancels()
    assert cancels.token("j", 1, durable_reason="flagged before the take").reason == "flagged before the take"
