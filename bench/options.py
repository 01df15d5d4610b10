"""The options every entry gets from the command line."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RunOptions"]


@dataclass(frozen=True)
class RunOptions:
    """``--quick`` (fewer samples and runs), ``--runs``/``--reps N``, and ``compare``'s ``--jobs`` and ``--only``."""

    quick: bool = False
    runs: int | None = None
    jobs: int | None = None
    """Jobs per drain (``compare``; None: the entry's default)."""
    only: tuple[str, ...] = ()
    """Contender labels to run (``compare``; actionq always runs; empty: every installed one)."""

    def pick(self, full: int, quick: int) -> int:
        """The full-run or quick-run value of a size."""
        return quick if self.quick else full

    def run_count(self, full: int, quick: int) -> int:
        """How many repeated runs: ``--runs`` if given, else the full or quick default."""
        return self.runs if self.runs is not None else self.pick(full, quick)
