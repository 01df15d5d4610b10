"""The dashboard's server side on fakeredis: login and the cookie, scopes and buttons, pages rendered
from the stored state, the run form from JSON Schema, the jobs list (its time filter, its live rows), replay as
new, the 404 pages, the overview's numbers (with the wait times)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from service.client.client import JobClient
from service.client.deadletters import DeadLetter
from service.errors import ErrorInfo
from service.events.bridge import FIELD
from service.events.models import JobFailedEvent, JobReceivedEvent, JobStartedEvent, JobSucceededEvent
from service.gateway.auth import TOKEN_COOKIE
from service.gateway.dashboard.forms import form_fields
from service.gateway.dashboard.stats import last_hour, percentile, wait_ms
from service.models import AttemptInfo, JobOptions, JobRecord, JobRequest, JobState, now_ms
from service.redis.streams import ITEM, entry_id
from service.wire import dumps
from tests.unit.fakes import register
from tests.unit.gateway.conftest import ADMIN, READ, SUBMIT, TOKENS, GatewayFactory

ACTION_MARKERS = ("data-api=", 'class="run-form"')


def _cookie(token: str, origin: str | None = "http://gw") -> dict[str, str]:
    """The login cookie, and the ``Origin`` a browser sends with a POST from the gateway's own pages."""
    return {"Cookie": f"{TOKEN_COOKIE}={token}", **({"Origin": origin} if origin else {})}


async def _events(client: JobClient, *events: dict[str, Any]) -> None:
    """One events-stream entry holding ``events``, as a worker's bridge writes a batch."""
    await client.redis.xadd(client.keys.events(), {FIELD: json.dumps(list(events)).encode()})


def _received(job_id: str) -> dict[str, Any]:
    event = JobReceivedEvent(worker_id="w1", job_id=job_id, plugin="long_running", action="count_slowly", attempt=1,
                             queue="q")  # fmt: skip
    return event.model_dump(mode="json")


async def _letter(client: JobClient, job_id: str) -> None:
    request = JobRequest(plugin="PluginB", action="calculate_square", params={"x": 3},
                         options=JobOptions(job_id=job_id))  # fmt: skip
    error = ErrorInfo(type="ValueError", message="boom", traceback="Traceback: line 1")
    letter = DeadLetter(job_id=job_id, request=request, queue="q", state=JobState.FAILED, error=error, attempts=[])
    await client.redis.set(client.keys.dead_letter(job_id), letter.model_dump_json(), ex=600)
    await client.redis.zadd(client.keys.dead_letters(), {job_id: letter.dead_at_ms})


async def test_without_tokens_the_dashboard_is_open_and_shows_every_action(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "long_running")
        handle = await gw.client.submit("long_running", "count_slowly", {"steps": 2})
        await _letter(gw.client, "dead-1")
        overview = await gw.http.get("/")
        assert overview.status_code == 200
        assert 'id="workers-online">1<' in overview.text
        assert "default:long_running" in overview.text  # the queue, with its depth
        pages = {
            "/ui/workers": 'data-command="pause"', "/ui/plugins": 'class="run-form"',
            f"/ui/jobs/{handle.job_id}": 'id="cancel-job"', "/ui/dead-letters": 'id="replay-all"',
        }  # fmt: skip
        for path, marker in pages.items():
            reply = await gw.http.get(path)
            assert reply.status_code == 200, (path, reply.text)
            assert marker in reply.text, path


async def test_with_tokens_a_page_sends_to_the_login_form_which_sets_an_httponly_strict_cookie(
    gateway: GatewayFactory,
) -> None:
    async with gateway(tokens=TOKENS) as gw:
        away = await gw.http.get("/ui/workers")
        assert away.status_code == 303
        assert away.headers["location"].startswith("/ui/login?next=/ui/workers")
        form = await gw.http.get(away.headers["location"])
        assert 'for="token"' in form.text
        assert 'id="token"' in form.text
        wrong = await gw.http.post("/ui/login", content="token=not-a-token&next=/ui/workers")
        assert wrong.status_code == 401
        assert "not one this gateway accepts" in wrong.text
        assert TOKEN_COOKIE not in wrong.headers.get("set-cookie", "")
        ok = await gw.http.post("/ui/login", content=f"token={READ}&next=/ui/workers")
        assert ok.status_code == 303
        assert ok.headers["location"] == "/ui/workers"
        cookie = ok.headers["set-cookie"].lower()
        assert f"{TOKEN_COOKIE}={READ}".lower() in cookie
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert (await gw.http.get("/ui/workers", headers=_cookie(READ))).status_code == 200
        out = await gw.http.post("/ui/logout")
        assert out.status_code == 303
        assert f'{TOKEN_COOKIE}=""' in out.headers["set-cookie"]


