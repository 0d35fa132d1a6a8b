"""GitHub push webhooks: verification and replies (ASGI, real store), then mirroring and
deploying end to end with a local git HTTP server playing GitHub, and a second disco daemon
playing GitHub's SSH side for the deploy-key path."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socketserver
import threading
import time
import uuid
from pathlib import Path
from wsgiref.simple_server import WSGIServer, make_server

import httpx
import pytest
from dulwich.repo import Repo
from dulwich.errors import NotGitRepository
from dulwich.server import Backend
from dulwich.web import WSGIRequestHandlerLogger, make_wsgi_chain
from starlette.testclient import TestClient

from api.app import build_app
from api.endpoints import ENDPOINTS
from apps import new_version, web_app
from conftest import Disco, Key, api_platform, head, require_docker, run
from hooks import github
from runtime.settings import Settings

SHA_A = "a" * 40


def push_payload(ref: str = "refs/heads/main", after: str = SHA_A, before: str = "0" * 40, deleted: bool = False,
                 repo: str = "octo/shop", clone_url: str = "https://github.com/octo/shop.git") -> dict:
    """Shaped like GitHub's documented push event payload (the fields that matter, and some that don't)."""
    return {
        "ref": ref, "before": before, "after": after, "created": before == "0" * 40, "deleted": deleted,
        "forced": False, "base_ref": None, "compare": f"https://github.com/{repo}/compare/{before[:12]}...{after[:12]}",
        "commits": [] if deleted else [{"id": after, "message": "change", "author": {"name": "Octo Cat"}}],
        "head_commit": None if deleted else {"id": after, "message": "change"},
        "repository": {"id": 1296269, "name": repo.split("/")[1], "full_name": repo, "private": False,
                       "clone_url": clone_url, "ssh_url": f"git@github.com:{repo}.git", "default_branch": "main"},
        "pusher": {"name": "octocat", "email": "octocat@github.com"},
        "sender": {"login": "octocat", "id": 1},
    }


def deliver(client, url: str, secret: str | None, event: str, payload: dict | bytes,  # type: ignore[no-untyped-def]
            delivery: str | None = None, signature: str | None = None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/044aadd",
        "X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "292430182", "X-GitHub-Hook-Installation-Target-Type": "repository",
    }
    if secret is not None:
        headers["X-Hub-Signature-256"] = signature or "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers["X-Hub-Signature"] = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    return client.post(url, content=body, headers=headers)


# -- verification and replies, through the ASGI app ------------------------------------------------

@pytest.fixture
def linked(tmp_path: Path):
    platform = api_platform(Settings(data_dir=tmp_path / "data", instance="hooktest", host="deploy.example.com"))
    platform.store.add_project("shop", "alice")
    platform.store.add_project("other", "alice")
    form = github.link(platform, "alice", "shop", "octo/shop")
    return platform, TestClient(build_app(platform, ENDPOINTS.endpoints)), form["secret"], form


def test_link_prints_the_webhook_form(linked):
    platform, client, secret, form = linked
    assert form["payload_url"] == "https://deploy.example.com/webhooks/github/shop"
    assert form["content_type"] == "application/json" and form["events"] == "Just the push event"
    assert len(secret) == 64 and secret not in json.dumps(platform.store.audit_log())


def test_signatures_are_checked_before_anything_else(linked):
    platform, client, secret, _ = linked
    url = "/webhooks/github/shop"
    assert deliver(client, url, None, "push", push_payload()).status_code == 401
    assert deliver(client, url, "wrong-secret", "push", push_payload()).status_code == 401
    tampered = deliver(client, url, secret, "push", push_payload(),
                       signature="sha256=" + hmac.new(secret.encode(), b"other", hashlib.sha256).hexdigest())
    assert tampered.status_code == 401
    # A bad signature on a malformed body is still a 401: the body is not even parsed.
    assert deliver(client, url, "wrong", "push", b"{not json").status_code == 401
    assert deliver(client, "/webhooks/github/nope", secret, "push", push_payload()).status_code == 404
    assert deliver(client, "/webhooks/github/other", secret, "push", push_payload()).status_code == 404
    assert platform.store.deliveries("shop") == []


def test_events_branches_tags_deletions_and_replays(linked):
    platform, client, secret, _ = linked
    url = "/webhooks/github/shop"
    ping = deliver(client, url, secret, "ping", {"zen": "Keep it logically awesome.", "hook_id": 1})
    assert ping.status_code == 200 and "pong" in ping.json()["message"]
    issues = deliver(client, url, secret, "issues", {"action": "opened"})
    assert issues.status_code == 202 and "ignored" in issues.json()
    other = deliver(client, url, secret, "push", push_payload(ref="refs/heads/feature"))
    assert other.status_code == 202 and "not the linked branch main" in other.json()["ignored"]
    tag = deliver(client, url, secret, "push", push_payload(ref="refs/tags/v1"))
    assert tag.status_code == 202 and "is not a branch" in tag.json()["ignored"]
    deleted = deliver(client, url, secret, "push", push_payload(after="0" * 40, deleted=True))
    assert deleted.status_code == 202 and "deleted" in deleted.json()["ignored"]
    delivery = str(uuid.uuid4())
    first = deliver(client, url, secret, "push", push_payload(ref="refs/heads/x"), delivery=delivery)
    replay = deliver(client, url, secret, "push", push_payload(ref="refs/heads/x"), delivery=delivery)
    assert first.status_code == 202 and replay.status_code == 200 and "duplicate" in replay.json()
    assert len(platform.store.deliveries("shop")) == 6
    assert platform.store.list_deployments("shop") == []


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (json.dumps({"after": SHA_A}).encode(), "ref must be a string"),
    (json.dumps({"ref": "refs/heads/main", "after": "xyz"}).encode(), "after must be a 40-character commit id"),
    (json.dumps({"ref": "refs/heads/main", "after": SHA_A, "deleted": "no"}).encode(), "deleted must be true or false"),
    (json.dumps({"ref": 5, "after": SHA_A}).encode(), "ref must be a string"),
    # A lone surrogate would reach the store as the deployment's user (found by tests/test_fuzz.py).
    (json.dumps({"ref": "refs/heads/main", "after": SHA_A, "pusher": {"name": "\ud800"}}).encode(), "surrogate"),
])
def test_malformed_bodies_get_400_naming_the_problem(linked, body: bytes, message: str):
    platform, client, secret, _ = linked
    response = deliver(client, "/webhooks/github/shop", secret, "push", body)
    assert response.status_code == 400 and message in response.json()["error"]["message"]


def test_oversize_body_is_refused(linked):
    platform, client, secret, _ = linked
    response = deliver(client, "/webhooks/github/shop", secret, "push", b"x" * (github.MAX_BODY + 1))
    assert response.status_code == 413


def test_rotating_the_secret_retires_the_old_one(linked):
    platform, client, secret, _ = linked
    new = github.rotate_secret(platform, "alice", "shop")["secret"]
    assert new != secret
    assert deliver(client, "/webhooks/github/shop", secret, "ping", {}).status_code == 401
    assert deliver(client, "/webhooks/github/shop", new, "ping", {}).status_code == 200


# -- end to end: a local git server plays GitHub ---------------------------------------------------

class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class FreshRepoBackend(Backend):
    """A Repo opened per request: the test pushes to the bare repo while a fetch is served."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def open_repository(self, path: str | bytes) -> Repo:
        name = path.decode() if isinstance(path, bytes) else path
        if name.rstrip("/") != "/octo/shop.git":
            raise NotGitRepository(name)
        return Repo(str(self.path))


