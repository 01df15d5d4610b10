"""``actionq watch`` / ``submit --follow``: a live progress bar for one job, sub-tasks included."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TaskProgressColumn, TextColumn
from rich.table import Column

from service.client.handle import JobHandle
from service.models import JobRecord, ProgressSnapshot, ProgressUpdate

__all__ = ["show"]

Rows = dict[tuple[str, ...], TaskID]  # one bar per node of the progress tree, by its path


async def show(handle: JobHandle, console: Console) -> JobRecord:
    """Show the job's progress until it ends; return its final record."""
    columns = (
        SpinnerColumn(finished_text="•"),
        # Folded, not ellipsized, on a narrow terminal: the job id in it is whole.
        TextColumn("{task.description}", table_column=Column(overflow="fold")),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=console) as bar:
        rows: Rows = {}
        async for snap in handle.progress():
            _render(bar, rows, snap)
    return await handle.record()


def _render(bar: Progress, rows: Rows, snap: ProgressSnapshot) -> None:
    title = f"job {snap.job_id} ({snap.state.value})"  # whole: the id is what the next command needs
    progress = snap.progress or ProgressUpdate()
    done = snap.state.is_terminal
    _row(bar, rows, (), title, progress, done)
    _children(bar, rows, (), progress, depth=1, done=done)


def _children(
    bar: Progress,
    rows: Rows,
    path: tuple[str, ...],
    node: ProgressUpdate,
    *,
    depth: int,
    done: bool,
) -> None:
    for sub in node.sub_tasks:
        child = (*path, sub.name)
        _row(bar, rows, child, f"{'  ' * depth}└ {sub.name} (weight {sub.weight:g})", sub.progress, done)
        _children(bar, rows, child, sub.progress, depth=depth + 1, done=done)


def _row(
    bar: Progress,
    rows: Rows,
    path: tuple[str, ...],
    title: str,
    progress: ProgressUpdate,
    done: bool,
) -> None:
    note = progress.message
    if progress.current_step is not None:
        of = f"/{progress.total_steps}" if progress.total_steps is not None else ""
        note = f"{progress.current_step}{of} {note}".strip()
    # total=None draws rich's pulsing bar: indeterminate progress (no total, no percentage).
    total: float | None = 100.0 if progress.percentage is not None or done else None
    completed = round(progress.percentage) if progress.percentage is not None else 0
    if path not in rows:
        rows[path] = bar.add_task(title, total=total, completed=completed, note=note)
    bar.update(rows[path], description=title, total=total, completed=completed, note=note)
    if done:
        bar.stop_task(rows[path])