async def test_login_never_redirects_off_the_gateway(gateway: GatewayFactory) -> None:
    async with gateway(tokens=TOKENS) as gw:
        for target in ("//evil.example/x", "https://evil.example/"):
            reply = await gw.http.post("/ui/login", content=httpx.QueryParams(token=READ, next=target).__str__())
            assert reply.headers["location"] == "/"


async def test_a_token_without_read_cannot_log_in(gateway: GatewayFactory) -> None:
    async with gateway(tokens=TOKENS) as gw:
        operator = next(t["token"] for t in TOKENS if t["name"] == "operator")
        reply = await gw.http.post("/ui/login", content=f"token={operator}")
        assert reply.status_code == 401
        assert "no &#39;read&#39; scope" in reply.text
        page = await gw.http.get("/", headers=_cookie(operator))
        assert page.status_code == 303
        assert "/ui/login" in page.headers["location"]


async def test_the_cookie_authenticates_the_api_with_the_same_scopes_and_the_header_still_works(
    gateway: GatewayFactory,
) -> None:
    async with gateway(tokens=TOKENS) as gw:
        await register(gw.client, "long_running")
        assert (await gw.http.get("/v1/plugins", headers=_cookie(READ))).status_code == 200
        assert (await gw.http.get("/v1/plugins", headers={"Authorization": f"Bearer {READ}"})).status_code == 200
        assert (await gw.http.get("/v1/plugins")).status_code == 401
        assert (await gw.http.get("/v1/plugins", headers=_cookie("wrong-token-0123456789"))).status_code == 401
        body = {"plugin": "long_running", "action": "count_slowly", "params": {}}
        refused = await gw.http.post("/v1/jobs", json=body, headers=_cookie(READ))
        assert refused.status_code == 403
        assert "'submit' scope" in refused.json()["error"]["message"]
        assert (await gw.http.post("/v1/jobs", json=body, headers=_cookie(SUBMIT))).status_code == 202
        # the header wins over the cookie: a read header with a submit cookie is refused
        both = {"Authorization": f"Bearer {READ}", **_cookie(SUBMIT)}
        assert (await gw.http.post("/v1/jobs", json=body, headers=both)).status_code == 403


async def test_a_change_on_the_cookie_needs_the_gateways_own_origin(gateway: GatewayFactory) -> None:
    async with gateway(tokens=TOKENS) as gw:
        await register(gw.client, "long_running")
        body = {"plugin": "long_running", "action": "count_slowly", "params": {}}
        for origin in (None, "http://gw:8081", "https://elsewhere.example"):  # another port is the same site
            refused = await gw.http.post("/v1/jobs", json=body, headers=_cookie(SUBMIT, origin))
            assert refused.status_code == 403, origin
            assert "Origin is not this gateway" in refused.json()["error"]["message"]
        assert (await gw.http.get("/v1/plugins", headers=_cookie(READ, None))).status_code == 200  # reads need none
        bearer = {"Authorization": f"Bearer {SUBMIT}"}
        assert (await gw.http.post("/v1/jobs", json=body, headers=bearer)).status_code == 202  # no Origin needed
        elsewhere = {"Origin": "http://gw:8081"}
        login = await gw.http.post("/ui/login", content=f"token={READ}", headers=elsewhere)
        assert login.status_code == 403
        assert TOKEN_COOKIE not in login.headers.get("set-cookie", "")


async def test_a_read_only_token_sees_no_action_button_on_any_page(gateway: GatewayFactory) -> None:
    async with gateway(tokens=TOKENS) as gw:
        await register(gw.client, "long_running")
        handle = await gw.client.submit("long_running", "count_slowly", {"steps": 2})
        await _letter(gw.client, "dead-1")
        paths = ["/", "/ui/jobs", f"/ui/jobs/{handle.job_id}", "/ui/workers", "/ui/workers/table", "/ui/plugins",
                 "/ui/dead-letters", "/ui/dead-letters/dead-1"]  # fmt: skip
        for path in paths:
            reply = await gw.http.get(path, headers=_cookie(READ))
            assert reply.status_code == 200, (path, reply.text)
            assert not [m for m in ACTION_MARKERS if m in reply.text], path
            admin = await gw.http.get(path, headers=_cookie(ADMIN))
            assert admin.status_code == 200
        admin_job = await gw.http.get(f"/ui/jobs/{handle.job_id}", headers=_cookie(ADMIN))
        assert 'id="cancel-job"' in admin_job.text
        assert 'id="replay-job"' in admin_job.text