class FakeGitHub:
    """Smart-HTTP git over a bare repo, optionally demanding a token like GitHub does."""

    def __init__(self, root: Path, token: str = "") -> None:
        self.bare = root / "shop.git"
        root.mkdir(parents=True, exist_ok=True)
        Repo.init_bare(str(self.bare), mkdir=True, default_branch=b"main").close()
        self.token = token
        git_app = make_wsgi_chain(FreshRepoBackend(self.bare))

        def app(environ, start_response):  # type: ignore[no-untyped-def]
            if self.token:
                expected = "Basic " + base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
                if environ.get("HTTP_AUTHORIZATION") != expected:
                    start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="GitHub"')])
                    return [b"auth needed"]
            return git_app(environ, start_response)

        self.server = make_server("127.0.0.1", 0, app, server_class=_ThreadingWSGIServer,
                                  handler_class=WSGIRequestHandlerLogger)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def clone_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/octo/shop.git"

    def push(self, repo: Path, branch: str = "main") -> str:
        # GitHub, like git's own smart-HTTP server, serves any commit reachable from a ref, so a
        # fetch still succeeds when the branch moves between its two requests. dulwich serves only
        # current ref tips; keeping every pushed tip under a ref of its own gives the same result.
        sha = head(repo)
        run(["git", "push", "-q", "--force", str(self.bare), f"HEAD:refs/heads/{branch}", f"HEAD:refs/seen/{sha}"],
            cwd=repo, check=True)
        return sha

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()  # the port refuses connections from now on


