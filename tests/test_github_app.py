"""The GitHub App that lives on the server, end to end: a real daemon (Docker, swarm, Caddy) and
a strict fake GitHub (tests/fake_github.py: manifest flow, App JWTs checked against the App's
key, installation tokens scoped to repos and expiring, Link pagination, smart-HTTP git that
serves a private repo only to a token scoped to it, signed deliveries).

The browser of the admin who creates the App is an httpx client with a cookie jar: it opens the
daemon's one-time link, posts the manifest form to the fake GitHub as the page would, and
follows GitHub's redirect back to the daemon.
"""

from __future__ import annotations

import base64
import html
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from fake_github import FakeGitHub

from apps import new_version, web_app
from conftest import Disco, laptop_cli, require_docker, run, shared_disco

SERVER = "http://disco.test"  # the daemon's --host, as its links name it; requests go to its API port


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory):
    require_docker()
    folder = tmp_path_factory.mktemp("github-app")
    github = FakeGitHub(folder / "github", per_page_max=2).start()
    github.user = "octo"  # the person who creates the App, and owns the repos it is installed on
    (folder / "daemon").mkdir()
    try:
        for disco, alice in shared_disco(folder / "daemon", ["--github-url", github.url,
                                                             "--github-api-url", github.api_url]):
            github.deliver_to = f"http://127.0.0.1:{disco.api_port}"
            yield disco, alice, github, folder
        assert github.errors == []  # the fake's own 500s: a request it could not handle
    finally:
        github.stop()


def local(disco: Disco, url: str) -> str:
    """A link the daemon made for its public name, sent to its API port instead."""
    assert url.startswith(SERVER), url
    return f"http://127.0.0.1:{disco.api_port}{url[len(SERVER):]}"


def form_of(page: str) -> tuple[str, str]:
    action = re.search(r'<form method="post" action="([^"]+)"', page)
    manifest = re.search(r'name="manifest" value="([^"]+)"', page)
    assert action and manifest, page
    return html.unescape(action.group(1)), html.unescape(manifest.group(1))


def create_app(disco: Disco, github: FakeGitHub, browser: httpx.Client) -> httpx.Response:
    """The admin's whole click-through; returns the daemon's answer to GitHub's redirect."""
    link = disco.api("POST", "/github/app", {}).json()["url"]
    page = browser.get(local(disco, link))
    assert page.status_code == 200, page.text
    action, manifest = form_of(page.text)
    created = browser.post(action, data={"manifest": manifest})  # the person clicks "Create GitHub App"
    assert created.status_code == 302, created.text
    return browser.get(local(disco, created.headers["location"]))


def deployments(disco: Disco, project: str) -> list[dict]:
    return disco.api("GET", f"/projects/{project}/deployments").json()


def git_with_token(token: str, url: str):
    header = "Authorization: Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
           "GIT_CONFIG_VALUE_0": header}
    return run(["git", "ls-remote", url], env=env)


