"""What one caller can make the API do: bad input is a 400 naming the problem, never a 500
(ASGI, real store, no Docker needed)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from test_api import error_of, key_for

from api.app import build_app
from conftest import api_platform
from api.endpoints import ENDPOINTS
from hooks import github
from hooks.platform import Platform
from runtime.settings import Settings


@pytest.fixture
def platform(tmp_path: Path) -> Platform:
    return api_platform(Settings(data_dir=tmp_path / "data", instance="limitstest"))


@pytest.fixture
def alice(platform: Platform) -> dict[str, str]:
    return {"Authorization": f"Bearer {key_for(platform, 'alice')}"}


@pytest.fixture
def shop(platform: Platform, alice: dict[str, str]) -> TestClient:
    client = TestClient(build_app(platform, ENDPOINTS.endpoints))
    assert client.post("/api/v1/projects", json={"name": "shop"}, headers=alice).status_code == 201
    return client


def post_raw(client: TestClient, path: str, raw: bytes, headers: dict) -> tuple[int, str, str]:
    return error_of(client.post(path, content=raw, headers={**headers, "Content-Type": "application/json"}))


def test_deeply_nested_json_is_a_400(shop: TestClient, alice):
    for raw in (b"[" * 100_000, b'{"values": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        status, code, message = post_raw(shop, "/api/v1/projects/shop/env", raw, alice)
        assert (status, code) == (400, "bad_request") and "nested too deeply" in message, message


def test_huge_bodies_of_many_small_items_are_a_quick_400(shop: TestClient, alice):
    many_names = json.dumps({"names": ["A"] * 200_000}).encode()
    status, code, message = post_raw(shop, "/api/v1/projects/shop/env/unset", many_names, alice)
    assert (status, code) == (400, "bad_request") and "body.names has more than 200 items" in message
    many_values = json.dumps({"values": {f"K{i}": "v" for i in range(60_000)}}).encode()
    status, code, message = post_raw(shop, "/api/v1/projects/shop/env", many_values, alice)
    assert (status, code) == (400, "bad_request") and "body.values has more than 200 entries" in message
    many_scales = json.dumps({f"s{i}": 1 for i in range(80_000)}).encode()
    status, code, message = post_raw(shop, "/api/v1/projects/shop/scale", many_scales, alice)
    assert (status, code) == (400, "bad_request") and "has more than 50 entries" in message


@pytest.mark.parametrize("path", [
    "/api/v1/projects/shop/deployments/99999999999999999999999",
    "/api/v1/projects/shop/deployments/9223372036854775808",
    "/api/v1/projects/shop/deployments/" + "9" * 5000,
    "/api/v1/projects/shop/deployments/99999999999999999999999/output",
])
def test_out_of_range_path_integers_are_a_400(shop: TestClient, alice, path: str):
    status, code, message = error_of(shop.get(path, headers=alice))
    assert (status, code) == (400, "bad_request") and "number in the path must be at most" in message, message
    cancel = shop.post("/api/v1/projects/shop/deployments/99999999999999999999999/cancel", headers=alice)
    assert error_of(cancel)[:2] == (400, "bad_request")


def test_out_of_range_api_key_id_is_a_400(shop: TestClient, alice):
    status, code, message = error_of(shop.delete("/api/v1/api-keys/99999999999999999999999", headers=alice))
    assert (status, code) == (400, "bad_request") and "id in the path must be at most" in message, message


@pytest.mark.parametrize("query, message", [
    ("limit=1e400", "query parameter limit must be an integer"),
    ("limit=99999999999999999999999", "query parameter limit must be at most 1000"),
    ("limit=" + "9" * 5000, "query parameter limit must be"),
    ("limit=-99999999999999999999999", "query parameter limit must be at least 1"),
])
def test_out_of_range_query_integers_are_a_400(shop: TestClient, alice, query: str, message: str):
    for path in ("/api/v1/projects/shop/deployments", "/api/v1/audit", "/api/v1/projects/shop/github/deliveries"):
        status, code, text = error_of(shop.get(f"{path}?{query}", headers=alice))
        assert (status, code) == (400, "bad_request") and message in text, (path, text)


def test_out_of_range_body_integers_are_a_400(shop: TestClient, alice):
    status, code, message = post_raw(shop, "/api/v1/projects/shop/rollback", json.dumps({"number": 10**30}).encode(),
                                     alice)
    assert (status, code) == (400, "bad_request") and "body.number must be at most" in message, message
    # More digits than Python parses into an int is still the caller's mistake.
    status, code, message = post_raw(shop, "/api/v1/projects/shop/rollback", b'{"number": ' + b"9" * 5000 + b"}",
                                     alice)
    assert (status, code) == (400, "bad_request") and "not valid JSON" in message, message
    status, code, message = post_raw(shop, "/api/v1/api-keys",
                                     json.dumps({"label": "x", "expires_in_days": 10**30}).encode(), alice)
    assert (status, code) == (400, "bad_request") and "at most 3650" in message


def test_a_huge_last_event_id_is_a_400_not_a_500(shop: TestClient, platform, alice):
    deployment = platform.store.create_deployment("shop", "a" * 40, "main", "alice", "api",
                                                  platform.settings.data_dir / "deployments")
    platform.store.update_deployment("shop", deployment.number, status="failed", reason="test")
    response = shop.get(f"/api/v1/projects/shop/deployments/{deployment.number}/output",
                        headers={**alice, "Last-Event-ID": "9" * 5000})
    status, code, message = error_of(response)
    assert (status, code) == (400, "bad_request") and "Last-Event-ID" in message


def test_every_declared_integer_has_a_maximum():
    from api.endpoints import ENDPOINTS

    def integers(schema: dict, where: str):  # type: ignore[no-untyped-def]
        if schema.get("type") == "integer":
            yield where, schema
        for name, sub in (schema.get("properties") or {}).items():
            yield from integers(sub, f"{where}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                yield from integers(schema[key], f"{where}[]")
        for option in schema.get("anyOf", []):
            yield from integers(option, where)

    for ep in ENDPOINTS.endpoints:
        inputs = [(f"path {n}", s) for n, s in ep.path_params.items()] + \
                 [(f"query {n}", s) for n, s in ep.query.items()] + ([("body", ep.body)] if ep.body else [])
        for where, schema in inputs:
            for field, found in integers(schema, f"{ep.method} {ep.path} {where}"):
                assert "maximum" in found and found["maximum"] <= 2**63 - 1, field


# -- webhooks: refused before their body is read ------------------------------------------------

@pytest.fixture
def hooked(platform: Platform, shop: TestClient) -> tuple[TestClient, str]:
    return shop, github.link(platform, "alice", "shop", "octo/shop")["secret"]


def signed_post(client: TestClient, project: str, secret: str, body: bytes, **headers: str):  # type: ignore[no-untyped-def]
    sent = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": "d-1",
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}
    sent.update({k.replace("_", "-"): v for k, v in headers.items()})
    return client.post(f"/webhooks/github/{project}", content=body, headers={k: v for k, v in sent.items() if v})


def test_a_signed_but_deeply_nested_webhook_body_is_a_400(hooked):
    client, secret = hooked
    response = signed_post(client, "shop", secret, b"[" * 100_000)
    assert response.status_code == 400 and "nested too deeply" in response.json()["error"]["message"]
    huge_int = signed_post(client, "shop", secret, b'{"ref": ' + b"9" * 5000 + b"}")
    assert huge_int.status_code == 400 and "not valid JSON" in huge_int.json()["error"]["message"]


def test_webhook_headers_are_checked_before_the_body(hooked):
    client, secret = hooked
    malformed = signed_post(client, "shop", secret, b"{}", X_Hub_Signature_256="sha256=nothex")
    assert malformed.status_code == 401 and "X-Hub-Signature-256" in malformed.json()["error"]["message"]
    no_event = signed_post(client, "shop", secret, b"{}", X_GitHub_Event="")
    assert no_event.status_code == 400 and "X-GitHub-Event" in no_event.json()["error"]["message"]
    no_delivery = signed_post(client, "shop", secret, b"{}", X_GitHub_Delivery="")
    assert no_delivery.status_code == 400 and "X-GitHub-Delivery" in no_delivery.json()["error"]["message"]


def test_beyond_the_webhook_readers_a_503_comes_at_once(platform: Platform, hooked):
    client, secret = hooked
    readers = client.app.state.webhook_readers  # type: ignore[attr-defined]
    readers.reading["shop"] = readers.per_project  # every slot of shop busy reading someone's body
    busy = signed_post(client, "shop", secret, b"{}", X_GitHub_Event="ping")
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert busy.json()["error"]["code"] == "busy"
    assert signed_post(client, "ghost", secret, b"{}").status_code == 404  # no body read for that either
    # A flood at shop's hook does not turn another project's deliveries away.
    platform.store.add_project("blog", "alice")
    blog_secret = github.link(platform, "alice", "blog", "octo/blog")["secret"]
    assert signed_post(client, "blog", blog_secret, b"{}", X_GitHub_Event="ping").status_code == 200
    readers.reading.update({f"p{i}": readers.per_project for i in range(readers.in_all // readers.per_project)})
    assert signed_post(client, "blog", blog_secret, b"{}", X_GitHub_Event="ping").status_code == 503  # all full
    readers.reading.clear()
    assert signed_post(client, "shop", secret, b"{}", X_GitHub_Event="ping").status_code == 200
    assert readers.reading == {}  # given back
