"""The browser tests skip without chromium only outside CI; in CI they fail (a skipped suite proves nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import conftest


def test_without_chromium_the_tests_skip_outside_ci_and_fail_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.delenv("CI", raising=False)
    # "<chromium> missing", or "<chromium> and <chromedriver> missing" on a machine without the driver
    with pytest.raises(pytest.skip.Exception, match=r"/nonexistent/chromium (and .* )?missing: apt-get install"):
        conftest._needs_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must run in CI"):
        conftest._needs_chromium()