@pytest.fixture
def hub(tmp_path: Path):
    fake = FakeGitHub(tmp_path / "github")
    yield fake
    fake.close()


def api(disco: Disco, method: str, path: str, body: dict | None = None) -> httpx.Response:
    return httpx.request(method, f"http://127.0.0.1:{disco.api_port}/api/v1{path}", json=body,
                         headers={"Authorization": f"Bearer {disco.api_key}"}, timeout=30)


def webhook(disco: Disco, secret: str, event: str, payload: dict, delivery: str | None = None) -> httpx.Response:
    with httpx.Client(base_url=f"http://127.0.0.1:{disco.api_port}", timeout=30) as client:
        return deliver(client, "/webhooks/github/shop", secret, event, payload, delivery)


def wait_deployment(disco: Disco, number: int, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = api(disco, "GET", f"/projects/shop/deployments/{number}").json()
        if found["status"] not in ("queued", "building", "starting"):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.3)


@pytest.fixture
def served(disco: Disco, admin_key: Key):
    require_docker()
    disco.start()
    assert api(disco, "POST", "/projects", {"name": "shop"}).status_code == 201
    return disco


def link(disco: Disco, **body) -> str:  # type: ignore[no-untyped-def]
    response = api(disco, "POST", "/projects/shop/github", {"repo": "octo/shop", **body})
    assert response.status_code == 201, response.text
    return response.json()["secret"]


def test_a_github_push_mirrors_and_deploys(served: Disco, hub: FakeGitHub, tmp_path: Path):
    secret = link(served, clone_url=hub.clone_url)
    repo = web_app(tmp_path / "app", "from-github-1\n")
    sha = hub.push(repo)
    started = time.monotonic()
    reply = webhook(served, secret, "push", push_payload(after=sha, clone_url=hub.clone_url))
    assert time.monotonic() - started < 8, "GitHub wants an answer within 10 s; fetch and build come after"
    assert reply.status_code == 202 and reply.json()["deployment"] == 1
    assert api(served, "GET", "/projects/shop/deployments/1").json()["status"] in ("queued", "building")
    final = wait_deployment(served, 1)
    assert final["status"] == "live", final["reason"]
    assert final["user"] == "github:octocat" and final["commit"] == sha and final["source"] == "webhook"
    assert final["delivery"] == api(served, "GET", "/projects/shop/github/deliveries").json()[0]["delivery"]
    assert "fetch" in final["timings"]
    assert served.get("shop.localhost").text == "from-github-1\n"

    # The same commit again: nothing to rebuild.
    again = webhook(served, secret, "push", push_payload(after=sha))
    assert again.status_code == 200 and "already live" in again.json()["ignored"]
    assert len(api(served, "GET", "/projects/shop/deployments").json()) == 1

    # A push over SSH that GitHub does not have: the next webhook is not a fast-forward of it.
    new_version(repo, "over-ssh\n")
    ssh_push = served.git(served_key(served), "push", served.url("shop"), "HEAD:main", cwd=repo, timeout=300)
    assert ssh_push.returncode == 0, ssh_push.stderr
    other = web_app(tmp_path / "other", "from-github-2\n")
    diverged = hub.push(other)
    reply = webhook(served, secret, "push", push_payload(after=diverged))
    final = wait_deployment(served, reply.json()["deployment"])
    assert final["status"] == "failed" and "does not contain" in final["reason"] and "--force-mirror" in final["reason"]
    assert served.get("shop.localhost").text == "over-ssh\n"

    # With --force-mirror GitHub is authoritative.
    secret = link(served, clone_url=hub.clone_url, force_mirror=True)
    reply = webhook(served, secret, "push", push_payload(after=diverged))
    assert wait_deployment(served, reply.json()["deployment"])["status"] == "live"
    assert served.get("shop.localhost").text == "from-github-2\n"


def served_key(disco: Disco) -> Key:
    return Key(disco.workdir / "keys" / "alice")