class CommandLines:
    """Every process's command line, sampled while something runs (a token must never be there)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    self.seen.add(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    pass
            time.sleep(0.02)

    def __enter__(self) -> CommandLines:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_the_manifest_flow_refuses_what_it_must_with_a_clear_page(rig):
    disco, _, github, _ = rig
    link = disco.api("POST", "/github/app", {}).json()["url"]
    browser, stranger = httpx.Client(timeout=30), httpx.Client(timeout=30)
    page = browser.get(local(disco, link))
    assert page.status_code == 200
    assert "script-src 'sha256-" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"
    assert "HttpOnly" in page.headers["set-cookie"] and "SameSite=Lax" in page.headers["set-cookie"]
    # The link works once.
    again = stranger.get(local(disco, link))
    assert again.status_code == 409 and "used already" in again.text
    action, manifest = form_of(page.text)
    assert action.startswith(f"{github.url}/settings/apps/new?state=")
    created = httpx.post(action, data={"manifest": manifest}, timeout=30)
    callback = local(disco, created.headers["location"])
    # Someone else holding GitHub's redirect cannot attach the App: the state is bound to the browser.
    refused = stranger.get(callback)
    assert refused.status_code == 403 and "did not start this App creation" in refused.text
    assert disco.api("GET", "/github/app").json()["app"] is None
    unknown = browser.get(local(disco, f"{SERVER}/github/app/created?code=x&state=nope.nope"))
    assert unknown.status_code == 400 and "state this server did not make" in unknown.text
    # The browser that started it may still finish it (this App is then removed again).
    assert browser.get(callback).status_code == 303
    replay = browser.get(callback)
    assert replay.status_code == 409 and "finished already" in replay.text
    assert disco.api("DELETE", "/github/app").status_code == 200


def test_create_install_push_deploy_renew_and_uninstall(rig, tmp_path: Path):
    disco, alice, github, folder = rig
    work = web_app(tmp_path / "shop", "v1 from github\n")
    github.add_repo("octo/shop", work)
    for name in ("octo/other", "octo/third", "octo/fourth", "octo/fifth"):
        github.add_repo(name, web_app(tmp_path / name.split("/")[1], f"{name}\n"))

    browser = httpx.Client(timeout=30)
    done = create_app(disco, github, browser)
    assert done.status_code == 303
    app = next(a for a in github.apps.values() if done.headers["location"] == f"{github.url}/apps/{a.slug}/"
               "installations/new")
    # What the manifest asked GitHub for.
    assert app.manifest["hook_attributes"]["url"] == f"{SERVER}/webhooks/github/app"
    assert app.manifest["redirect_url"] == f"{SERVER}/github/app/created"
    assert app.manifest["default_permissions"] == {"contents": "read", "metadata": "read"}
    assert app.manifest["default_events"] == ["push"] and app.manifest["public"] is False
    assert disco.api("POST", "/github/app", {}).status_code == 409  # one App per server

    installation = github.install(app.id, "octo", ["octo/shop", "octo/other", "octo/third", "octo/fourth",
                                                   "octo/fifth"])
    shown = disco.api("GET", "/github/app").json()
    assert shown["app"]["slug"] == app.slug and shown["installations"][0]["id"] == installation
    assert "octo/shop" in shown["installations"][0]["repos"]
    # GitHub's pagination followed to the end (the fake pages by 2).
    repos = disco.api("GET", "/github/repos").json()
    assert sorted(r["repo"] for r in repos) == ["octo/fifth", "octo/fourth", "octo/other", "octo/shop", "octo/third"]

    # The same through the CLI, as a team member on a laptop reads it.
    cli = laptop_cli(disco, folder / "laptop")
    state = cli("github:app")
    assert state.returncode == 0 and f"({app.slug}, id {app.id})" in state.stdout
    assert "installed on octo: octo/fifth, octo/fourth, octo/other, octo/shop, octo/third" in state.stdout
    listed = cli("github:repos")
    assert listed.returncode == 0 and listed.stdout.count("octo/") == 5 and "REPO" in listed.stdout

    # A branch that does not exist leaves nothing half-made: the same command can run again.
    ghost = disco.api("POST", "/projects", {"name": "ghost", "github": "octo/other", "branch": "nope"})
    assert ghost.status_code == 400 and "fetch from" in ghost.json()["error"]["message"]
    assert disco.api("GET", "/projects/ghost").status_code == 404

    with CommandLines() as processes:
        created = disco.api("POST", "/projects", {"name": "shop", "github": "octo/shop", "branch": "main"})
        assert created.status_code == 201, created.text
        assert disco.finished_deployment("shop", created.json()["deployment"])["status"] == "live"
    assert disco.get("shop.localhost").text == "v1 from github\n"
    for issued in github.issued_tokens:  # every token the daemon asked for: one repo, read only
        if issued.repositories is not None:  # one repo each (ghost's fetch asked for other's)
            assert issued.repositories in (["shop"], ["other"]) and issued.permissions == {"contents": "read"}

    new_version(work, "v2 from github\n")
    pushed = github.push("octo/shop", "main", work)
    assert pushed is not None and pushed.status_code == 202, pushed.text
    number = pushed.json()["projects"]["shop"]["deployment"]
    assert disco.finished_deployment("shop", number)["status"] == "live"
    assert disco.get("shop.localhost").text == "v2 from github\n"

    # A replayed delivery and a forged one do nothing.
    before = len(deployments(disco, "shop"))
    delivery, event, _ = github.deliveries[-1]
    assert event == "push"
    replayed = github.deliver(app.id, "push", {"zen": "the same delivery again"}, delivery=delivery)
    assert replayed.status_code == 200 and "already handled" in replayed.text
    forged = github.deliver(app.id, "push", {"zen": "not from GitHub"}, signature="sha256=" + "0" * 64)
    assert forged.status_code == 401
    assert len(deployments(disco, "shop")) == before

    # A token GitHub no longer honours is replaced.
    issued = len(github.issued_tokens)
    github.expire_tokens()
    new_version(work, "v3 from github\n")
    number = github.push("octo/shop", "main", work).json()["projects"]["shop"]["deployment"]
    assert disco.finished_deployment("shop", number)["status"] == "live"
    assert disco.get("shop.localhost").text == "v3 from github\n"
    assert len(github.issued_tokens) > issued

    # The tokens appear nowhere: the image, the deployment logs, the store's bytes, command lines.
    tokens = [t.token.encode() for t in github.issued_tokens]
    assert tokens
    image = next(d["image"] for d in deployments(disco, "shop") if d["status"] == "live")
    saved = run(["/usr/bin/docker", "save", image], text=False).stdout
    logs = b"".join(p.read_bytes() for p in (disco.data_dir / "deployments" / "shop").glob("*.log"))
    store = b"".join(p.read_bytes() for p in disco.data_dir.glob("disco.sqlite3*"))
    lines = " ".join(processes.seen).encode()
    for token in tokens:
        assert token not in saved and token not in logs and token not in store and token not in lines
    with sqlite3.connect(disco.data_dir / "disco.sqlite3") as conn:
        (pem,) = conn.execute("SELECT pem FROM github_app").fetchone()
        assert pem.startswith("enc:v1:") and b"PRIVATE KEY" not in store

    # The daemon's token for shop fetches shop, and nothing else.
    scoped = github.issued_tokens[-1]
    assert scoped.repositories == ["shop"]
    assert git_with_token(scoped.token, f"{github.url}/octo/shop.git").returncode == 0
    assert git_with_token(scoped.token, f"{github.url}/octo/other.git").returncode != 0

    # Uninstalled: GitHub sends no more pushes; the project says why, and a push delivered anyway
    # (a redelivery of an older one) is ignored with that reason.
    github.uninstall(installation)
    new_version(work, "v4 from github\n")
    assert github.push("octo/shop", "main", work) is None
    link = disco.api("GET", "/projects/shop/github").json()
    assert link["through_app"] is True and "cannot reach octo/shop" in link["app_problem"]
    late = {"ref": "refs/heads/main", "after": run(["git", "rev-parse", "HEAD"], cwd=work).stdout.strip(),
            "repository": {"full_name": "octo/shop"}, "installation": {"id": installation},
            "pusher": {"name": "octocat"}}
    ignored = github.deliver(app.id, "push", late)
    assert ignored.status_code == 202 and "cannot reach octo/shop" in ignored.json()["projects"]["shop"]["ignored"]
    seen = disco.api("GET", "/projects/shop/github/deliveries").json()
    assert "cannot reach octo/shop" in seen[0]["result"]
    assert disco.get("shop.localhost").text == "v3 from github\n"
    assert disco.api("GET", "/github/app").json()["installations"] == []
