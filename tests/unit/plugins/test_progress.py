"""What an action reports: ProgressUpdate validation at the call, a context without a reporter (no Redis)."""

from __future__ import annotations

import pytest

from service.errors import InvalidProgressError
from service.plugins.context import JobContext
from service.plugins.progress import make_update


def test_steps_give_a_percentage_and_indeterminate_progress_has_none() -> None:
    assert make_update(3, 12).percentage == 25.0
    assert make_update(3, None, "working").indeterminate
    assert make_update(percentage=40, message="m", details={"k": [1]}).percentage == 40


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"current_step": 5, "total_steps": 3}, "past total_steps"),
        ({"percentage": 101}, "percentage: must be a number from 0 to 100"),
        ({"percentage": -1}, "percentage"),
        ({"current_step": -1}, "current_step"),
        ({"total_steps": 0}, "total_steps"),
        ({"status": "exploded"}, "status"),
        ({"details": {"x": {1, 2}}}, "details must be JSON"),
    ],
)
def test_bad_updates_fail_at_the_call_with_the_reason(kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidProgressError, match=reason):
        make_update(**kwargs)  # type: ignore[arg-type]


def test_context_without_a_reporter_validates_and_drops() -> None:
    ctx = JobContext.create(job_id="j", plugin="p", action="a", attempt=1, worker_id="w")
    ctx.progress(1, 2)
    with pytest.raises(InvalidProgressError):
        ctx.progress(3, 2)
    with pytest.raises(InvalidProgressError, match="weight"):
        ctx.subtask("x", weight=0)
