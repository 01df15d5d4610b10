"""The dashboard in a real browser (headless chromium) against the real gateway, redis-server and a worker.

Every wait is an explicit ``WebDriverWait`` for the element or state that shows the behaviour:
the progress bar at 100 % without a reload, output that continues across a reload with every
item once, a cancel, a pause, a field error, a replayed dead letter, and a read-only token that
is shown no action. Each test saves screenshots of the pages it visits (build/screenshots/).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.browser.conftest import dark, screenshot, started
from tests.conftest import FAST, WorkerFactory, bundled_plugins_config
from tests.integration.test_gateway import GatewayProc

pytestmark = [pytest.mark.browser, pytest.mark.integration]

WAIT_S = 30  # a job of a few seconds on a busy 2-core machine, plus chromium's start
READ_TOKEN = "dash-read-0123456789abcdef"
ADMIN_TOKEN = "dash-admin-0123456789abcdef"
TOKENS = json.dumps([
    {"name": "viewer", "token": READ_TOKEN, "scopes": ["read"]},
    {"name": "ops", "token": ADMIN_TOKEN, "scopes": ["admin"]},
])  # fmt: skip
ACTIONS = "[data-api], form.run-form"


def _wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT_S)


def _text_is(css: str, text: str) -> Callable[[WebDriver], bool]:
    return lambda d: d.find_element(By.CSS_SELECTOR, css).text.strip() == text


def _submit(gw: GatewayProc, plugin: str, action: str, params: dict[str, Any]) -> str:
    reply = httpx.post(f"{gw.url}/v1/jobs", json={"plugin": plugin, "action": action, "params": params}, timeout=30)
    assert reply.status_code == 202, reply.text
    job_id: str = reply.json()["job_id"]
    return job_id


def _open_form(driver: WebDriver, plugin: str, action: str) -> WebElement:
    details = driver.find_element(By.ID, f"a-{plugin}-{action}")
    details.find_element(By.TAG_NAME, "summary").click()
    return details.find_element(By.CSS_SELECTOR, "form.run-form")


def _fill(form: WebElement, plugin: str, action: str, values: dict[str, str]) -> None:
    for name, value in values.items():
        field = form.find_element(By.ID, f"f-{plugin}-{action}-{name}")
        field.clear()
        field.send_keys(value)


def _pct(driver: WebDriver) -> float:
    value = driver.find_element(By.ID, "job-progress").get_attribute("value")
    return float(value or 0)


def test_a_job_submitted_from_the_run_form_reaches_100_percent_without_a_reload(
    browser: WebDriver, gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    gw = started(gateway_process, worker_process)
    browser.get(f"{gw.url}/ui/plugins")
    form = _open_form(browser, "long_running", "count_slowly")
    _fill(form, "long_running", "count_slowly", {"steps": "5", "delay_s": "0.4"})
    screenshot(browser, "plugins")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(browser).until(ec.url_contains("/ui/jobs/"))
    browser.execute_script("window.__sameDocument = true")  # gone if the page were loaded again
    _wait(browser).until(lambda d: 0 < _pct(d) < 100)  # a live update mid-job
    screenshot(browser, "job-running")
    _wait(browser).until(_text_is("#job-pct", "100 %"))
    _wait(browser).until(_text_is("#job-state", "succeeded"))
    _wait(browser).until(ec.presence_of_element_located((By.ID, "job-result")))  # the outcome, fetched at the end
    assert browser.execute_script("return window.__sameDocument === true"), "the page was reloaded"
    assert '"steps": 5' in browser.find_element(By.ID, "job-result").text
    steps = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#timeline li[data-seq]")]
    assert any("step 5 of 5" in s for s in steps), steps
    screenshot(browser, "job")


def test_a_reload_mid_job_shows_the_stored_progress_and_output_then_continues_with_nothing_missing(
    browser: WebDriver, gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    gw = started(gateway_process, worker_process)
    count = 12
    job_id = _submit(gw, "InteropTarget", "it_async_gen", {"n": count, "prefix": "item-", "delay_ms": 250})
    browser.get(f"{gw.url}/ui/jobs/{job_id}")
    items = "#output li"
    _wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, items)) >= 3)
    browser.refresh()
    rendered = len(browser.find_elements(By.CSS_SELECTOR, items))
    assert rendered >= 3, "the reload did not render the stored output first"
    _wait(browser).until(_text_is("#output-end", f"end: succeeded, {count} items"))
    shown = [li.text for li in browser.find_elements(By.CSS_SELECTOR, items)]
    assert shown == [f'"item-{i}"' for i in range(count)], shown  # every item, once, in order
    screenshot(browser, "job-stream")

    progress_job = _submit(gw, "long_running", "count_slowly", {"steps": 6, "delay_s": 0.5})
    browser.get(f"{gw.url}/ui/jobs/{progress_job}")
    _wait(browser).until(lambda d: _pct(d) >= 30)
    before = _pct(browser)
    browser.refresh()
    assert _pct(browser) >= before, "the reload did not render the stored progress"
    _wait(browser).until(_text_is("#job-pct", "100 %"))
    _wait(browser).until(_text_is("#job-state", "succeeded"))


def test_sub_tasks_show_as_a_live_tree_at_a_phones_width_and_in_dark_mode(
    browser: WebDriver, gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    gw = started(gateway_process, worker_process)
    browser.set_window_size(390, 844)
    job_id = _submit(gw, "long_running", "pipeline", {"stages": 3, "steps": 4, "delay_s": 0.2})
    browser.get(f"{gw.url}/ui/jobs/{job_id}")
    stages = "#job-tree > ul.subtasks > li"
    _wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, stages)) == 3)
    _wait(browser).until(_text_is("#job-state", "succeeded"))
    names = [li.find_element(By.CLASS_NAME, "sub-name").text for li in browser.find_elements(By.CSS_SELECTOR, stages)]
    assert names == ["stage 1", "stage 2", "stage 3"]
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone's screen"
    screenshot(browser, "job-subtasks-narrow")
    dark(browser)
    background = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(13, 17, 23)", background
    screenshot(browser, "job-subtasks-dark")


def test_cancel_from_the_job_page_with_the_keyboard(
    browser: WebDriver, gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    gw = started(gateway_process, worker_process)
    job_id = _submit(gw, "long_running", "count_slowly", {"steps": 200, "delay_s": 0.2})
    browser.get(f"{gw.url}/ui/jobs/{job_id}")
    _wait(browser).until(_text_is("#job-state", "running"))
    for _ in range(20):  # by keyboard: Tab until the button has the focus, then Enter
        if browser.switch_to.active_element.get_attribute("id") == "cancel-job":
            break
        ActionChains(browser).send_keys(Keys.TAB).perform()  # to whatever has the focus
    assert browser.switch_to.active_element.get_attribute("id") == "cancel-job", "Cancel is not reachable by Tab"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    _wait(browser).until(_text_is("#job-state", "cancelled"))
    _wait(browser).until(lambda d: "cancel: cancelled_running" in d.find_element(By.ID, "job-ack").text)
    assert not browser.find_element(By.ID, "cancel-job").is_enabled()


def test_pause_and_resume_a_worker_and_see_a_new_worker_appear(
    browser: WebDriver, gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    gw = started(gateway_process, worker_process)
    browser.get(f"{gw.url}/ui/workers")
    row = "#workers-table tr[data-worker]"
    state = f"{row} [data-state]"
    _wait(browser).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, state), "running"))
    browser.find_element(By.CSS_SELECTOR, f'{row} button[data-command="pause"]').click()
    _wait(browser).until(lambda d: "pause:" in d.find_element(By.ID, "worker-ack").text)
    assert "acted" in browser.find_element(By.ID, "worker-ack").text
    _wait(browser).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, state), "paused"))
    screenshot(browser, "workers")
    browser.find_element(By.CSS_SELECTOR, f'{row} button[data-command="resume"]').click()
    _wait(browser).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, state), "running"))
    worker_process(bundled_plugins_config(**FAST))  # its worker_started event refreshes the table
    _wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, row)) == 2)


def test_a_bad_param_shows_the_gateways_message_next_to_its_field(
    browser: WebDriver, gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    gw = started(gateway_process, worker_process)
    browser.get(f"{gw.url}/ui/plugins")
    form = _open_form(browser, "long_running", "count_slowly")
    _fill(form, "long_running", "count_slowly", {"steps": "many"})
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    error = "f-long_running-count_slowly-steps-error"
    _wait(browser).until(lambda d: d.find_element(By.ID, error).text.strip() != "")
    assert "integer" in browser.find_element(By.ID, error).text
    field = browser.find_element(By.ID, "f-long_running-count_slowly-steps")
    assert field.get_attribute("aria-invalid") == "true"
    assert browser.switch_to.active_element == field  # focus moved to the field to fix
    assert "/ui/plugins" in browser.current_url  # nothing was submitted
    screenshot(browser, "plugins-field-error")


def _dead_letter(gw: GatewayProc) -> str:
    job_id = _submit(gw, "long_running", "fail", {"message": "boom for the dashboard"})
    result = httpx.get(f"{gw.url}/v1/jobs/{job_id}/result", params={"wait": 20}, timeout=30)
    assert result.json()["state"] == "failed", result.text
    deadline = time.monotonic() + WAIT_S  # the letter is written with the final record: it is there already
    while httpx.get(f"{gw.url}/v1/dead-letters/{job_id}", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the failed job did not become a dead letter"
        time.sleep(0.1)
    return job_id


def test_replay_a_dead_letter(
    browser: WebDriver, gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    gw = started(gateway_process, worker_process)
    job_id = _dead_letter(gw)
    browser.get(f"{gw.url}/ui/dead-letters")
    browser.find_element(By.CSS_SELECTOR, f'tr[data-letter="{job_id}"] a').click()
    _wait(browser).until(ec.url_contains(f"/ui/dead-letters/{job_id}"))
    assert "boom for the dashboard" in browser.find_element(By.TAG_NAME, "main").text
    screenshot(browser, "dead-letter")
    browser.find_element(By.ID, "replay-letter-new").click()
    _wait(browser).until(lambda d: "/ui/jobs/" in d.current_url and job_id not in d.current_url)
    _wait(browser).until(_text_is("#job-state", "failed"))  # it ran again (and failed again)
    new_id = browser.current_url.rsplit("/", 1)[1]
    assert new_id != job_id
    record = httpx.get(f"{gw.url}/v1/jobs/{new_id}", timeout=10).json()
    assert record["request"]["params"] == {"message": "boom for the dashboard"}
    browser.get(f"{gw.url}/ui/dead-letters")
    _wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-letter="{new_id}"]')))
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr[data-letter="{job_id}"]')  # replayed: removed
    screenshot(browser, "dead-letters")


def test_purge_selected_and_replay_all_dead_letters(
    browser: WebDriver, gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    gw = started(gateway_process, worker_process)
    first, second = _dead_letter(gw), _dead_letter(gw)
    browser.get(f"{gw.url}/ui/dead-letters")
    browser.find_element(By.ID, f"sel-{first}").click()
    browser.find_element(By.ID, "purge-selected").click()
    _wait(browser).until(_text_is("#dl-ack", "purged 1"))
    _wait(browser).until(lambda d: not d.find_elements(By.CSS_SELECTOR, f'tr[data-letter="{first}"]'))
    assert browser.find_elements(By.CSS_SELECTOR, f'tr[data-letter="{second}"]')  # the one not selected stays
    enqueued = httpx.get(f"{gw.url}/v1/jobs/{second}", timeout=10).json()["enqueued_at_ms"]
    browser.find_element(By.ID, "replay-all").click()
    _wait(browser).until(_text_is("#dl-ack", f"{second}: replayed as {second}"))
    result = httpx.get(f"{gw.url}/v1/jobs/{second}/result", params={"wait": 20}, timeout=30).json()
    assert result["state"] == "failed"
    assert httpx.get(f"{gw.url}/v1/jobs/{second}", timeout=10).json()["enqueued_at_ms"] > enqueued  # a new run
    assert httpx.get(f"{gw.url}/v1/dead-letters/{first}", timeout=10).status_code == 404


def _log_in(browser: WebDriver, gw: GatewayProc, token: str) -> None:
    browser.get(f"{gw.url}/")
    _wait(browser).until(ec.url_contains("/ui/login"))
    field = browser.find_element(By.ID, "token")
    field.send_keys(token)
    field.submit()
    _wait(browser).until(ec.presence_of_element_located((By.ID, "workers-online")))


def test_a_read_only_token_is_shown_no_action_and_an_admin_token_is(
    browser: WebDriver, gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    gw = started(gateway_process, worker_process, {"ACTIONQ_GATEWAY__TOKENS": TOKENS})
    job_id = _submit_with(gw, ADMIN_TOKEN, "long_running", "count_slowly", {"steps": 1, "delay_s": 0.05})
    browser.get(f"{gw.url}/ui/login")
    screenshot(browser, "login")
    _log_in(browser, gw, READ_TOKEN)
    pages = ["/", "/ui/jobs", f"/ui/jobs/{job_id}", "/ui/workers", "/ui/plugins", "/ui/dead-letters"]
    for path in pages:
        browser.get(f"{gw.url}{path}")
        _wait(browser).until(ec.presence_of_element_located((By.TAG_NAME, "h1")))
        assert "token viewer" in browser.find_element(By.CSS_SELECTOR, ".who").text
        assert browser.find_elements(By.CSS_SELECTOR, ACTIONS) == [], path
    browser.find_element(By.CSS_SELECTOR, ".who button").click()  # log out
    _wait(browser).until(ec.url_contains("/ui/login"))
    _log_in(browser, gw, ADMIN_TOKEN)
    screenshot(browser, "overview")
    browser.get(f"{gw.url}/ui/workers")
    _wait(browser).until(ec.element_to_be_clickable((By.CSS_SELECTOR, 'button[data-command="pause"]'))).click()
    _wait(browser).until(lambda d: "pause:" in d.find_element(By.ID, "worker-ack").text)  # on the cookie, same origin
    assert "acted" in browser.find_element(By.ID, "worker-ack").text
    browser.get(f"{gw.url}/ui/jobs")
    Select(browser.find_element(By.ID, "jf-plugin")).select_by_visible_text("long_running")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    _wait(browser).until(_listed(job_id))
    screenshot(browser, "jobs")


def _listed(job_id: str) -> Callable[[WebDriver], bool]:
    """The job is in the list, reloading it until the worker's events of the job reached the stream."""

    def check(driver: WebDriver) -> bool:
        if driver.find_elements(By.CSS_SELECTOR, f'a[href="/ui/jobs/{job_id}"]'):
            return True
        driver.refresh()
        return False

    return check


