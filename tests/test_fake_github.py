"""The fake GitHub is as strict as the real one: manifest codes, App JWTs, scoped and expiring
installation tokens (REST and git), pagination and signed webhook deliveries."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import commit, head, make_repo, run
from fake_github import FakeGitHub

MANIFEST = {
    "name": "Disco on example.com",
    "url": "https://disco.example.com",
    "hook_attributes": {"url": "https://disco.example.com/api/github/webhook"},
    "redirect_url": "https://disco.example.com/github/created",
    "public": False,
    "default_permissions": {"contents": "read"},
    "default_events": ["push"],
}


@pytest.fixture
def fake(tmp_path: Path):
    github = FakeGitHub(tmp_path / "github").start()
    yield github
    github.stop()
    assert not github.errors


@pytest.fixture
def http():
    with httpx.Client(trust_env=False, timeout=10) as client:
        yield client


def post_manifest(http: httpx.Client, fake: FakeGitHub, manifest: dict, state: str = "st4te/+=",
                  org: str | None = None) -> httpx.Response:
    path = f"/organizations/{org}/settings/apps/new" if org else "/settings/apps/new"
    return http.post(fake.url + path, params={"state": state}, data={"manifest": json.dumps(manifest)})


def create_app(http: httpx.Client, fake: FakeGitHub, **changes) -> dict:
    """The manifest flow end to end: the App's conversion answer (id, pem, secrets...)."""
    response = post_manifest(http, fake, {**MANIFEST, **changes})
    assert response.status_code == 302, response.text
    code = parse_qs(urlsplit(response.headers["Location"]).query)["code"][0]
    response = http.post(f"{fake.api_url}/app-manifests/{code}/conversions")
    assert response.status_code == 201, response.text
    return response.json()


def app_jwt(app: dict, *, iat: float | None = None, exp: float | None = None, iss: object = None,
            key: str | None = None, algorithm: str = "RS256", drop: tuple[str, ...] = ()) -> str:
    now = int(time.time())
    claims = {"iat": now - 30 if iat is None else iat, "exp": now + 540 if exp is None else exp,
              "iss": app["id"] if iss is None else iss}
    payload = json.dumps({k: v for k, v in claims.items() if k not in drop}).encode()
    # PyJWS: PyJWT's own encode refuses an integer iss, which GitHub's documented examples send
    signing_key = private_key(key or app["pem"]) if algorithm == "RS256" else key
    return jwt.PyJWS().encode(payload, signing_key, algorithm=algorithm)


@functools.cache
def private_key(pem: str):
    return serialization.load_pem_private_key(pem.encode(), None)  # loading one takes ~30 ms: once


def as_app(app: dict, **kwargs) -> dict[str, str]:
    return {"Authorization": f"Bearer {app_jwt(app, **kwargs)}", "Accept": "application/vnd.github+json"}


