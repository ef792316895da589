"""The authorization server's counters: token answers by grant type and outcome, requests and
latency by endpoint, and the signing-key gauges, as a scrape reads them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from tests.server.conftest import Server
from tests.server.conftest import register


def scraped(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(server.services.metrics)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }


def tokens(grant_type: str, outcome: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("bastion_as_token_requests_total", (("grant_type", grant_type), ("outcome", outcome)))


def test_token_answers_are_counted_by_grant_type_and_outcome(client: TestClient, server: Server) -> None:
    client_id, secret = register(client, server)
    assert secret is not None
    for _ in range(2):
        ok = client.post("/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))
        assert ok.status_code == 200
    assert (
        client.post("/token", data={"grant_type": "client_credentials"}, auth=(client_id, "no")).status_code
        == 401
    )
    assert client.post("/token", data={"grant_type": "password"}, auth=(client_id, secret)).status_code == 400
    assert client.post("/token", data={"grant_type": "x" * 300}, auth=(client_id, secret)).status_code == 400
    assert client.post("/token", data={}, auth=(client_id, secret)).status_code == 400
    assert client.get("/token").status_code == 405
    assert client.get("/nowhere").status_code == 404
    got = scraped(server)
    assert got[tokens("client_credentials", "ok")] == 2
    assert got[tokens("client_credentials", "invalid_client")] == 1
    assert got[tokens("other", "unsupported_grant_type")] == 2  # never the value sent: a bounded label
    assert got[tokens("none", "invalid_request")] == 1
    assert got[("bastion_as_requests_total", (("endpoint", "/token"), ("status", "200")))] == 2
    assert got[("bastion_as_requests_total", (("endpoint", "/token"), ("status", "405")))] == 1
    assert got[("bastion_as_requests_total", (("endpoint", "other"), ("status", "404")))] == 1
    assert got[("bastion_as_request_duration_seconds_count", (("endpoint", "/token"),))] == 7
    assert got[("bastion_as_throttled_total", (("gate", "account"), ("throttle", "login")))] == 0


def test_signing_key_gauges_follow_the_key_set(client: TestClient, server: Server) -> None:
    got = scraped(server)
    settings = server.services.settings
    for alg in (settings.access_token_algorithm, settings.id_token_algorithm):
        assert got[("bastion_as_signing_keys", (("alg", alg), ("state", "active")))] == 1
        assert got[("bastion_as_signing_keys", (("alg", alg), ("state", "pending")))] == 0
        period = settings.key_rotation_days * 86400
        remaining = got[("bastion_as_signing_key_remaining_seconds", (("alg", alg),))]
        assert period - 60 < remaining <= period
        rotation = got[("bastion_as_signing_key_rotation_seconds", (("alg", alg),))]
        assert rotation == remaining - settings.publish_delay
        ages = [
            v
            for (name, labels), v in got.items()
            if name == "bastion_as_signing_key_age_seconds" and ("alg", alg) in labels
        ]
        assert len(ages) == 1
        assert 0 <= ages[0] < 60