def test_unreachable_clone_url_fails_and_the_app_keeps_serving(served: Disco, hub: FakeGitHub, tmp_path: Path):
    secret = link(served, clone_url=hub.clone_url)
    repo = web_app(tmp_path / "app", "v1\n")
    reply = webhook(served, secret, "push", push_payload(after=hub.push(repo)))
    assert wait_deployment(served, reply.json()["deployment"])["status"] == "live"
    hub.close()
    new_version(repo, "v2\n")
    run(["git", "push", "-q", str(hub.bare), "HEAD:refs/heads/main"], cwd=repo, check=True)
    reply = webhook(served, secret, "push", push_payload(after=head(repo)))
    final = wait_deployment(served, reply.json()["deployment"])
    assert final["status"] == "failed" and f"fetch from {hub.clone_url} failed" in final["reason"]
    assert served.get("shop.localhost").text == "v1\n"


def test_private_repo_with_a_token(served: Disco, tmp_path: Path):
    hub = FakeGitHub(tmp_path / "github", token="github_pat_s3cr3t")
    try:
        repo = web_app(tmp_path / "app", "private\n")
        sha = hub.push(repo)
        secret = link(served, clone_url=hub.clone_url, token="wrong-token")
        reply = webhook(served, secret, "push", push_payload(after=sha))
        failed = wait_deployment(served, reply.json()["deployment"])
        assert failed["status"] == "failed" and "fetch" in failed["reason"]
        assert "wrong-token" not in failed["reason"]
        secret = link(served, clone_url=hub.clone_url, token="github_pat_s3cr3t")
        assert "token" not in api(served, "GET", "/projects/shop/github").text.replace("token_set", "")
        reply = webhook(served, secret, "push", push_payload(after=sha))
        assert wait_deployment(served, reply.json()["deployment"])["status"] == "live"
        assert served.get("shop.localhost").text == "private\n"
        log = Path(api(served, "GET", "/projects/shop/deployments/2").json()["timings"] and
                   served.data_dir / "deployments" / "shop" / "2.log").read_text()
        assert "github_pat_s3cr3t" not in log
    finally:
        hub.close()


def test_private_repo_over_ssh_with_a_deploy_key(served: Disco, make_key, tmp_path: Path):
    # A second daemon plays GitHub's SSH side; the deploy key is registered there.
    upstream = Disco(data_dir=tmp_path / "upstream", workdir=tmp_path / "upstream-work")
    upstream.workdir.mkdir()
    owner = make_key("owner")
    assert upstream.cli("init", "--admin", "owner", "--key", str(owner.public)).returncode == 0
    upstream.start()
    try:
        repo = web_app(tmp_path / "app", "via-deploy-key\n")
        assert upstream.git(owner, "push", upstream.url("shop"), "HEAD:refs/heads/release", cwd=repo).returncode == 0
        secret = link(served, clone_url=f"ssh://git@127.0.0.1:{upstream.ssh_port}/shop", branch="release")
        public = api(served, "POST", "/projects/shop/github/deploy-key").json()["public_key"]
        assert public.startswith("ssh-ed25519 ")
        assert upstream.cli("users:add", "deploykey", "--role", "deployer").returncode == 0
        assert upstream.cli("keys:add", "deploykey", "-", input=public).returncode == 0
        assert upstream.cli("users:grant", "deploykey", "shop").returncode == 0
        reply = webhook(served, secret, "push", push_payload(ref="refs/heads/release", after=head(repo)))
        final = wait_deployment(served, reply.json()["deployment"])
        assert final["status"] == "live", final["reason"]
        assert served.get("shop.localhost").text == "via-deploy-key\n"
    finally:
        upstream.stop()
        upstream.remove_docker_objects()


def test_a_burst_of_pushes_builds_only_the_newest(served: Disco, hub: FakeGitHub, tmp_path: Path):
    secret = link(served, clone_url=hub.clone_url)
    repo = web_app(tmp_path / "app", "burst-0\n")
    numbers = []
    for index in range(5):
        if index:
            new_version(repo, f"burst-{index}\n")
        reply = webhook(served, secret, "push", push_payload(after=hub.push(repo)))
        assert reply.status_code == 202
        numbers.append(reply.json()["deployment"])
    finals = [wait_deployment(served, n) for n in numbers]
    statuses = [f["status"] for f in finals]
    assert statuses[-1] == "live" and statuses[0] in ("live", "replaced")
    assert statuses[1:4].count("superseded") >= 2, statuses
    superseded = [f for f in finals if f["status"] == "superseded"]
    assert all("fetch" not in f["timings"] and "build" not in f["timings"] for f in superseded)
    assert served.get("shop.localhost").text == "burst-4\n"