def token_for(http: httpx.Client, fake: FakeGitHub, app: dict, installation: int, body: dict | None = None) -> str:
    response = http.post(f"{fake.api_url}/app/installations/{installation}/access_tokens",
                         headers=as_app(app), json=body)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def git(tmp_path: Path, token: str | None, *args: str, cwd: Path | None = None):
    """The real git client, its credentials in the environment (never in argv)."""
    env = {**os.environ, "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
           "GIT_ASKPASS": "", "SSH_ASKPASS": ""}
    if token is not None:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        env |= {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"}
    return run(["git", *args], cwd=cwd, env=env, timeout=30)


def add_repos(fake: FakeGitHub, tmp_path: Path, *full_names: str) -> dict[str, Path]:
    trees = {}
    for full_name in full_names:
        tree = make_repo(tmp_path / "trees" / full_name, {"README": f"{full_name}\n"})
        fake.add_repo(full_name, tree)
        trees[full_name] = tree
    return trees


# -- the manifest flow


def test_manifest_post_redirects_back_with_a_code_and_the_same_state(fake: FakeGitHub, http: httpx.Client):
    response = post_manifest(http, fake, MANIFEST, state="a b/c+d&e=1")
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == MANIFEST["redirect_url"]
    query = parse_qs(location.query)
    assert query["state"] == ["a b/c+d&e=1"] and len(query["code"][0]) >= 20
    [app] = fake.apps.values()
    assert (app.id, app.slug, app.owner, app.public) == (1000, "disco-on-example-com", "octocat", False)
    assert app.client_id.startswith("Iv1.") and len(app.client_id) == 20 and len(app.client_secret) == 40
    assert app.hook_url == MANIFEST["hook_attributes"]["url"]
    assert app.permissions == {"metadata": "read", "contents": "read"} and app.events == ["push"]
    assert "BEGIN RSA PRIVATE KEY" in app.pem and app.pem not in repr(app)  # secrets stay out of reprs

    org = post_manifest(http, fake, {**MANIFEST, "name": "Disco for ACME"}, org="acme")
    assert org.status_code == 302
    assert fake.apps[1001].owner == "acme" and fake.apps[1001].owner_type == "Organization"


@pytest.mark.parametrize("change, message", [
    ({"url": None}, "url"),
    ({"hook_attributes": {"active": True}}, "Hook URL"),
    ({"redirect_url": None}, "redirect_url"),
    ({"name": "x" * 35}, "too long"),
    ({"default_events": ["push"], "default_permissions": {}}, "push"),
    ({"default_permissions": {"contents": "everything"}}, "default_permissions"),
])
def test_a_bad_manifest_is_refused(fake: FakeGitHub, http: httpx.Client, change: dict, message: str):
    manifest = {k: v for k, v in {**MANIFEST, **change}.items() if v is not None}
    response = post_manifest(http, fake, manifest)
    assert response.status_code == 422 and message in response.json()["message"]
    assert not fake.apps
    # an inactive webhook needs no URL; 34 characters is the limit
    ok = post_manifest(http, fake, {**MANIFEST, "name": "y" * 34, "hook_attributes": {"active": False}})
    assert ok.status_code == 302


def test_a_code_converts_once_then_404(fake: FakeGitHub, http: httpx.Client):
    response = post_manifest(http, fake, MANIFEST)
    code = parse_qs(urlsplit(response.headers["Location"]).query)["code"][0]
    first = http.post(f"{fake.api_url}/app-manifests/{code}/conversions")
    assert first.status_code == 201
    app = first.json()
    assert {"id", "slug", "node_id", "owner", "name", "description", "external_url", "html_url", "created_at",
            "updated_at", "permissions", "events", "client_id", "client_secret", "webhook_secret", "pem"} <= set(app)
    assert app["html_url"] == f"{fake.url}/apps/disco-on-example-com"
    assert app["owner"]["login"] == "octocat" and app["owner"]["type"] == "User"
    assert app["webhook_secret"] == fake.apps[app["id"]].webhook_secret
    serialization.load_pem_private_key(app["pem"].encode(), None)
    for again in (code, "0" * 40):
        response = http.post(f"{fake.api_url}/app-manifests/{again}/conversions")
        assert response.status_code == 404 and response.json()["message"] == "Not Found"


def test_a_code_older_than_an_hour_is_404(fake: FakeGitHub, http: httpx.Client, monkeypatch):
    code = parse_qs(urlsplit(post_manifest(http, fake, MANIFEST).headers["Location"]).query)["code"][0]
    monkeypatch.setattr(fake, "clock", lambda: time.time() + 3601)
    assert http.post(f"{fake.api_url}/app-manifests/{code}/conversions").status_code == 404


# -- the App's JWT


def test_a_good_jwt_works_and_a_bad_one_is_401(fake: FakeGitHub, http: httpx.Client, tmp_path: Path):
    app = create_app(http, fake)
    other = create_app(http, fake, name="Another one")
    now = int(time.time())
    good = http.get(f"{fake.api_url}/app", headers=as_app(app))
    assert good.status_code == 200 and good.json()["id"] == app["id"] and "pem" not in good.json()
    for iss in (str(app["id"]), app["client_id"]):
        assert http.get(f"{fake.api_url}/app", headers=as_app(app, iss=iss)).status_code == 200
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    bad = {
        "wrong key": as_app(app, key=stranger),
        "HS256": as_app(app, key=app["client_secret"], algorithm="HS256"),
        "missing exp": as_app(app, drop=("exp",)),
        "missing iat": as_app(app, drop=("iat",)),
        "exp - iat > 600": as_app(app, iat=now - 60, exp=now + 541),
        "exp too far": as_app(app, iat=now, exp=now + 900),
        "expired": as_app(app, iat=now - 700, exp=now - 100),
        "iat in the future": as_app(app, iat=now + 120, exp=now + 500),
        "wrong iss": as_app(app, iss=other["id"]),
        "unknown iss": as_app(app, iss=4242),
        "not a JWT": {"Authorization": "Bearer ghs_" + "a" * 36},
        "no credentials": {},
    }
    for case, headers in bad.items():
        response = http.get(f"{fake.api_url}/app", headers=headers)
        assert response.status_code == 401, case
        assert response.json()["message"], case
    messages = {case: http.get(f"{fake.api_url}/app", headers=bad[case]).json()["message"]
                for case in ("wrong key", "HS256", "exp - iat > 600", "expired")}
    assert messages["wrong key"] == messages["HS256"] == "A JSON web token could not be decoded"
    assert messages["exp - iat > 600"] == "'Expiration time' claim ('exp') is too far in the future"
    assert messages["expired"].startswith("'Expiration time' claim ('exp') must be a numeric value")


# -- installation tokens


def test_access_tokens_are_scoped_and_refused_beyond_the_installation(fake: FakeGitHub, http: httpx.Client,
                                                                        tmp_path: Path):
    app = create_app(http, fake)
    add_repos(fake, tmp_path, "octocat/a", "octocat/b", "octocat/c")
    installation = fake.install(app["id"], "octocat", ["octocat/a", "octocat/b"])
    listed = http.get(f"{fake.api_url}/app/installations", headers=as_app(app)).json()
    assert [(i["id"], i["account"]["login"], i["app_id"], i["repository_selection"]) for i in listed] == \
        [(installation, "octocat", app["id"], "selected")]
    tokens = f"{fake.api_url}/app/installations/{installation}/access_tokens"

    scoped = http.post(tokens, headers=as_app(app), json={"repositories": ["a"], "permissions": {"contents": "read"}})
    assert scoped.status_code == 201
    body = scoped.json()
    assert body["token"].startswith("ghs_") and len(body["token"]) == 40 and body["expires_at"].endswith("Z")
    assert body["permissions"] == {"contents": "read"}  # what was asked, no more
    assert [r["full_name"] for r in body["repositories"]] == ["octocat/a"]
    assert fake.issued_tokens[-1].repositories == ["a"]
    assert body["token"] not in repr(fake.issued_tokens)

    for refused in ({"repositories": ["c"]}, {"repositories": ["nope"]}, {"repository_ids": [12345]},
                    {"permissions": {"contents": "write"}}, {"permissions": {"issues": "read"}}):
        response = http.post(tokens, headers=as_app(app), json=refused)
        assert response.status_code == 422, refused
    other = create_app(http, fake, name="Not this one")
    assert http.post(tokens, headers=as_app(other)).status_code == 404
    assert http.post(f"{fake.api_url}/app/installations/99/access_tokens", headers=as_app(app)).status_code == 404
    fake.suspend(installation)
    assert http.post(tokens, headers=as_app(app)).status_code == 403
    fake.unsuspend(installation)
    assert http.post(tokens, headers=as_app(app)).status_code == 201
    fake.uninstall(installation)
    assert http.post(tokens, headers=as_app(app)).status_code == 404


def test_git_reads_only_what_the_token_may_see(fake: FakeGitHub, http: httpx.Client, tmp_path: Path):
    app = create_app(http, fake)
    trees = add_repos(fake, tmp_path, "octocat/a", "octocat/b")
    installation = fake.install(app["id"], "octocat", ["octocat/a", "octocat/b"])
    token = token_for(http, fake, app, installation, {"repositories": ["a"]})
    url_a, url_b = f"{fake.url}/octocat/a.git", f"{fake.url}/octocat/b.git"

    listing = git(tmp_path, token, "ls-remote", url_a)
    assert listing.returncode == 0, listing.stderr
    assert f"{head(trees['octocat/a'])}\trefs/heads/main" in listing.stdout
    clone = git(tmp_path, token, "clone", "-q", url_a, str(tmp_path / "clone"))
    assert clone.returncode == 0, clone.stderr
    assert (tmp_path / "clone" / "README").read_text() == "octocat/a\n"
    assert token not in clone.stderr + listing.stderr

    refused_b = git(tmp_path, token, "ls-remote", url_b)
    assert refused_b.returncode != 0 and "not found" in refused_b.stderr.lower()
    anonymous = git(tmp_path, None, "ls-remote", url_a)
    assert anonymous.returncode != 0
    assert http.get(f"{url_a}/info/refs", params={"service": "git-upload-pack"}).headers["WWW-Authenticate"] \
        == 'Basic realm="GitHub"'
    commit(tmp_path / "clone", {"new": "x"}, "try to push")
    pushed = git(tmp_path, token, "push", "-q", "origin", "HEAD:main", cwd=tmp_path / "clone")
    assert pushed.returncode != 0 and "403" in pushed.stderr
    assert fake.issued_tokens[-1].used_for == ["a"]

    fake.expire_tokens()
    expired = git(tmp_path, token, "ls-remote", url_a)
    assert expired.returncode != 0
    repos = http.get(f"{fake.api_url}/installation/repositories", headers={"Authorization": f"token {token}"})
    assert repos.status_code == 401 and repos.json()["message"] == "Bad credentials"

    # a token for the whole installation sees a repository added later, and loses a removed one
    whole = token_for(http, fake, app, installation)
    add_repos(fake, tmp_path, "octocat/c")
    fake.add_repos(installation, ["octocat/c"])
    assert git(tmp_path, whole, "ls-remote", f"{fake.url}/octocat/c.git").returncode == 0
    fake.remove_repos(installation, ["octocat/b"])
    assert git(tmp_path, whole, "ls-remote", url_b).returncode != 0


def test_installation_repositories_paginate_with_link_headers(fake: FakeGitHub, http: httpx.Client,
                                                              tmp_path: Path):
    app = create_app(http, fake)
    names = [f"octocat/r{i}" for i in range(5)]
    add_repos(fake, tmp_path, *names)
    installation = fake.install(app["id"], "octocat", names)
    auth = {"Authorization": f"Bearer {token_for(http, fake, app, installation)}"}
    url: str | None = f"{fake.api_url}/installation/repositories?per_page=2"
    seen, pages = [], []
    while url:
        response = http.get(url, headers=auth)
        assert response.status_code == 200
        body = response.json()
        assert body["total_count"] == 5 and body["repository_selection"] == "selected"
        seen += [r["full_name"] for r in body["repositories"]]
        pages.append(response.links)
        url = response.links.get("next", {}).get("url")
    assert seen == names and len(pages) == 3
    assert set(pages[0]) == {"next", "last"} and set(pages[1]) == {"prev", "next", "last", "first"}
    assert set(pages[2]) == {"prev", "first"}
    assert pages[0]["last"]["url"] == f"{fake.api_url}/installation/repositories?per_page=2&page=3"
    repo = body["repositories"][0]
    assert repo["private"] is True and repo["clone_url"] == f"{fake.url}/octocat/r4.git"
    assert repo["owner"]["login"] == "octocat" and repo["default_branch"] == "main"
    # the default page is 30, and per_page is capped
    assert len(http.get(f"{fake.api_url}/installation/repositories", headers=auth).json()["repositories"]) == 5
    fake.per_page_max = 3
    capped = http.get(f"{fake.api_url}/installation/repositories?per_page=100", headers=auth)
    assert len(capped.json()["repositories"]) == 3 and "next" in capped.links


# -- webhooks


class Receiver:
    """A webhook receiver: every request's headers and raw body."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body, self.path))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def test_deliveries_are_signed_with_the_webhook_secret(fake: FakeGitHub, http: httpx.Client, tmp_path: Path,
                                                       receiver: Receiver):
    app = create_app(http, fake)
    secret = app["webhook_secret"].encode()
    fake.deliver_to = receiver.url  # the hook URL's path is kept
    trees = add_repos(fake, tmp_path, "octocat/a")
    installation = fake.install(app["id"], "octocat", ["octocat/a"])
    before = head(trees["octocat/a"])
    after = commit(trees["octocat/a"], {"app.py": "print(1)\n"}, "second")
    assert fake.push("octocat/a", "main", trees["octocat/a"]).status_code == 202

    assert [(event, status) for _, event, status in fake.deliveries] == [("installation", 202), ("push", 202)]
    for (headers, body, path), (delivery, event, _) in zip(receiver.received, fake.deliveries, strict=True):
        assert path == "/api/github/webhook"
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Hub-Signature-256"], expected)
        assert headers["X-GitHub-Event"] == event and headers["X-GitHub-Delivery"] == delivery
        assert headers["X-GitHub-Hook-Installation-Target-Type"] == "integration"
        assert headers["X-GitHub-Hook-Installation-Target-ID"] == str(app["id"])
        assert headers["User-Agent"].startswith("GitHub-Hookshot/")
        assert headers["Content-Type"] == "application/json"
    created = json.loads(receiver.received[0][1])
    assert created["action"] == "created" and created["installation"]["id"] == installation
    assert created["installation"]["app_id"] == app["id"] and created["installation"]["account"]["login"] == "octocat"
    assert [r["full_name"] for r in created["repositories"]] == ["octocat/a"]
    push = json.loads(receiver.received[1][1])
    assert (push["ref"], push["before"], push["after"], push["created"], push["forced"]) == \
        ("refs/heads/main", before, after, False, False)
    assert [c["id"] for c in push["commits"]] == [after] and push["commits"][0]["added"] == ["app.py"]
    assert push["head_commit"]["message"] == "second" and push["installation"]["id"] == installation
    assert push["repository"]["private"] is True and push["repository"]["clone_url"] == f"{fake.url}/octocat/a.git"

    forged = fake.deliver(app["id"], "push", push, delivery="replayed", signature="sha256=" + "0" * 64)
    assert forged.status_code == 202
    assert receiver.received[-1][0]["X-Hub-Signature-256"] == "sha256=" + "0" * 64
    assert fake.deliveries[-1] == ("replayed", "push", 202)
