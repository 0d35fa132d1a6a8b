"""The GitHub App's rules without Docker or GitHub: the manifest flow's one-time link and state
(expiry, replay, binding), the App's webhook (signature, deduplication, installation events,
pushes to repos it lost), what a deployer sees, and that an App link has no webhook of its own.
Through the ASGI app on a real store; deploys are not reached here (tests/test_github_app.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from api.app import build_app
from api.endpoints import ENDPOINTS
from conftest import api_platform
from hooks import apikeys, github_app
from runtime.github_api import app_jwt, app_manifest, manifest_form_action, next_link, token_request
from runtime.settings import Settings

SECRET = "app-webhook-s3cret"


@pytest.fixture
def rig(tmp_path: Path):
    platform = api_platform(Settings(data_dir=tmp_path / "data", instance="apptest", host="deploy.example.com",
                                     github_url="https://ghe.example.com"), {"alice": "admin", "bob": "deployer"})
    client = TestClient(build_app(platform, ENDPOINTS.endpoints))
    alice = {"Authorization": f"Bearer {apikeys.create(platform.store, 'alice', 'alice', 't')[1]}"}
    bob = {"Authorization": f"Bearer {apikeys.create(platform.store, 'alice', 'bob', 't')[1]}"}
    return platform, client, alice, bob


def with_app(platform) -> None:
    platform.store.add_github_app({"app_id": 42, "slug": "disco-deploy", "name": "disco deploy", "owner": "octo",
                                   "html_url": "https://ghe.example.com/apps/disco-deploy", "client_id": "Iv1.x",
                                   "client_secret": "c", "webhook_secret": SECRET, "pem": "k", "created_by": "alice",
                                   "created_at": "now"})


def deliver(client, event: str, payload: dict, delivery: str | None = None, secret: str = SECRET):
    body = json.dumps(payload).encode()
    return client.post("/webhooks/github/app", content=body, headers={
        "X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()), "Content-Type": "application/json",
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()})


def installation(action: str, repos: list[str], installation_id: int = 7) -> dict:
    return {"action": action, "installation": {"id": installation_id, "account": {"login": "octo"}},
            "repositories": [{"full_name": r, "name": r.split("/")[1]} for r in repos], "sender": {"login": "octo"}}


def test_the_manifest_asks_for_little_and_names_this_server():
    manifest = app_manifest("disco deploy.example.com", "https://deploy.example.com")
    assert manifest["hook_attributes"] == {"url": "https://deploy.example.com/webhooks/github/app", "active": True}
    assert manifest["redirect_url"] == "https://deploy.example.com/github/app/created"
    assert manifest["default_permissions"] == {"contents": "read", "metadata": "read"}
    assert manifest["default_events"] == ["push"] and manifest["public"] is False
    assert manifest_form_action("https://github.com", "", "s") == "https://github.com/settings/apps/new?state=s"
    assert manifest_form_action("https://ghe.example.com/", "acme", "s") == \
        "https://ghe.example.com/organizations/acme/settings/apps/new?state=s"
    assert token_request("octo/shop") == {"repositories": ["shop"], "permissions": {"contents": "read"}}
    assert next_link('<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=5>; rel="last"') \
        == "https://api.github.com/x?page=2"
    assert next_link('<https://api.github.com/x?page=1>; rel="prev"') is None


def test_the_apps_jwt_is_rs256_backdated_and_short_lived():
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    token = app_jwt(42, pem, now=1_000_000)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, key.public_key(), algorithms=["RS256"], options={"verify_exp": False})
    assert claims == {"iat": 1_000_000 - 60, "exp": 1_000_000 + 540, "iss": "42"}
    assert claims["exp"] - claims["iat"] <= 600


def test_the_link_is_one_time_expires_and_only_admins_get_one(rig, monkeypatch: pytest.MonkeyPatch):
    platform, client, alice, bob = rig
    assert client.post("/api/v1/github/app", json={}, headers=bob).status_code == 403
    made = client.post("/api/v1/github/app", json={"org": "acme"}, headers=alice).json()
    assert made["url"].startswith("https://deploy.example.com/github/app/new?flow=") and made["expires_in"] == 600
    path = made["url"].removeprefix("https://deploy.example.com")
    assert client.get(path.replace("token=", "token=x")).status_code == 404
    monkeypatch.setattr(github_app.time, "time", lambda: 4_000_000_000.0)
    expired = client.get(path)
    assert expired.status_code == 410 and "expired" in expired.text
    monkeypatch.undo()
    page = client.get(path)
    assert page.status_code == 200 and "https://ghe.example.com/organizations/acme/settings/apps/new" in page.text
    assert "form-action https://ghe.example.com" in page.headers["content-security-policy"]
    assert client.get(path).status_code == 409
    assert client.post("/api/v1/github/app", json={"org": "not/an org"}, headers=alice).status_code == 400


def test_the_apps_webhook_is_signed_deduplicated_and_keeps_the_installations(rig):
    platform, client, alice, bob = rig
    assert deliver(client, "ping", {"zen": "hi"}).status_code == 404  # no App yet
    with_app(platform)
    assert deliver(client, "ping", {"zen": "hi"}, secret="wrong").status_code == 401
    assert deliver(client, "ping", {"zen": "hi"}).status_code == 200
    once = str(uuid.uuid4())
    assert deliver(client, "installation", installation("created", ["octo/shop", "octo/blog"]), once).status_code == 200
    assert deliver(client, "installation", installation("deleted", []), once).json()["duplicate"]
    assert platform.store.installations()[0]["repos"] == ["octo/blog", "octo/shop"]
    deliver(client, "installation_repositories", {"action": "removed", "installation": {"id": 7},
                                                   "repositories_added": [{"full_name": "octo/api"}],
                                                   "repositories_removed": [{"full_name": "octo/blog"}]})
    assert platform.store.installations()[0]["repos"] == ["octo/api", "octo/shop"]
    deliver(client, "installation", installation("suspend", []))
    assert platform.store.installation_of_repo("octo/shop")["suspended"] == 1

    # A push to a repo the App cannot reach (suspended) is ignored, and the project says why.
    platform.store.add_project("shop", "alice")
    platform.store.set_github_link({"project": "shop", "repo": "octo/shop", "branch": "main",
                                    "clone_url": "https://ghe.example.com/octo/shop.git", "secret": "", "token": "",
                                    "deploy_key": "", "force_mirror": 0, "installation_id": 7, "created_at": "now"})
    push = {"ref": "refs/heads/main", "after": "a" * 40, "repository": {"full_name": "octo/shop"},
            "installation": {"id": 7}, "pusher": {"name": "octo"}}
    ignored = deliver(client, "push", push).json()["projects"]["shop"]["ignored"]
    assert ignored == "ignored: the GitHub App's installation on octo is suspended"
    seen = client.get("/api/v1/projects/shop/github/deliveries", headers=alice).json()
    assert "installation on octo is suspended" in seen[0]["result"]
    deliver(client, "installation", installation("deleted", []))
    assert "cannot reach octo/shop" in deliver(client, "push", push).json()["projects"]["shop"]["ignored"]
    other_branch = deliver(client, "push", {**push, "ref": "refs/heads/dev"}).json()
    assert "no project is linked" in other_branch["ignored"]
    # An App link has no secret of its own: its project's webhook URL takes nothing.
    body = json.dumps(push).encode()
    unsigned = client.post("/webhooks/github/shop", content=body, headers={
        "X-GitHub-Event": "push", "X-GitHub-Delivery": "d1",
        "X-Hub-Signature-256": "sha256=" + hmac.new(b"", body, hashlib.sha256).hexdigest()})
    assert unsigned.status_code == 404
    assert client.post("/api/v1/projects/shop/github/secret", json={}, headers=alice).status_code == 409


def test_odd_accounts_and_installation_ids_are_answered_not_a_500(rig):
    # Found by tests/test_fuzz.py: a sender or account that is not an object, and an id past
    # what SQLite holds, raised inside the handler.
    platform, client, alice, bob = rig
    with_app(platform)
    revoked = deliver(client, "github_app_authorization", {"action": "revoked", "sender": "octo"})
    assert revoked.status_code == 200 and revoked.json() == {"recorded": "someone revoked their authorization of the App"}
    odd_account = deliver(client, "installation", {"action": "created", "installation": {"id": 8, "account": "octo"}})
    assert odd_account.status_code == 200 and platform.store.installations()[0]["account"] == ""
    for odd_id in (10**30, True, -1):
        huge = deliver(client, "installation", {"action": "created", "installation": {"id": odd_id}})
        assert huge.status_code == 202 and "ignored" in huge.json()
    assert [i["id"] for i in platform.store.installations()] == [8]


def test_a_deployer_sees_only_the_repos_of_their_projects(rig):
    platform, client, alice, bob = rig
    with_app(platform)
    deliver(client, "installation", installation("created", ["octo/shop", "octo/secret-thing"]))
    platform.store.add_project("shop", "alice")
    platform.store.set_github_link({"project": "shop", "repo": "octo/shop", "branch": "main",
                                    "clone_url": "https://ghe.example.com/octo/shop.git", "secret": "", "token": "",
                                    "deploy_key": "", "force_mirror": 0, "installation_id": 7, "created_at": "now"})
    assert client.get("/api/v1/github/app", headers=bob).json()["installations"][0]["repos"] == []
    platform.store.grant("bob", "shop")
    assert client.get("/api/v1/github/app", headers=bob).json()["installations"][0]["repos"] == ["octo/shop"]
    assert client.get("/api/v1/github/app", headers=alice).json()["installations"][0]["repos"] == [
        "octo/secret-thing", "octo/shop"]
    refused = client.post("/api/v1/projects", json={"name": "blog", "github": "octo/blog"}, headers=alice)
    assert refused.status_code == 409 and "install it on that repo at https://ghe.example.com/apps/disco-deploy" \
        in refused.json()["error"]["message"]


def test_one_app_per_server_however_the_flows_interleave(rig):
    platform, client, alice, bob = rig
    path = client.post("/api/v1/github/app", json={}, headers=alice).json()["url"].removeprefix(
        "https://deploy.example.com")
    with_app(platform)  # another flow finished first
    assert client.get(path).status_code == 409
    assert client.post("/api/v1/github/app", json={}, headers=alice).status_code == 409
    from runtime.store import StoreError
    with pytest.raises(StoreError):
        with_app(platform)


def test_a_link_without_a_secret_or_named_app_takes_no_webhook_and_lost_keys_say_so(rig):
    platform, client, alice, bob = rig
    from hooks import github

    platform.store.add_project("app", "alice")
    with pytest.raises(github.Refused, match="cannot take webhooks at /webhooks/github/app"):
        github.link(platform, "alice", "app", "octo/app")
    platform.store.add_project("shop", "alice")
    platform.store.set_github_link({"project": "shop", "repo": "octo/shop", "branch": "main",
                                    "clone_url": "https://github.com/octo/shop.git", "secret": "", "token": "",
                                    "deploy_key": "", "force_mirror": 0, "created_at": "now"})
    body = b'{"ref": "refs/heads/main"}'
    empty = client.post("/webhooks/github/shop", content=body, headers={
        "X-GitHub-Event": "push", "X-GitHub-Delivery": "d",
        "X-Hub-Signature-256": "sha256=" + hmac.new(b"", body, hashlib.sha256).hexdigest()})
    assert empty.status_code == 404
    with_app(platform)
    platform.store.secrets.key_path.unlink()  # a data dir restored without its secrets.key
    platform.store.secrets._fernet = None
    lost = deliver(client, "ping", {"zen": "hi"})
    assert lost.status_code == 503 and "secrets.key is missing" in lost.json()["error"]["message"]
    assert client.get("/api/v1/github/app", headers=alice).status_code == 503


def test_an_app_link_follows_the_installation_that_reaches_its_repo_now(rig):
    platform, client, alice, bob = rig
    from hooks import github

    with_app(platform)
    deliver(client, "installation", installation("created", ["octo/shop"], installation_id=9))  # reinstalled
    row = {"project": "shop", "repo": "octo/shop", "installation_id": 7}  # linked under the old one
    assert github._installation(platform, row) == 9
    deliver(client, "installation", installation("deleted", [], installation_id=9))
    with pytest.raises(github.DeployFailed, match="cannot reach octo/shop"):
        github._installation(platform, row)
    assert github._installation(platform, {**row, "installation_id": 0}) is None  # a webhook link
