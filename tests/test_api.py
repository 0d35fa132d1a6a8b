"""The REST API through Starlette's real ASGI stack with a real store (no Docker needed here)."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from api.app import build_app
from conftest import api_platform
from api.endpoints import ENDPOINTS
from hooks import apikeys, team
from hooks.platform import Platform
from runtime.settings import Settings
from runtime.store import Store


@pytest.fixture
def platform(tmp_path: Path) -> Platform:
    return api_platform(Settings(data_dir=tmp_path / "data", instance="apitest"),
                        {"alice": "admin", "bob": "deployer"})


@pytest.fixture
def client(platform: Platform) -> TestClient:
    return TestClient(build_app(platform, ENDPOINTS.endpoints))


def key_for(platform: Platform, user: str, **kwargs) -> str:
    return apikeys.create(platform.store, "test", user, f"{user}'s key", **kwargs)[1]


@pytest.fixture
def alice(platform: Platform) -> dict[str, str]:
    return {"Authorization": f"Bearer {key_for(platform, 'alice')}"}


@pytest.fixture
def bob(platform: Platform) -> dict[str, str]:
    return {"Authorization": f"Bearer {key_for(platform, 'bob')}"}


def error_of(response) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return response.status_code, body["error"]["code"], body["error"]["message"]


# -- auth -----------------------------------------------------------------------------------

def test_missing_wrong_and_malformed_keys_get_401(client: TestClient):
    assert error_of(client.get("/api/v1/projects"))[:2] == (401, "unauthorized")
    assert "no API key" in error_of(client.get("/api/v1/projects"))[2]
    wrong = client.get("/api/v1/projects", headers={"Authorization": "Bearer disco_nope"})
    assert error_of(wrong)[:2] == (401, "unauthorized")
    odd = client.get("/api/v1/projects", headers={"Authorization": "Token abc"})
    assert "unsupported authorization scheme" in error_of(odd)[2]
    broken = client.get("/api/v1/projects", headers={"Authorization": "Basic %%%"})
    assert error_of(broken)[:2] == (401, "unauthorized")


def test_bearer_and_basic_both_work(client: TestClient, platform: Platform):
    secret = key_for(platform, "alice")
    assert client.get("/api/v1/projects", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    basic = base64.b64encode(f"{secret}:".encode()).decode()
    assert client.get("/api/v1/projects", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert client.get("/api/v1/projects", auth=(secret, "")).status_code == 200


def test_revoked_key_stops_working_at_once_and_expired_keys_fail(client: TestClient, platform: Platform):
    secret = key_for(platform, "bob")
    headers = {"Authorization": f"Bearer {secret}"}
    keys = client.get("/api/v1/api-keys", headers=headers).json()
    assert len(keys) == 1 and keys[0]["prefix"] == secret[:10]
    assert "key" not in keys[0] and "digest" not in keys[0]
    assert secret not in json.dumps(keys)
    assert client.delete(f"/api/v1/api-keys/{keys[0]['id']}", headers=headers).status_code == 200
    assert client.get("/api/v1/projects", headers=headers).status_code == 401

    expiring = key_for(platform, "bob", expires_in_days=1)
    key_id = platform.store.list_api_keys("bob")[-1].id
    with platform.store.transaction() as db:
        db.execute("UPDATE api_keys SET expires_at = '2000-01-01T00:00:00+00:00' WHERE id = ?", [key_id])
    assert client.get("/api/v1/projects", headers={"Authorization": f"Bearer {expiring}"}).status_code == 401


def test_changes_from_outside_the_daemon_take_effect_on_the_next_request(client: TestClient, platform: Platform,
                                                                        alice):
    """The daemon answers its per-request reads (the key, the user's role, grants, projects) from
    memory while the database is unchanged: a change made by the `disco` command on the server's
    shell (another Store on the same file) or by hand must still count on the very next request.
    In `with client`, every request runs on one event loop thread, as in the daemon (without it,
    each request gets a thread, and so a read cache, of its own)."""
    with client:
        _outside_changes_count_at_once(client, platform, alice)


def _outside_changes_count_at_once(client: TestClient, platform: Platform, alice: dict[str, str]) -> None:
    assert client.post("/api/v1/projects", json={"name": "shop"}, headers=alice).status_code == 201
    platform.store.grant("bob", "shop")
    secret = key_for(platform, "bob")
    bob = {"Authorization": f"Bearer {secret}"}
    for _ in range(2):  # warm: the second answer comes from what the first read
        assert client.get("/api/v1/projects/shop", headers=bob).status_code == 200
        assert [p["name"] for p in client.get("/api/v1/projects", headers=bob).json()] == ["shop"]
    shell = Store(platform.settings.db_path)

    team.revoke(shell, "server-shell", "bob", "shop")
    assert client.get("/api/v1/projects/shop", headers=bob).status_code == 403
    assert client.get("/api/v1/projects", headers=bob).json() == []
    team.grant(shell, "server-shell", "bob", "shop")
    assert client.get("/api/v1/projects/shop", headers=bob).status_code == 200

    by_hand = sqlite3.connect(platform.settings.db_path, isolation_level=None)
    by_hand.execute("UPDATE users SET role = 'admin' WHERE name = 'bob'")
    assert client.get("/api/v1/users", headers=bob).status_code == 200
    by_hand.execute("UPDATE users SET role = 'deployer' WHERE name = 'bob'")  # a role lowered
    assert error_of(client.get("/api/v1/users", headers=bob))[:2] == (403, "forbidden")

    apikeys.revoke(shell, shell.get_user("alice"), shell.list_api_keys("bob")[0].id)
    assert error_of(client.get("/api/v1/projects/shop", headers=bob))[:2] == (401, "unauthorized")
    other = key_for(platform, "bob")
    assert client.get("/api/v1/projects", headers={"Authorization": f"Bearer {other}"}).status_code == 200
    team.remove_user(shell, "server-shell", "bob")
    assert client.get("/api/v1/projects", headers={"Authorization": f"Bearer {other}"}).status_code == 401


def test_keys_are_stored_only_as_hashes(client: TestClient, platform: Platform, alice):
    created = client.post("/api/v1/api-keys", json={"label": "laptop", "expires_in_days": 30}, headers=alice)
    assert created.status_code == 201
    secret = created.json()["key"]
    assert secret.startswith("disco_") and len(secret) > 40
    assert created.json()["expires_at"]
    with platform.store.transaction() as db:
        dump = "\n".join(db.iterdump())
    assert secret not in dump
    assert client.get("/api/v1/meta", headers={"Authorization": f"Bearer {secret}"}).json()["user"]["name"] == "alice"


def test_deployer_is_kept_to_their_grants(client: TestClient, platform: Platform, alice, bob):
    for name in ("shop", "blog"):
        assert client.post("/api/v1/projects", json={"name": name}, headers=alice).status_code == 201
    platform.store.grant("bob", "shop")
    assert [p["name"] for p in client.get("/api/v1/projects", headers=bob).json()] == ["shop"]
    assert client.get("/api/v1/projects/shop", headers=bob).status_code == 200
    status, code, message = error_of(client.get("/api/v1/projects/blog/env", headers=bob))
    assert (status, code) == (403, "forbidden") and "has no access to project 'blog'" in message
    assert error_of(client.post("/api/v1/projects/blog/domains", json={"domain": "a.example.com"},
                                headers=bob))[0] == 403
    assert error_of(client.post("/api/v1/projects", json={"name": "mine"}, headers=bob))[:2] == (403, "forbidden")
    assert error_of(client.get("/api/v1/users", headers=bob))[0] == 403
    assert error_of(client.get("/api/v1/api-keys?user=alice", headers=bob))[0] == 403


# -- validation -----------------------------------------------------------------------------

def test_bad_input_gets_400_naming_the_field(client: TestClient, alice):
    cases = [
        (client.post, "/api/v1/projects", {"name": "ok", "colour": 1}, "body.colour is not a known field"),
        (client.post, "/api/v1/projects", {}, "body.name is required"),
        (client.post, "/api/v1/projects", {"name": 5}, "body.name must be a string"),
        (client.post, "/api/v1/projects", {"name": "../etc"}, "body.name '../etc' is invalid: a project name is a lowercase DNS label"),
        (client.post, "/api/v1/users", {"name": "zed", "role": "owner"}, "body.role"),
        (client.post, "/api/v1/api-keys", {"label": "x", "expires_in_days": 0}, "body.expires_in_days must be at least 1"),
    ]
    for method, path, body, message in cases:
        status, code, text = error_of(method(path, json=body, headers=alice))
        assert (status, code) == (400, "bad_request"), (path, body, text)
        assert message in text, (path, body, text)
    not_json = client.post("/api/v1/projects", content=b"{nope", headers={**alice, "Content-Type": "application/json"})
    assert "not valid JSON" in error_of(not_json)[2]
    empty = client.post("/api/v1/projects", headers=alice)
    assert "a JSON body is required" in error_of(empty)[2]
    unknown_query = client.get("/api/v1/projects?colour=red", headers=alice)
    assert "unknown query parameter 'colour'" in error_of(unknown_query)[2]
    bad_query = client.get("/api/v1/audit?limit=lots", headers=alice)
    assert "query parameter limit must be an integer" in error_of(bad_query)[2]
    bad_name = client.get("/api/v1/projects/Bad_Name", headers=alice)
    assert error_of(bad_name)[:2] == (400, "bad_request")


def test_too_large_body_gets_413(client: TestClient, alice):
    huge = json.dumps({"name": "x" * (2 << 20)})
    response = client.post("/api/v1/projects", content=huge, headers={**alice, "Content-Type": "application/json"})
    assert error_of(response)[:2] == (413, "too_large")


def test_a_lone_surrogate_in_a_body_is_a_400_not_a_500(client: TestClient, platform: Platform, alice):
    # JSON's "\ud800" parses to a string no UTF-8 store can hold (found by tests/test_fuzz.py).
    platform.store.add_project("shop", "alice")
    response = client.post("/api/v1/projects/shop/env", content=b'{"values": {"A": "\\ud800"}}', headers=alice)
    assert error_of(response)[:2] == (400, "bad_request") and "surrogate" in error_of(response)[2]
    paired = client.post("/api/v1/projects/shop/env", content=b'{"values": {"A": "\\ud83d\\ude00"}}', headers=alice)
    assert paired.status_code == 200  # a pair is one character (an emoji), and fine


def test_unknown_endpoint_and_method(client: TestClient, alice):
    assert error_of(client.get("/api/v1/nothing", headers=alice))[:2] == (404, "not_found")
    assert error_of(client.put("/api/v1/projects", headers=alice))[0] == 405


# -- capabilities without Docker ----------------------------------------------------------------

def test_projects_env_domains_and_audit(client: TestClient, platform: Platform, alice, bob):
    assert client.post("/api/v1/projects", json={"name": "shop"}, headers=alice).status_code == 201
    assert error_of(client.post("/api/v1/projects", json={"name": "shop"}, headers=alice))[:2] == (409, "conflict")
    assert error_of(client.get("/api/v1/projects/ghost", headers=alice))[:2] == (404, "not_found")

    platform.store.grant("bob", "shop")
    set_env = client.post("/api/v1/projects/shop/env", json={"values": {"API_TOKEN": "t0ps3cret", "MODE": "prod"}},
                          headers=bob)
    assert set_env.status_code == 200 and set_env.json() == {"deployment": None}  # nothing live to redeploy
    assert client.get("/api/v1/projects/shop/env", headers=bob).json() == {"names": ["API_TOKEN", "MODE"]}
    # Who may deploy a project may read its values (as `disco run -- env` shows them anyway).
    bobs = client.get("/api/v1/projects/shop/env?values=true", headers=bob).json()["values"]
    assert bobs == {"API_TOKEN": "t0ps3cret", "MODE": "prod"}
    values = client.get("/api/v1/projects/shop/env?values=true", headers=alice).json()["values"]
    assert values == {"API_TOKEN": "t0ps3cret", "MODE": "prod"}
    assert "invalid env var name" in error_of(client.post("/api/v1/projects/shop/env", json={"values": {"1X": "a"}},
                                                          headers=bob))[2]
    assert "PORT is set by Disco" in error_of(client.post("/api/v1/projects/shop/env", json={"values": {"PORT": "1"}},
                                                          headers=bob))[2]
    unset = client.post("/api/v1/projects/shop/env/unset", json={"names": ["MODE"], "deploy": False}, headers=bob)
    assert unset.status_code == 200
    assert error_of(client.post("/api/v1/projects/shop/env/unset", json={"names": ["MODE"]}, headers=bob))[0] == 404

    assert client.post("/api/v1/projects/shop/domains", json={"domain": "Shop.Example.com"}, headers=bob).status_code == 201
    listed = client.get("/api/v1/projects/shop/domains", headers=bob).json()
    assert [(d["domain"], d["certificate"]["state"]) for d in listed] == [("shop.example.com", "pending")]
    assert "once the project has a live deployment" in listed[0]["certificate"]["reason"]
    assert client.post("/api/v1/projects", json={"name": "blog"}, headers=alice).status_code == 201
    taken = client.post("/api/v1/projects/blog/domains", json={"domain": "shop.example.com"}, headers=alice)
    assert error_of(taken)[:2] == (409, "conflict") and "already belongs to project 'shop'" in error_of(taken)[2]
    invalid = client.post("/api/v1/projects/blog/domains", json={"domain": "not a domain"}, headers=alice)
    assert error_of(invalid)[0] == 400
    assert client.delete("/api/v1/projects/shop/domains/shop.example.com", headers=bob).status_code == 200
    assert client.get("/api/v1/projects/shop", headers=bob).json()["domains"] == []

    audit = client.get("/api/v1/audit?target=shop", headers=alice).json()
    actions = [(row["user"], row["action"]) for row in audit]
    assert ("bob", "env:set") in actions and ("alice", "projects:create") in actions
    assert ("bob", "domains:add") in actions and ("alice", "env:read-values") in actions
    assert ("bob", "env:read-values") in actions
    assert "t0ps3cret" not in json.dumps(audit)
    # The same filters as the dashboard's audit page: who, and an action or its whole group.
    bobs_env = client.get("/api/v1/audit?target=shop&user=bob&action=env", headers=alice).json()
    assert {row["action"] for row in bobs_env} == {"env:set", "env:read-values", "env:unset"}
    exact = client.get("/api/v1/audit?user=alice&action=projects:create", headers=alice).json()
    assert [row["target"] for row in exact] == ["blog", "shop"]


def test_users_ssh_keys_and_grants(client: TestClient, platform: Platform, alice, bob, make_key):
    assert client.post("/api/v1/users", json={"name": "carol", "role": "deployer"}, headers=alice).status_code == 201
    assert error_of(client.post("/api/v1/users", json={"name": "carol", "role": "deployer"}, headers=alice))[0] == 409
    granted = client.post("/api/v1/users/carol/grants", json={"project": "shop"}, headers=alice)
    assert granted.status_code == 201 and granted.json()["projects"] == ["shop"]
    assert client.delete("/api/v1/users/carol/grants/shop", headers=alice).json()["projects"] == []
    assert error_of(client.delete("/api/v1/users/carol/grants/shop", headers=alice))[0] == 404

    key = make_key("bobs")
    added = client.post("/api/v1/ssh-keys", json={"public_key": key.public.read_text()}, headers=bob)
    assert added.status_code == 201 and added.json()["fingerprint"] == key.fingerprint and added.json()["user"] == "bob"
    assert [k["fingerprint"] for k in client.get("/api/v1/ssh-keys", headers=bob).json()] == [key.fingerprint]
    again = client.post("/api/v1/ssh-keys", json={"public_key": key.public.read_text()}, headers=alice)
    assert error_of(again)[:2] == (409, "conflict") and "already registered to user 'bob'" in error_of(again)[2]
    assert error_of(client.post("/api/v1/ssh-keys", json={"public_key": "ssh-rsa nope"}, headers=bob))[0] == 400
    for_other = client.post("/api/v1/ssh-keys", json={"public_key": "x", "user": "alice"}, headers=bob)
    assert error_of(for_other)[0] == 403
    assert error_of(client.delete("/api/v1/ssh-keys", params={"fingerprint": key.fingerprint},
                                  headers={"Authorization": f"Bearer {key_for(platform, 'carol')}"}))[0] == 404
    assert client.delete("/api/v1/ssh-keys", params={"fingerprint": key.fingerprint}, headers=bob).status_code == 200
    assert client.delete("/api/v1/users/carol", headers=alice).status_code == 200
    assert error_of(client.delete("/api/v1/users/alice", headers=alice))[:2] == (409, "conflict")


def test_openapi_document_matches_the_routes(client: TestClient):
    document = client.get("/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.")
    served = {(ep.method.lower(), f"/api/v1{ep.path}") for ep in ENDPOINTS.endpoints}
    documented = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert served == documented
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            assert "401" in op["responses"] and op["summary"], (method, path)


def test_names_that_could_reach_other_objects_are_refused(client: TestClient, platform: Platform, alice):
    assert client.post("/api/v1/projects", json={"name": "shop"}, headers=alice).status_code == 201
    # A service name with a path in it would let Docker's API redirect to another service.
    scaled = client.post("/api/v1/projects/shop/scale", json={"x/../disco-caddy": 0}, headers=alice)
    assert error_of(scaled)[:2] == (400, "bad_request") and "invalid service name" in error_of(scaled)[2]
    logs = client.get("/api/v1/projects/shop/logs", params={"service": "x/../other-web"}, headers=alice)
    assert error_of(logs)[:2] == (400, "bad_request")
    odd_number = client.get("/api/v1/projects/shop/deployments/%C2%B2", headers=alice)
    assert error_of(odd_number)[0] in (400, 404)


def test_reserved_domains_are_refused(tmp_path: Path):
    platform = api_platform(Settings(data_dir=tmp_path / "d", instance="apitest", apps_domain="apps.example.com",
                                     host="deploy.example.com"))
    client = TestClient(build_app(platform, ENDPOINTS.endpoints))
    headers = {"Authorization": f"Bearer {key_for(platform, 'alice')}"}
    assert client.post("/api/v1/projects", json={"name": "alpha"}, headers=headers).status_code == 201
    for domain in ("shop.apps.example.com", "apps.example.com", "deploy.example.com"):
        taken = client.post("/api/v1/projects/alpha/domains", json={"domain": domain}, headers=headers)
        assert error_of(taken)[:2] == (409, "conflict") and "reserved by this server" in error_of(taken)[2]


def test_github_token_only_goes_to_the_host_it_was_given_for(client: TestClient, platform: Platform, alice):
    assert client.post("/api/v1/projects", json={"name": "shop"}, headers=alice).status_code == 201
    body = {"repo": "octo/shop", "clone_url": "https://github.com/octo/shop.git", "token": "github_pat_x"}
    assert client.post("/api/v1/projects/shop/github", json=body, headers=alice).status_code == 201
    assert client.get("/api/v1/projects/shop/github", headers=alice).json()["token_set"] is True
    same = client.post("/api/v1/projects/shop/github", json={"repo": "octo/shop", "force_mirror": True}, headers=alice)
    assert same.status_code == 201 and platform.store.github_link("shop")["token"] == "github_pat_x"
    moved = {"repo": "octo/shop", "clone_url": "https://evil.example.net/x.git"}
    assert client.post("/api/v1/projects/shop/github", json=moved, headers=alice).status_code == 201
    assert platform.store.github_link("shop")["token"] == ""
    for url in ("http://evil.example.net/x.git", "https://user:pat@github.com/octo/shop.git", "--upload-pack=x"):
        refused = client.post("/api/v1/projects/shop/github", json={"repo": "octo/shop", "clone_url": url},
                              headers=alice)
        assert error_of(refused)[0] == 400, url


def test_deploying_a_commit_whose_disco_toml_is_invalid_gets_422(client: TestClient, platform: Platform, alice,
                                                                   tmp_path: Path):
    import subprocess
    assert client.post("/api/v1/projects", json={"name": "shop"}, headers=alice).status_code == 201
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "Dockerfile").write_text("FROM scratch\n")
    (work / "disco.toml").write_text("[services.web]\nprot = 80\n")
    subprocess.run(["git", "add", "-A"], cwd=work, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], cwd=work, check=True)
    subprocess.run(["git", "init", "-q", "--bare", str(platform.repo_path("shop"))], check=True)
    subprocess.run(["git", "push", "-q", str(platform.repo_path("shop")), "main"], cwd=work, check=True)
    response = client.post("/api/v1/projects/shop/deployments", json={"branch": "main"}, headers=alice)
    status, code, message = error_of(response)
    assert (status, code) == (422, "invalid_config")
    assert "disco.toml line 2: unknown key 'services.web.prot'" in message
    assert platform.store.list_deployments("shop") == []


def test_docker_out_of_reach_is_a_503_that_says_so(platform: Platform, client: TestClient, alice, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{platform.settings.data_dir}/no-docker.sock")
    platform.store.add_project("shop", "alice")
    for method, path, body in (("GET", "/api/v1/projects/shop/logs", None),
                               ("GET", "/api/v1/projects/shop/scale", None),
                               ("POST", "/api/v1/projects/shop/scale", {"web": 1})):
        response = client.request(method, path, json=body, headers=alice)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"]["code"] == "docker_unavailable"
        assert "Docker is not reachable" in response.json()["error"]["message"]
