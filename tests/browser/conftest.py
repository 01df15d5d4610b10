"""Fixtures of the dashboard's browser tests: Debian's chromium driven headless through its chromedriver.

The driver's path is passed to Selenium, so Selenium Manager never downloads a browser or a
driver. Without chromium the tests skip with a message, unless ``CI`` is set: there they fail,
since ``.ci/run`` installs it (a browser suite that skips in CI would prove nothing).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from tests.conftest import FAST, REPO_ROOT, WorkerFactory, bundled_plugins_config
from tests.integration.test_gateway import GatewayProc, gateway_process

__all__ = ["CHROMEDRIVER", "CHROMIUM", "SCREENSHOTS", "browser", "dark", "gateway_process", "screenshot", "started"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = REPO_ROOT / "build" / "screenshots"
WIDTH, HEIGHT = 1280, 800  # the size the issue asks the dashboard to be usable at


def _needs_chromium() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return
    message = f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver (as .ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests must run in CI, but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def browser(tmp_path: Path, gateway_process: Callable[..., GatewayProc]) -> Iterator[WebDriver]:
    """A headless chromium at 1280x800 with its own profile (no cookie shared between tests).

    It depends on ``gateway_process`` so that it quits first: a gateway stopped while the browser
    still holds its event streams would wait out its 5 s shutdown grace for them.
    """
    _needs_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={WIDTH},{HEIGHT}", f"--user-data-dir={tmp_path / 'chromium'}",
                 "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, name: str) -> Path:
    """Save the page as ``build/screenshots/<name>.png`` (a test artifact; docs/images holds copies)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    size = driver.get_window_size()
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(size["width"], max(size["height"], min(height, 4000)))  # the whole page, within reason
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(size["width"], size["height"])
    return path


def dark(driver: WebDriver, on: bool = True) -> None:
    """Emulate ``prefers-color-scheme: dark`` (or light again), as a system in dark mode sets it."""
    scheme = "dark" if on else "light"
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]}
    )


def started(
    gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory, env: dict[str, str] | None = None
) -> GatewayProc:
    """A worker with the bundled plugins and a gateway, both in this test's namespace."""
    worker_process(bundled_plugins_config(**FAST))
    return gateway_process(env)
