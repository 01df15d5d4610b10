"""deploy/docker-compose.sentinel.yml and deploy/docker-compose.cluster.yml agree with what they run.

No Docker engine is needed: the files are parsed, every actionq service's ``ACTIONQ_REDIS_URL`` is
read by the product's own URL parser, and what it names is checked against the file's services and
their commands (the Sentinels monitor the master the URL names, the cluster is created from every
node with a replica each, the workers wait for it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.redis.cluster import parse_cluster_url
from service.redis.sentinel import parse_sentinel_url
from service.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _compose(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
    return loaded


def _actionq_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("image") == "actionq:latest"}


def _words(command: list[str] | str) -> list[str]:
    return command if isinstance(command, list) else command.split()


@pytest.mark.parametrize("name", ["docker-compose.sentinel.yml", "docker-compose.cluster.yml"])
def test_each_actionq_service_builds_the_repository_and_takes_valid_settings(name: str) -> None:
    services = _actionq_services(_compose(name))
    assert set(services) == {"worker", "gateway"}
    for service in services.values():
        assert service["build"] == ".."  # the repository root, from deploy/
        assert (DEPLOY / service["build"] / "Dockerfile").is_file()
        env = {k: str(v) for k, v in service["environment"].items() if k != "ACTIONQ_GATEWAY"}
        settings = Settings.model_validate({k.removeprefix("ACTIONQ_").lower(): v for k, v in env.items()})
        assert settings.redis_url == env["ACTIONQ_REDIS_URL"]
    assert "healthcheck" in services["worker"]
    assert services["gateway"]["ports"] == ["8080:8080"]


def test_the_sentinel_file_monitors_the_master_its_url_names() -> None:
    compose = _compose("docker-compose.sentinel.yml")
    services = compose["services"]
    url = parse_sentinel_url(_actionq_services(compose)["worker"]["environment"]["ACTIONQ_REDIS_URL"])
    sentinels = [name for name in services if name.startswith("sentinel-")]
    assert sorted(host for host, _ in url.sentinels) == sorted(sentinels)
    assert {port for _, port in url.sentinels} == {26379}
    script = "\n".join(_words(services[sentinels[0]]["command"]))
    monitor = next(line.split() for line in script.splitlines() if "sentinel monitor" in line)
    master, host, quorum = monitor[2], monitor[3], int(monitor[5])
    assert master == url.master
    assert host in services
    assert quorum <= len(sentinels) // 2 + 1  # a majority can agree
    replicas = [name for name, s in services.items() if "--replicaof" in _words(s.get("command", []))]
    assert replicas
    for name in replicas:
        words = _words(services[name]["command"])
        assert words[words.index("--replicaof") + 1] == host


def test_the_cluster_file_creates_the_cluster_its_url_names_before_the_workers_start() -> None:
    compose = _compose("docker-compose.cluster.yml")
    services = compose["services"]
    nodes = {name: _words(s["command"]) for name, s in services.items() if name.startswith("redis-")}
    for name, words in nodes.items():
        assert words[words.index("--cluster-enabled") + 1] == "yes"
        assert words[words.index("--cluster-announce-hostname") + 1] == name  # clients are told names
        assert words[words.index("--cluster-preferred-endpoint-type") + 1] == "hostname"
    url = parse_cluster_url(_actionq_services(compose)["worker"]["environment"]["ACTIONQ_REDIS_URL"])
    assert {host for host, _ in url.nodes} <= set(nodes)
    create = "\n".join(_words(services["cluster-init"]["command"]))
    created = next(line.split() for line in create.splitlines() if "--cluster create" in line)
    members = [word.partition(":")[0] for word in created if word.startswith("redis-") and ":" in word]
    assert sorted(members) == sorted(nodes)
    replicas = int(created[created.index("--cluster-replicas") + 1])
    masters = len(members) // (1 + replicas)
    assert masters >= 3  # Redis Cluster's minimum
    assert int(_actionq_services(compose)["worker"]["environment"]["ACTIONQ_CLUSTER_PARTITIONS"]) >= masters
    for service in _actionq_services(compose).values():
        assert service["depends_on"] == {"cluster-init": {"condition": "service_completed_successfully"}}