def _submit_with(gw: GatewayProc, token: str, plugin: str, action: str, params: dict[str, Any]) -> str:
    body = {"plugin": plugin, "action": action, "params": params}
    reply = httpx.post(f"{gw.url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert reply.status_code == 202, reply.text
    job_id: str = reply.json()["job_id"]
    result = httpx.get(f"{gw.url}/v1/jobs/{job_id}/result", params={"wait": 20},
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)  # fmt: skip
    assert result.json()["state"] == "succeeded", result.text  # ended: its events are in the stream
    return job_id


def test_the_jobs_list_shows_new_jobs_and_their_changes_live_with_the_filters_applied(
    browser: WebDriver, gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    gw = started(gateway_process, worker_process)
    earlier = _submit(gw, "PluginB", "calculate_square", {"x": 3})  # listed under "any plugin" only
    httpx.get(f"{gw.url}/v1/jobs/{earlier}/result", params={"wait": 20}, timeout=30)
    browser.get(f"{gw.url}/ui/jobs")
    _wait(browser).until(_listed(earlier))  # its events reached the stream
    Select(browser.find_element(By.ID, "jf-plugin")).select_by_visible_text("PluginB")
    Select(browser.find_element(By.ID, "jf-since")).select_by_visible_text("last 5 min")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    _wait(browser).until(ec.url_contains("since=5m"))
    _wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-job="{earlier}"]')))
    browser.find_element(By.ID, "jf-plugin").find_element(By.CSS_SELECTOR, 'option[value=""]').click()
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    _wait(browser).until(lambda d: "plugin=PluginB" not in d.current_url)
    _wait(browser).until(_text_is("#jobs-live", "live"))
    browser.execute_script("window.__sameDocument = true")  # gone if the page were loaded again
    slow = _submit(gw, "long_running", "count_slowly", {"steps": 4, "delay_s": 0.5})
    row = f'tr[data-job="{slow}"] [data-state]'
    _wait(browser).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, row), "running"))  # a new row, live
    _wait(browser).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, row), "succeeded"))  # and its change
    first = browser.find_element(By.CSS_SELECTOR, "#jobs tbody tr").get_attribute("data-job")
    assert first == slow, "the new job is not on top"
    assert browser.execute_script("return window.__sameDocument === true"), "the page was reloaded"
    screenshot(browser, "jobs-live")

    browser.get(f"{gw.url}/ui/jobs?plugin=long_running")  # the gateway filters the events, the row the rest
    _wait(browser).until(_text_is("#jobs-live", "live"))
    other = _submit(gw, "PluginB", "calculate_square", {"x": 4})
    httpx.get(f"{gw.url}/v1/jobs/{other}/result", params={"wait": 20}, timeout=30)
    mine = _submit(gw, "long_running", "count_slowly", {"steps": 1, "delay_s": 0.05})
    mine_row = f'tr[data-job="{mine}"] [data-state]'
    _wait(browser).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, mine_row), "succeeded"))
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr[data-job="{other}"]')  # its events came first

    browser.get(f"{gw.url}/ui/jobs?state=running")  # a job leaves the list when it stops passing the filter
    _wait(browser).until(_text_is("#jobs-live", "live"))
    leaving = _submit(gw, "long_running", "count_slowly", {"steps": 3, "delay_s": 0.5})
    _wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-job="{leaving}"]')))
    _wait(browser).until(lambda d: not d.find_elements(By.CSS_SELECTOR, f'tr[data-job="{leaving}"]'))
    assert httpx.get(f"{gw.url}/v1/jobs/{leaving}", timeout=10).json()["state"] == "succeeded"
    assert browser.find_element(By.ID, "no-jobs").is_displayed()


def test_a_missing_job_is_a_readable_page_with_the_way_back(
    browser: WebDriver, gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    gw = started(gateway_process, worker_process)
    browser.get(f"{gw.url}/ui/jobs/no-such-job")
    assert "There is no job 'no-such-job'." in browser.find_element(By.ID, "not-found").text
    screenshot(browser, "not-found")
    browser.find_element(By.ID, "back").click()
    _wait(browser).until(ec.presence_of_element_located((By.ID, "jobs")))
    browser.get(f"{gw.url}/ui/dead-letters/no-such-letter")
    assert "There is no dead letter 'no-such-letter'." in browser.find_element(By.ID, "not-found").text
    browser.find_element(By.ID, "back").click()
    _wait(browser).until(ec.url_to_be(f"{gw.url}/ui/dead-letters"))
