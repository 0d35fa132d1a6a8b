"""The dashboard in a real browser (Debian's chromium, driven by Playwright): signing in and
out, the projects, a push watched live, a failed deploy, a rollback, and text from users and
apps that stays text. One daemon and one browser for the module."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from apps import BASE, SERVE, new_version, web_app
from conftest import (Disco, Key, browser_page, laptop_cli, require_docker, screenshot,
                      shared_disco, wait_for)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    require_docker()
    yield from shared_disco(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture(scope="module")
def pushed(server: tuple[Disco, Key], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Project `web` with v1 live, pushed with real git over SSH."""
    disco, key = server
    repo = web_app(tmp_path_factory.mktemp("web") / "web", "v1\n")
    disco.git(key, "remote", "add", "disco", disco.url("web"), cwd=repo)
    assert disco.git(key, "push", "disco", "main", cwd=repo).returncode == 0
    disco.cleaned_up("web")
    return repo


def api_key_for(disco: Disco, user: str, label: str = "browser") -> tuple[int, str]:
    made = disco.api("POST", "/api-keys", {"label": label, "user": user})
    assert made.status_code == 201, made.text
    return made.json()["id"], made.json()["key"]


def served(disco: Disco, host: str = "web.localhost") -> str:
    return httpx.get(f"http://127.0.0.1:{disco.http_port}/", headers={"Host": host}, timeout=10).text


