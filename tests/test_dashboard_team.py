"""The dashboard's team and server pages in a real browser (Debian's chromium, driven by
Playwright): an API key shown once and its session ended by revoking it, an SSH key added by
pasting, a deployer who sees only themselves, the audit log filtered, and the server's state
with a project's disk use. One daemon and one browser for the module."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from apps import web_app
from conftest import Disco, Key, browser_page, require_docker, screenshot, shared_disco


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    require_docker()
    yield from shared_disco(tmp_path_factory.mktemp("dashboard-team"))


@pytest.fixture(scope="module")
def pushed(server: tuple[Disco, Key], tmp_path_factory: pytest.TempPathFactory) -> str:
    """Project `tiny`, a busybox app, live: it has an image on Docker's disk."""
    disco, key = server
    repo = web_app(tmp_path_factory.mktemp("tiny") / "tiny", "tiny\n")
    disco.git(key, "remote", "add", "disco", disco.url("tiny"), cwd=repo)
    assert disco.git(key, "push", "disco", "main", cwd=repo).returncode == 0
    disco.cleaned_up("tiny")
    return "tiny"


def as_bearer(disco: Disco, secret: str, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{disco.api_port}/api/v1{path}", headers={"Authorization": f"Bearer {secret}"},
                     timeout=30)


def test_an_api_key_is_shown_once_and_revoking_it_ends_its_session(server, browser):
    disco, _ = server
    page = browser_page(browser, disco, disco.api_key)
    page.goto("/team")
    form = page.locator("#create-api-key")
    form.locator("input[name=label]").fill("second browser")
    form.locator("input[name=expires_in_days]").fill("30")
    form.get_by_role("button", name="Create API key").click()
    shown = page.locator("#new-key code")
    shown.wait_for()
    secret = shown.inner_text().strip()
    assert secret.startswith("disco_")
    assert as_bearer(disco, secret, "/meta").json()["user"]["name"] == "alice"  # a working key
    made = next(k for k in disco.api("GET", "/api-keys").json() if k["label"] == "second browser")
    assert made["expires_at"]

    page.reload()
    assert page.locator("#new-key").is_hidden() and secret not in page.content()  # shown once, never again
    row = page.locator(f"tr[data-key-id='{made['id']}']")
    assert "second browser" in row.inner_text() and made["prefix"] in row.inner_text()

    # A second browser signs in with the new key: its session is listed, marked there as its own.
    other = browser_page(browser, disco, secret)
    other.goto("/team")
    theirs = other.locator("tr[data-session][data-current]").get_attribute("data-session")
    assert "this one" in other.locator(f"tr[data-session='{theirs}']").inner_text()
    page.reload()
    listed = page.locator(f"tr[data-session='{theirs}']")
    assert "second browser" in listed.inner_text() and "this one" not in listed.inner_text()

    row.get_by_role("button", name="Revoke").click()
    page.locator(f"tr[data-key-id='{made['id']}'][data-state=revoked]").wait_for()
    kind, question = page.dialogs[-1]
    assert kind == "confirm" and "second browser" in question and "dashboard sessions (1)" in question
    assert page.locator(f"tr[data-session='{theirs}']").count() == 0
    assert as_bearer(disco, secret, "/meta").status_code == 401
    other.goto("/team")
    assert "/sign-in" in other.url  # the session made with the key ended with it
    other.context.close()
    page.context.close()


def test_an_ssh_key_added_by_pasting_shows_its_fingerprint(server, browser, tmp_path: Path):
    disco, _ = server
    path = tmp_path / "laptop"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop", "-f", str(path)], check=True)
    fingerprint = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], check=True, capture_output=True,
                                 text=True).stdout.split()[1]
    page = browser_page(browser, disco, disco.api_key)
    page.goto("/team")
    page.fill("#add-ssh-key textarea[name=public_key]", Path(f"{path}.pub").read_text())
    page.get_by_role("button", name="Add SSH key").click()
    page.locator("#ssh-key-added").wait_for()
    assert fingerprint in page.locator("#ssh-key-added").inner_text()
    assert "alice@laptop" in page.locator(f"tr[data-fingerprint='{fingerprint}']").inner_text()
    listed = disco.api("GET", "/ssh-keys").json()
    assert any(k["fingerprint"] == fingerprint and k["comment"] == "alice@laptop" for k in listed)
    screenshot(page, "team")

    page.locator(f"tr[data-fingerprint='{fingerprint}']").get_by_role("button", name="Remove").click()
    page.locator(f"tr[data-fingerprint='{fingerprint}']").wait_for(state="detached")
    assert all(k["fingerprint"] != fingerprint for k in disco.api("GET", "/ssh-keys").json())
    page.context.close()


