"""Plugins as JSON Schema, workers, health, seed 004's endpoints, bearer scopes, CORS and the bind rule."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from typer.testing import CliRunner

from service.cli import app as cli_app
from service.errors import ConfigError
from service.gateway import create_app
from service.gateway.server import bind_address, uvicorn_config
from service.models import JobState
from service.settings import Settings, load_settings
from tests.conftest import REPO_ROOT
from tests.unit.fakes import register
from tests.unit.gateway.conftest import ADMIN, CONTROL, READ, SUBMIT, TOKENS, GatewayFactory, settings_for

SQUARE = {"plugin": "PluginB", "action": "calculate_square", "params": {"x": 2}}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_plugins_list_each_actions_arguments_as_json_schema(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB", "long_running")
        reply = await gw.http.get("/v1/plugins")
        assert reply.status_code == 200
        plugins = {p["name"]: p for p in reply.json()}
        assert set(plugins) == {"PluginB", "long_running"}
        assert plugins["PluginB"]["live"] is True
        square = plugins["PluginB"]["actions"][0]
        assert square["name"] == "calculate_square"
        assert square["arguments"] == {
            "type": "object",
            "properties": {
                "x": {
                    "anyOf": [{"type": "integer"}, {"type": "number"}],
                    "description": "The number to square (an int stays an int)",
                },
            },
            "additionalProperties": False,
            "required": ["x"],
        }
        count = next(a for a in plugins["long_running"]["actions"] if a["name"] == "count_slowly")
        assert count["arguments"]["properties"]["steps"] == {
            "type": "integer", "default": 5, "description": "How many steps to take."
        }  # fmt: skip
        assert "required" not in count["arguments"]
        assert count["timeout_s"] == 120


async def test_workers_health_and_readiness(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        assert (await gw.http.get("/healthz")).json() == {"status": "ok"}
        not_ready = await gw.http.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["error"]["type"] == "NotReady"
        assert "no live worker" in not_ready.json()["error"]["message"]
        await register(gw.client, "PluginB")
        ready = await gw.http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "redis": "ok", "workers": 1}
        workers = (await gw.http.get("/v1/workers")).json()
        assert [(w["worker_id"], w["hostname"]) for w in workers] == [("w1", "here")]


async def test_the_seeds_node_endpoints(gateway: GatewayFactory) -> None:
    async with gateway(max_wait_s=0.05) as gw:
        await register(gw.client, "PluginB")
        assert (await gw.http.get("/ping")).json() == {"status": "ok", "node": "here"}
        assert (await gw.http.get("/has_plugin", params={"name": "PluginB"})).json() == {
            "name": "PluginB", "has_plugin": True
        }  # fmt: skip
        assert (await gw.http.get("/has_plugin", params={"name": "Nope"})).json()["has_plugin"] is False
        info = await gw.http.post("/info", json={"node": "peer"})
        assert info.json() == {"node": "here", "namespace": "ut", "plugins": ["PluginB"], "workers": 1}
        refused = await gw.http.post("/execute", json={"plugin": "PluginB", "method": "calculate_square", "args": "x"})
        assert refused.status_code == 422
        assert refused.json()["error"]["type"] == "InvalidParamsError"
        # No worker runs it here: the wait (capped at 0.05 s) runs out, and the job is cancelled.
        late = await gw.http.post("/execute", json={"plugin": "PluginB", "method": "calculate_square", "args": 3})
        assert late.status_code == 504
        assert late.json()["error"]["type"] == "ResultTimeoutError"
        job_id = late.json()["error"]["message"].split()[1]
        assert (await gw.client.job(job_id).record()).state is JobState.CANCELLED
        stream_refused = await gw.http.post("/execute_stream", json={"plugin": "Nope", "method": "x"})
        assert stream_refused.status_code == 422
        assert stream_refused.json()["error"]["type"] == "UnknownPluginError"


async def test_tokens_and_scopes(gateway: GatewayFactory) -> None:
    async with gateway(tokens=TOKENS) as gw:
        await register(gw.client, "PluginB")
        missing = await gw.http.get("/v1/plugins")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json()["error"]["type"] == "Unauthorized"
        wrong = await gw.http.get("/v1/plugins", headers=_bearer("not-a-token-of-ours"))
        assert wrong.status_code == 401
        assert "not-a-token-of-ours" not in wrong.text
        assert (await gw.http.get("/v1/plugins", headers={"Authorization": READ})).status_code == 401  # no "Bearer"
        assert (await gw.http.get("/v1/plugins", headers=_bearer(READ))).status_code == 200
        forbidden = await gw.http.post("/v1/jobs", json=SQUARE, headers=_bearer(READ))
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["message"] == "this needs the 'submit' scope; token 'reader' has read"
        assert READ not in forbidden.text
        submitted = await gw.http.post("/v1/jobs", json=SQUARE, headers=_bearer(SUBMIT))
        assert submitted.status_code == 202
        job = submitted.json()["job_id"]
        assert (await gw.http.post(f"/v1/jobs/{job}/cancel", headers=_bearer(SUBMIT))).status_code == 403
        assert (await gw.http.get(f"/v1/jobs/{job}", headers=_bearer(CONTROL))).status_code == 403
        assert (await gw.http.post(f"/v1/jobs/{job}/cancel", headers=_bearer(CONTROL))).status_code == 200
        for path in (f"/v1/jobs/{job}", "/v1/workers", f"/v1/jobs/{job}/result"):
            assert (await gw.http.get(path, headers=_bearer(ADMIN))).status_code == 200, path
        assert (await gw.http.post("/v1/jobs", json=SQUARE, headers=_bearer(ADMIN))).status_code == 202
        for open_path in ("/healthz", "/readyz", "/ping", "/openapi.json"):
            assert (await gw.http.get(open_path)).status_code == 200, open_path


async def test_cors_is_off_unless_origins_are_listed(gateway: GatewayFactory) -> None:
    origin = {"Origin": "https://ui.example"}
    async with gateway() as gw:
        assert "access-control-allow-origin" not in (await gw.http.get("/healthz", headers=origin)).headers
    async with gateway(cors_origins=["https://ui.example"]) as gw:
        allowed = await gw.http.get("/healthz", headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "https://ui.example"
        other = await gw.http.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_the_openapi_document_lists_the_api(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        paths = (await gw.http.get("/openapi.json")).json()["paths"]
        for path in ("/v1/jobs", "/v1/jobs:batch", "/v1/jobs/{job_id}/events", "/v1/plugins", "/execute_stream"):
            assert path in paths


def test_without_a_token_only_loopback_is_accepted() -> None:
    assert bind_address(settings_for()) == ("127.0.0.1", 8080)
    assert bind_address(settings_for(), "localhost", 9000) == ("localhost", 9000)
    with pytest.raises(ConfigError, match=r"refuses to listen on '0\.0\.0\.0' with no token configured"):
        bind_address(settings_for(), "0.0.0.0")
    assert bind_address(settings_for(tokens=TOKENS), "0.0.0.0") == ("0.0.0.0", 8080)


def test_idle_keep_alive_connections_outlive_a_load_balancers_idle_timeout() -> None:
    """uvicorn's own 5 s would close a connection a balancer (60 s idle on AWS's) still holds."""
    assert uvicorn_config(settings_for(), "127.0.0.1", 8080).timeout_keep_alive == 75
    assert uvicorn_config(settings_for(http_keep_alive_s=2), "127.0.0.1", 8080).timeout_keep_alive == 2


def test_token_secrets_never_print() -> None:
    settings = settings_for(tokens=TOKENS)
    assert all(t["token"] not in repr(settings) for t in TOKENS)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_settings(redis_url="redis://x", gateway={"tokens": [{"name": "short", "token": "abc"}]})


def test_the_command_refuses_a_public_address_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ACTIONQ_GATEWAY", "ACTIONQ_GATEWAY__TOKENS", "ACTIONQ_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(cli_app, ["--redis-url", "redis://127.0.0.1:1/0", "gateway", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "no token configured" in result.output


def test_the_gateway_never_imports_the_worker() -> None:
    """DESIGN.md §2: the gateway is the client's side (the layers contract alone would allow it)."""
    code = (
        "import sys, service.gateway.server\n"
        "bad = sorted(m for m in sys.modules if m == 'service.worker' or m.startswith('service.worker.'))\n"
        "print(bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert result.stdout.strip() == "[]", result.stdout


async def test_without_redis_the_gateway_stays_up_and_says_so() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", namespace="ut", reconnect_s=0)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            assert (await http.get("/healthz")).status_code == 200
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["message"].startswith("Redis is unreachable")
            job = await http.get("/v1/jobs/j1")
            assert job.status_code == 503
            assert job.json()["error"]["type"] == "BrokerError"