def test_sign_in_with_a_key_and_see_the_projects(server, browser, pushed):
    disco, _ = server
    page = browser_page(browser, disco)
    page.goto("/")
    assert "/sign-in" in page.url  # not signed in: sent to sign in, and back after
    page.fill("input[name=key]", "disco_not-a-real-key")
    page.click("button[type=submit]")
    assert "not a live API key" in page.locator("#sign-in-error").inner_text()
    page.fill("input[name=key]", disco.api_key)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/$"))
    row = page.locator("tr[data-project=web]")
    assert "serving" in row.inner_text()
    assert "web 1/1" in row.inner_text()  # healthy/wanted replicas, from swarm
    assert "v1" in row.inner_text()  # the live commit's message
    cookie = next(c for c in page.context.cookies() if c["name"] == "disco_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert disco.api_key not in str(page.context.cookies())  # the key itself never reaches the browser
    headers = page.request.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"] and "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    screenshot(page, "projects")
    page.context.close()


def test_watch_a_push_live_then_roll_back_with_the_button(server, browser, pushed):
    disco, key = server
    page = browser_page(browser, disco, disco.api_key)
    # A build that waits for a file the test creates, so the page is open while it runs.
    overview = page.context.new_page()  # the projects list, open while the push happens
    overview.goto("/")
    glance = overview.locator("tr[data-project=web] .glance")
    assert glance.inner_text() == "serving"
    new_version(pushed, "v2\n", [*BASE, "COPY www /www", f"RUN echo building-step-one {uuid.uuid4().hex} && sleep 4",  # never cached: it takes its 4 s
                                 "RUN echo progress 10%; echo second-line", "EXPOSE 8000", SERVE])
    push = subprocess.Popen(["git", "push", "disco", "main"], cwd=pushed, env=disco.git_env(key),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        newest = wait_for("the push's deployment", lambda: next(
            (d for d in disco.api("GET", "/projects/web/deployments", limit=1).json() if d["number"] >= 2), None))
        page.goto(f"/projects/web/deployments/{newest['number']}")
        output = page.locator("#output")
        output.get_by_text("building-step-one").first.wait_for(timeout=120_000)
        overview.locator("tr[data-project=web] .glance .status-deploying").wait_for()  # while it builds
        page.locator("#output[data-ended=live]").wait_for(timeout=180_000)
        assert "live" in page.locator("#deployment-status").inner_text()
        # The list followed it over /api/v1/events, without a reload: deploying, then serving.
        overview.locator("tr[data-project=web] .newest .status-live").wait_for()
        assert glance.inner_text() == "serving"
        screenshot(page, "deployment-output")
    finally:
        push.wait(180)
    assert push.returncode == 0, push.stdout
    disco.cleaned_up("web")
    assert served(disco) == "v2\n"

    page.goto("/projects/web")
    # The picture: a bar per deployment, linked to its page, and the web service's memory now.
    numbers = [d["number"] for d in disco.api("GET", "/projects/web/deployments").json()]
    assert page.locator(".picture svg.deploy-chart rect.bar").count() == len(numbers)
    assert page.locator(f".picture svg a[href='/projects/web/deployments/{max(numbers)}'] rect.bar-live").count() == 1
    assert page.locator(".picture svg .bar-memory").count() >= 1 and "web" in page.locator(".picture").inner_text()
    screenshot(page, "project")
    button = page.get_by_role("button", name="Roll back to #1")
    button.click()
    page.wait_for_url(re.compile(r"/projects/web/deployments/\d+$"))
    assert page.dialogs and page.dialogs[-1][0] == "confirm"
    assert "#1" in page.dialogs[-1][1] and "instead of #" in page.dialogs[-1][1]  # says what will serve
    page.locator("#output[data-ended=live]").wait_for(timeout=180_000)
    disco.cleaned_up("web")
    assert served(disco) == "v1\n"
    page.context.close()


def test_a_failed_deploy_shows_its_reason(server, browser, pushed):
    disco, key = server
    new_version(pushed, "broken\n", [*BASE, "RUN exit 3"])
    assert disco.git(key, "push", "disco", "main", cwd=pushed).returncode != 0
    failed = disco.cleaned_up("web")
    assert failed["status"] == "failed"
    page = browser_page(browser, disco, disco.api_key)
    row = page.locator("tr[data-project=web]")
    assert "failed" in row.inner_text()
    page.goto("/projects/web")
    reason = page.locator(f"tr[data-number='{failed['number']}'] .reason").inner_text()
    assert reason and reason in failed["reason"]
    page.goto(f"/projects/web/deployments/{failed['number']}")
    page.locator("#output[data-ended=failed]").wait_for()
    assert failed["reason"][:40] in page.locator("#deployment-reason").inner_text()
    assert "exit" in page.locator("#output").inner_text().lower() or "3" in page.locator("#output").inner_text()
    # Put the good commit back on the branch for the tests after this one.
    disco.git(key, "reset", "-q", "--hard", "HEAD~1", cwd=pushed)
    page.context.close()


def test_cancel_a_running_deployment_with_the_button(server, browser, pushed):
    disco, key = server
    live_before = disco.api("GET", "/projects/web").json()["live_deployment"]["number"]
    new_version(pushed, "slow\n", [*BASE, "COPY www /www", f"RUN echo {uuid.uuid4().hex} && sleep 120", "EXPOSE 8000", SERVE])
    push = subprocess.Popen(["git", "push", "disco", "main"], cwd=pushed, env=disco.git_env(key),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        building = wait_for("the slow build", lambda: next(
            (d for d in disco.api("GET", "/projects/web/deployments", limit=1).json()
             if d["number"] > live_before and d["status"] == "building"), None))
        page = browser_page(browser, disco, disco.api_key)
        page.goto("/projects/web")
        page.get_by_role("button", name=f"Cancel #{building['number']} (building)").click()
        assert page.dialogs[-1][0] == "confirm" and "What is live keeps serving" in page.dialogs[-1][1]
        ended = disco.finished_deployment("web", building["number"], timeout=60)
        assert ended["status"] == "cancelled"
    finally:
        push.wait(120)
    assert push.returncode != 0 and served(disco) in ("v1\n", "v2\n")
    disco.git(key, "reset", "-q", "--hard", "HEAD~1", cwd=pushed)
    page.context.close()


def test_markup_in_build_output_and_commit_messages_stays_text(server, browser, pushed):
    disco, key = server
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    ansi = "\x1b[31m<b id=injected>red</b>\x1b[0m \x1b]8;;javascript:alert(3)\x07link\x1b]8;;\x07"
    new_version(pushed, "v3\n", [*BASE, "COPY www /www",
                                 f"RUN printf '%s\\n' '{hostile}' && printf '{ansi}\\n'",
                                 "EXPOSE 8000", SERVE])
    subprocess.run(["git", "-c", "user.name=T", "-c", "user.email=t@e", "commit", "-q", "--amend", "-m",
                    f"{hostile} in a message"], cwd=pushed, check=True)
    assert disco.git(key, "push", "disco", "main", cwd=pushed).returncode == 0
    done = disco.cleaned_up("web")
    page = browser_page(browser, disco, disco.api_key)
    page.goto(f"/projects/web/deployments/{done['number']}")
    page.locator("#output[data-ended=live]").wait_for()
    page.get_by_text("<script>alert(1)</script>", exact=False).first.wait_for()
    assert page.locator("#output script, #output img, #output b, #output a, #injected").count() == 0
    assert "<b id=injected>red</b>" in page.locator("#output").inner_text()  # shown as the text it is
    page.goto("/projects/web")
    assert hostile in page.locator("table.deployments").inner_text()
    assert page.locator("main script, main img").count() == 0
    assert page.dialogs == []  # nothing ran
    page.context.close()


def test_a_post_without_the_csrf_token_is_refused(server, browser, pushed):
    disco, _ = server
    page = browser_page(browser, disco, disco.api_key)
    before = len(disco.api("GET", "/projects/web/deployments").json())
    refused = page.request.post("/api/v1/projects/web/deployments", data={})  # the session cookie, no token
    assert refused.status == 403 and "CSRF" in refused.json()["error"]["message"]
    token = page.locator("meta[name=csrf-token]").get_attribute("content")
    wrong = page.request.post("/api/v1/projects/web/deployments", data={}, headers={"X-CSRF-Token": "0" * 64})
    assert wrong.status == 403
    assert len(disco.api("GET", "/projects/web/deployments").json()) == before  # nothing was deployed
    # A read needs no token, and the right token makes a change.
    assert page.request.get("/api/v1/projects/web").status == 200
    unset = page.request.post("/api/v1/projects/web/env", data={"values": {"FROM_BROWSER": "1"}, "deploy": False},
                              headers={"X-CSRF-Token": token})
    assert unset.status == 200, unset.text()
    assert "FROM_BROWSER" in disco.api("GET", "/projects/web/env").json()["names"]
    page.context.close()


def test_sign_out_and_revoking_the_key_end_sessions_on_the_server(server, browser, pushed):
    disco, _ = server
    key_id, secret = api_key_for(disco, "alice", "revoked-later")
    page = browser_page(browser, disco, secret)
    session = next(c for c in page.context.cookies() if c["name"] == "disco_session")["value"]
    listed = disco.api("GET", "/sessions").json()
    assert any(s["api_key_id"] == key_id for s in listed)
    assert session not in str(listed)  # never the token
    # Revoking the key the session came from ends it at once.
    assert disco.api("DELETE", f"/api-keys/{key_id}").status_code == 200
    page.goto("/")
    assert "/sign-in" in page.url
    cookie = {"disco_session": session}
    assert httpx.get(f"http://127.0.0.1:{disco.api_port}/api/v1/projects", cookies=cookie).status_code == 401

    other = browser_page(browser, disco, disco.api_key)
    kept = next(c for c in other.context.cookies() if c["name"] == "disco_session")["value"]
    other.click("text=Sign out")
    other.wait_for_url(re.compile(r"/sign-in"))
    # The old cookie, replayed, no longer works: the session ended on the server, not just in the browser.
    assert httpx.get(f"http://127.0.0.1:{disco.api_port}/", cookies={"disco_session": kept},
                     follow_redirects=False).status_code == 303
    page.context.close()
    other.context.close()


def test_a_deployer_sees_only_their_project(server, browser, pushed):
    disco, _ = server
    assert disco.cli("users:add", "dave", "--role", "deployer").returncode == 0
    assert disco.api("POST", "/projects", {"name": "daves"}).status_code == 201
    assert disco.api("POST", "/users/dave/grants", {"project": "daves"}).status_code in (200, 201)
    _, secret = api_key_for(disco, "dave")
    page = browser_page(browser, disco, secret)
    names = page.locator("tr[data-project]").evaluate_all("rows => rows.map(r => r.dataset.project)")
    assert names == ["daves"]
    page.goto("/projects/web")
    assert "no project named 'web'" in page.locator("main").inner_text()
    page.context.close()


def test_a_one_time_link_from_the_cli_signs_in_once(server, browser, pushed, tmp_path):
    disco, _ = server
    cli = laptop_cli(disco, tmp_path / "laptop")
    printed = cli("dashboard", "--no-open")
    assert printed.returncode == 0, printed.stderr
    url = re.search(r"http://\S+", printed.stdout).group(0)
    # The address the laptop logged in with, the token only in the fragment (never sent to a server).
    assert url.startswith(f"http://127.0.0.1:{disco.api_port}/sign-in/link#") and "?" not in url
    assert "works once, for 5 minutes" in printed.stdout
    page = browser_page(browser, disco)
    page.goto(url)
    assert page.url.endswith("/sign-in/link")  # the token left the address bar at once
    page.click("#use-link")  # never on its own: a link made by someone else must not sign in silently
    page.wait_for_url(re.compile(r"/$"))
    assert page.locator("tr[data-project=web]").count() == 1
    again = browser_page(browser, disco)
    again.goto(url)
    again.click("#use-link")
    again.locator("#sign-in-error").wait_for()
    assert "used, expired or wrong" in again.locator("#sign-in-error").inner_text()
    # Someone else's link opened in a signed-in browser says so first, and signing in with it
    # ends the session it replaces.
    _, other_key = api_key_for(disco, "alice", "other-laptop")
    other = httpx.post(f"http://127.0.0.1:{disco.api_port}/api/v1/dashboard/links",
                       headers={"Authorization": f"Bearer {other_key}"}).json()["url"]
    before = next(c for c in page.context.cookies() if c["name"] == "disco_session")["value"]
    page.goto("/sign-in/link#" + other.split("#", 1)[1])
    assert "signed in as alice" in page.locator("#signed-in-as").inner_text()
    page.click("#use-link")
    page.wait_for_url(re.compile(r"/$"))
    assert httpx.get(f"http://127.0.0.1:{disco.api_port}/api/v1/projects",
                     cookies={"disco_session": before}).status_code == 401
    page.context.close()
    again.context.close()