async def test_the_job_page_renders_the_stored_state_and_output_first(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "long_running")
        handle = await gw.client.submit("long_running", "count_slowly", {"steps": 3, "delay_s": 0.5})
        stream = gw.client.keys.job_stream(handle.job_id)
        for index, item in enumerate(["a<b>", {"n": 1}]):
            await gw.client.redis.xadd(stream, {ITEM: dumps(item)}, id=entry_id(index))
        page = (await gw.http.get(f"/ui/jobs/{handle.job_id}")).text
        assert 'data-items="2"' in page
        assert 'data-has-stream="true"' in page
        assert f'data-events="/v1/jobs/{handle.job_id}/events"' in page
        assert "&#34;a&lt;b&gt;&#34;" in page  # an item is text, escaped, never markup
        assert "&#34;delay_s&#34;: 0.5" in page  # the params
        assert 'data-terminal="false"' in page
        assert "queued" in page
        snapshot = page.split('<script type="application/json" id="snapshot">')[1].split("</script>")[0]
        assert json.loads(snapshot)["state"] == "queued"
        outcome = await gw.http.get(f"/ui/jobs/{handle.job_id}/outcome")
        assert "Not ended yet." in outcome.text
        assert (await gw.http.get("/ui/jobs/nope")).status_code == 404


async def test_replay_as_new_submits_the_stored_request_under_a_new_id_and_needs_submit(
    gateway: GatewayFactory,
) -> None:
    async with gateway(tokens=TOKENS) as gw:
        await register(gw.client, "long_running")
        handle = await gw.client.submit("long_running", "count_slowly", {"steps": 2}, queue="default")
        assert (await gw.http.post(f"/ui/jobs/{handle.job_id}/replay", headers=_cookie(READ))).status_code == 403
        reply = await gw.http.post(f"/ui/jobs/{handle.job_id}/replay", headers=_cookie(SUBMIT))
        assert reply.status_code == 202
        new_id = reply.json()["job_id"]
        assert new_id != handle.job_id
        assert reply.json()["location"] == f"/ui/jobs/{new_id}"
        record = await gw.client.job(new_id).record()
        assert (record.request.action, record.request.params) == ("count_slowly", {"steps": 2, "delay_s": 0.2})


async def test_the_run_form_is_generated_from_the_json_schema(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "long_running")
        page = (await gw.http.get("/ui/plugins")).text
        assert 'data-plugin="long_running" data-action="count_slowly"' in page
        assert '<label for="f-long_running-count_slowly-steps">' in page
        assert 'id="f-long_running-count_slowly-steps" name="steps" data-kind="integer" value="5"' in page
        assert 'id="f-long_running-count_slowly-steps-error"' in page
        assert 'data-error-for="steps"' in page


def test_form_fields_cover_the_schema_shapes() -> None:
    arguments = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "default": 3},
            "x": {"anyOf": [{"type": "integer"}, {"type": "number"}]},
            "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
            "mode": {"enum": ["a", "b"], "default": "a"},
            "flag": {"type": "boolean"},
            "key": {"type": "string", "writeOnly": True},
            "blob": {"type": "object"},
        },
        "required": ["x"],
    }
    fields = {f.name: f for f in form_fields(arguments)}
    assert [(f.kind, f.required, f.default) for f in fields.values()] == [
        ("integer", False, "3"), ("number", True, ""), ("integer", False, ""), ("enum", False, "a"),
        ("boolean", False, ""), ("string", False, ""), ("json", False, ""),
    ]  # fmt: skip
    assert fields["maybe"].nullable
    assert not fields["n"].nullable
    assert fields["mode"].options == ['"a"', '"b"']
    assert fields["key"].secret


async def test_the_jobs_list_shows_recent_jobs_filters_them_and_an_exact_id_opens_the_job(
    gateway: GatewayFactory,
) -> None:
    async with gateway() as gw:
        await register(gw.client, "long_running", "PluginB")
        one = await gw.client.submit("long_running", "count_slowly", {"steps": 1})
        two = await gw.client.submit("PluginB", "calculate_square", {"x": 2})
        await _events(gw.client, _received(one.job_id), _received(two.job_id), _received("expired-job"))
        listed = (await gw.http.get("/ui/jobs")).text
        assert one.job_id in listed
        assert two.job_id in listed
        assert listed.index(two.job_id) < listed.index(one.job_id)  # newest first
        only = (await gw.http.get("/ui/jobs", params={"plugin": "PluginB"})).text
        assert two.job_id in only
        assert one.job_id not in only
        none = (await gw.http.get("/ui/jobs", params={"state": "succeeded"})).text
        assert '<p id="no-jobs">No job matches.</p>' in none  # shown (it is hidden when rows are)
        assert '<p id="no-jobs" hidden>' in listed
        found = await gw.http.get("/ui/jobs", params={"q": one.job_id})
        assert found.status_code == 303
        assert found.headers["location"] == f"/ui/jobs/{one.job_id}"
        part = (await gw.http.get("/ui/jobs", params={"q": two.job_id[:6]})).text
        assert two.job_id in part