def test_a_deployer_sees_only_themselves_and_no_admin_forms(server, browser, pushed):
    disco, _ = server
    assert disco.api("POST", "/projects", {"name": "doras"}).status_code == 201
    # An admin adds her and grants her a project from the page.
    admin = browser_page(browser, disco, disco.api_key)
    admin.goto("/team")
    admin.fill("#add-user input[name=name]", "dora")
    admin.get_by_role("button", name="Add user").click()
    dora = admin.locator("tr[data-user=dora]")
    dora.locator("select[name=project]").select_option("doras")
    dora.get_by_role("button", name="Grant").click()
    dora.locator("[data-grant=doras]").wait_for()
    assert next(u for u in disco.api("GET", "/users").json() if u["name"] == "dora") | {"created_at": ""} == {
        "name": "dora", "role": "deployer", "projects": ["doras"], "created_at": ""}
    admin.context.close()
    secret = disco.api("POST", "/api-keys", {"label": "dora's", "user": "dora"}).json()["key"]
    page = browser_page(browser, disco, secret)
    page.goto("/team")
    assert page.locator("tr[data-user]").evaluate_all("rows => rows.map(r => r.dataset.user)") == ["dora"]
    assert "doras" in page.locator("tr[data-user=dora]").inner_text()
    assert page.locator("#add-user, form[data-api*='/grants'], form[data-api^='DELETE /api/v1/users']").count() == 0
    assert page.locator("#add-ssh-key select, #create-api-key select").count() == 0  # only for themselves
    assert page.locator("tr[data-key-id]").count() == 1 and page.locator("tr[data-session]").count() == 1
    assert "Audit log" not in page.locator(".tabs").inner_text()
    refused = page.goto("/team/audit")
    assert refused is not None and refused.status == 403
    assert "only admins" in page.locator("main").inner_text()
    # The server's state, but the disk rows of their own projects only (doras has no image).
    page.goto("/server")
    assert page.locator("#swarm-state").inner_text() == "active"
    assert page.locator(f"#project-disk tr[data-project={pushed}]").count() == 0
    page.context.close()


def test_the_audit_log_filters_by_action(server, browser):
    disco, _ = server
    made = disco.api("POST", "/api-keys", {"label": "audited"}).json()
    assert disco.api("DELETE", f"/api-keys/{made['id']}").status_code == 200
    page = browser_page(browser, disco, disco.api_key)
    page.goto("/team/audit?action=apikeys")
    actions = page.locator("tr[data-action]").evaluate_all("rows => rows.map(r => r.dataset.action)")
    assert "apikeys:create" in actions and "apikeys:revoke" in actions
    assert all(a.startswith("apikeys:") for a in actions)
    page.fill("#audit-filter input[name=action]", "apikeys:revoke")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/team/audit?*action=apikeys%3Arevoke*")
    rows = page.locator("tr[data-action]")
    assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.action)")) == {"apikeys:revoke"}
    assert f"key {made['id']} (audited)" in page.locator("table.audit").inner_text()
    page.context.close()


def test_the_server_page_shows_docker_swarm_and_a_projects_disk_use(server, browser, pushed):
    disco, _ = server
    meta = disco.api("GET", "/meta").json()
    page = browser_page(browser, disco, disco.api_key)
    page.goto("/server")
    assert page.locator("#docker-version").inner_text() == meta["docker"]["version"]
    assert page.locator("#swarm-state").inner_text() == "active"
    assert page.locator("#disco-version").inner_text() == meta["version"]
    assert page.locator("#proxy-state").inner_text().startswith("up")
    row = page.locator(f"#project-disk tr[data-project={pushed}]")
    assert int(row.locator(".image-bytes").get_attribute("data-bytes") or 0) > 0
    screenshot(page, "server")
    page.context.close()
