"""A started process's heap: frozen, and its youngest generation collected less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service.processes.heap import YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def gc_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("gc_restored")
def test_settle_heap_freezes_what_exists_and_raises_only_the_young_threshold() -> None:
    gc.set_threshold(700, 11, 12)
    gc.unfreeze()
    settle_heap()
    assert gc.get_freeze_count() > 0  # this process's modules and objects, out of the collector's sight
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 11, 12)