async def test_dead_letter_pages_list_and_show_with_the_traceback(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await _letter(gw.client, "dead-1")
        listed = (await gw.http.get("/ui/dead-letters")).text
        assert 'data-letter="dead-1"' in listed
        assert 'data-url="/v1/dead-letters/dead-1/replay"' in listed
        shown = (await gw.http.get("/ui/dead-letters/dead-1")).text
        assert "Traceback: line 1" in shown
        assert "ValueError" in shown
        assert (await gw.http.get("/ui/dead-letters/none")).status_code == 404


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5], 0.95) == 5
    assert percentile(list(range(1, 101)), 0.5) == 50
    assert percentile(list(range(1, 101)), 0.95) == 95


async def test_the_last_hour_counts_job_ends_and_run_times_and_says_when_capped(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        old = JobSucceededEvent(worker_id="w1", job_id="old", plugin="p", action="a", attempt=1, duration_ms=1,
                                ts_ms=now_ms() - 2 * 3600 * 1000).model_dump(mode="json")  # fmt: skip
        ends = [JobSucceededEvent(worker_id="w1", job_id=f"j{i}", plugin="p", action="a", attempt=1,
                                  duration_ms=10 * i).model_dump(mode="json") for i in range(1, 4)]  # fmt: skip
        failed = JobFailedEvent(worker_id="w1", job_id="f", plugin="p", action="a", attempt=1, duration_ms=40,
                                error=ErrorInfo(type="E", message="m")).model_dump(mode="json")  # fmt: skip
        long_ago = now_ms() - 3 * 3600 * 1000
        await gw.client.redis.xadd(gw.client.keys.events(), {FIELD: json.dumps([old]).encode()}, id=f"{long_ago}-0")
        await _events(gw.client, old, *ends, failed)  # an old event in a new batch is left out too
        hour = await last_hour(gw.client)
        assert hour.finished == 4
        assert hour.ends["job_failed"] == 1
        assert hour.failure_rate == 0.25
        assert (hour.run_p(0.5), hour.run_p(0.95)) == (20, 40)
        assert not hour.capped
        assert "25.0 %" in (await gw.http.get("/")).text  # the failure rate, on the overview
        for _ in range(120):  # more entries than a page (50) holds
            await _events(gw.client, ends[0])
        capped = await last_hour(gw.client, cap=60)
        assert capped.capped  # it stopped at the cap, before the hour's start: a floor, and says so
        assert capped.finished < 124


async def test_a_missing_job_or_dead_letter_is_a_readable_404_page_with_a_link_back(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        for path, back in [("/ui/jobs/nope", "/ui/jobs"), ("/ui/jobs/nope/outcome", "/ui/jobs"),
                           ("/ui/dead-letters/nope", "/ui/dead-letters")]:  # fmt: skip
            reply = await gw.http.get(path)
            assert reply.status_code == 404, path
            assert reply.headers["content-type"].startswith("text/html"), path  # not the API's JSON problem
            assert "There is no " in reply.text, path
            assert "&#39;nope&#39;" in reply.text, path
            assert f'<a id="back" href="{back}">' in reply.text, path
        api = await gw.http.get("/v1/jobs/nope")
        assert api.status_code == 404
        assert api.headers["content-type"].startswith("application/")  # the API's answer is unchanged


def _started(job_id: str, ts_ms: int | None = None, attempt: int = 1) -> dict[str, Any]:
    event = JobStartedEvent(worker_id="w1", job_id=job_id, plugin="long_running", action="count_slowly",
                            attempt=attempt, queue="q", **({"ts_ms": ts_ms} if ts_ms else {}))  # fmt: skip
    return event.model_dump(mode="json")


async def test_the_time_filter_keeps_the_jobs_with_an_event_that_recent(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "long_running")
        old = await gw.client.submit("long_running", "count_slowly", {"steps": 1})
        new = await gw.client.submit("long_running", "count_slowly", {"steps": 1})
        two_hours_ago = now_ms() - 2 * 3600 * 1000
        await _events(gw.client, _started(old.job_id, ts_ms=two_hours_ago), _received(new.job_id))
        for since, listed, left_out in [("5m", [new], [old]), ("1h", [new], [old]), ("1d", [new, old], []),
                                        ("", [new, old], [])]:  # fmt: skip
            text = (await gw.http.get("/ui/jobs", params={"since": since} if since else {})).text
            assert all(h.job_id in text for h in listed), since
            assert not any(h.job_id in text for h in left_out), since
        assert (await gw.http.get("/ui/jobs", params={"since": "2w"})).status_code == 422  # not a choice


async def test_the_jobs_list_follows_job_events_and_a_row_is_rendered_with_the_filters(
    gateway: GatewayFactory,
) -> None:
    async with gateway() as gw:
        await register(gw.client, "long_running", "PluginB")
        job = await gw.client.submit("long_running", "count_slowly", {"steps": 1})
        listed = (await gw.http.get("/ui/jobs", params={"plugin": "long_running", "state": "queued"})).text
        events = listed.split('data-events="')[1].split('"')[0].replace("&amp;", "&")
        assert events.startswith("/v1/events?kind=job_received&kind=job_started&kind=job_succeeded")
        assert "&plugin=long_running&since=" in events
        assert events.endswith("-0")  # an entry id: from the page's read on, so no event is missed
        assert 'data-row-query="state=queued&amp;plugin=long_running"' in listed
        assert '<p id="no-jobs">No job matches.</p>' in listed  # the job has no event yet: not listed
        row = await gw.http.get(f"/ui/jobs/{job.job_id}/row", params={"plugin": "long_running", "state": "queued"})
        assert row.status_code == 200
        assert row.text.strip().startswith(f'<tr data-job="{job.job_id}">')
        assert ">queued</span>" in row.text
        for params in ({"plugin": "PluginB"}, {"state": "running"}, {"q": "not-this-id"}):
            gone = await gw.http.get(f"/ui/jobs/{job.job_id}/row", params=params)
            assert gone.status_code == 204, params  # no longer passes the filters: the page removes the row
        assert (await gw.http.get("/ui/jobs/nope/row")).status_code == 204


async def test_wait_times_are_read_from_the_records_of_the_newest_first_starts(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "long_running")
        waits = [1_000, 2_000, 3_000, 40_000]
        handles = [await gw.client.submit("long_running", "count_slowly", {"steps": 1}) for _ in waits]
        for handle, wait in zip(handles, waits, strict=True):
            scheduled = (await handle.record()).scheduled_at_ms
            started = {"state": "running", "attempt": "1", "started_at_ms": scheduled + wait}
            await gw.client.redis.hset(gw.client.keys.job(handle.job_id), mapping=started)  # type: ignore[misc]  # as a take writes it
        retried = await gw.client.submit("long_running", "count_slowly", {"steps": 1})
        await _events(gw.client, *(_started(h.job_id) for h in handles), _started(retried.job_id, attempt=2),
                      _started("expired-job"))  # fmt: skip
        hour = await last_hour(gw.client)
        assert sorted(hour.started) == sorted([*(h.job_id for h in handles), "expired-job"])  # first starts only
        assert sorted(hour.wait_ms) == waits  # the expired record is left out
        assert (hour.wait_p(0.5), hour.wait_p(0.95)) == (2_000, 40_000)
        overview = (await gw.http.get("/")).text
        assert '<dd id="wait-times">2.00 s / 40 s' in overview
        assert "the newest 4 first starts, at most 200" in overview


def test_a_wait_is_from_the_scheduled_time_to_the_first_attempts_start() -> None:
    request = JobRequest(plugin="p", action="a")
    base = JobRecord(job_id="j", state=JobState.QUEUED, request=request, queue="q", enqueued_at_ms=100,
                     scheduled_at_ms=5_000)  # fmt: skip
    assert wait_ms(base) is None  # not started
    started = base.model_copy(update={"attempt": 1, "started_at_ms": 5_250})
    assert wait_ms(started) == 250  # from the defer's end, not the enqueue
    first = AttemptInfo(attempt=1, started_at_ms=6_000, state=JobState.FAILED)
    again = started.model_copy(update={"attempt": 2, "started_at_ms": 9_000, "attempts": [first]})
    assert wait_ms(again) == 1_000  # the first attempt's start: a retry's delay is not queue wait
    assert wait_ms(base.model_copy(update={"attempt": 2, "started_at_ms": 9_000})) is None  # no first start known
