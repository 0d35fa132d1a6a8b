"""A project's settings and logs pages in a real browser (Debian's chromium, driven by
Playwright): env vars set with a redeploy, revealed and unset; a domain added and removed; a
service scaled; an app's log lines followed live, its markup shown as text. One daemon, one
browser, one app for the module."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from apps import BASE, shell_cmd, web_app
from conftest import Disco, Key, browser_page, require_docker, screenshot, shared_disco, wait_for
from runtime.docker_engine import Engine

HOSTILE = "<img src=x onerror=alert(1)>"
# The app logs markup and colours at start, then a numbered line a second, and serves the
# value of GREETING as it saw it at start.
APP = [*BASE, "COPY www /www", "EXPOSE 8000", shell_cmd(
    f"printf '%s \\033[32mgreen\\033[0m\\n' '{HOSTILE}'; "
    "busybox mkdir -p /tmp/www; echo \"greeting=$GREETING\" > /tmp/www/index.html; "
    "(i=0; while true; do i=$((i+1)); echo tick $i; busybox sleep 1; done) & "
    "exec busybox httpd -f -p 8000 -h /tmp/www")]
# and a worker beside it, for the logs page's service picker
TOML = """\
[services.web]
port = 8000

[services.worker]
command = "/bin/busybox sh -c 'while true; do echo worker-beat; busybox sleep 1; done'"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    require_docker()
    yield from shared_disco(tmp_path_factory.mktemp("dashboard-settings"))


@pytest.fixture(scope="module")
def pushed(server: tuple[Disco, Key], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Project `shop` live, pushed with real git over SSH."""
    disco, key = server
    repo = web_app(tmp_path_factory.mktemp("shop") / "shop", "unused\n", APP, **{"disco.toml": TOML})
    disco.git(key, "remote", "add", "disco", disco.url("shop"), cwd=repo)
    assert disco.git(key, "push", "disco", "main", cwd=repo).returncode == 0
    disco.cleaned_up("shop")
    return repo


def served(disco: Disco) -> str:
    return httpx.get(f"http://127.0.0.1:{disco.http_port}/", headers={"Host": "shop.localhost"}, timeout=10).text


def test_env_vars_set_with_a_redeploy_revealed_and_unset(server, browser, pushed):
    disco, _ = server
    assert served(disco) == "greeting=\n"
    page = browser_page(browser, disco, disco.api_key)
    page.goto("/projects/shop/settings")
    page.fill("#env-set textarea[name=values]", "GREETING=hello <b>page</b>\nOTHER=x")
    assert page.locator("#env-set input[name=deploy]").is_checked()  # redeploy now, by default
    page.click("#env-set button[type=submit]")
    page.wait_for_url(re.compile(r"/projects/shop/deployments/\d+$"))  # the redeploy's output
    page.locator("#output[data-ended=live]").wait_for(timeout=120_000)
    wait_for("the app to serve the new value", lambda: served(disco) == "greeting=hello <b>page</b>\n", 60)

    page.goto("/projects/shop/settings")
    assert page.locator("tr[data-env]").evaluate_all("rows => rows.map(r => r.dataset.env)") == ["GREETING", "OTHER"]
    assert "hello" not in page.locator("#env").inner_text()  # names only, until revealed
    row = page.locator("tr[data-env=GREETING]")
    row.get_by_role("button", name="Reveal").click()
    row.locator(".env-value").get_by_text("hello <b>page</b>").wait_for()  # as text, no <b> made
    assert page.locator("#env b").count() == 0
    assert any(a["action"] == "env:read-values" for a in disco.api("GET", "/audit", target="shop").json())

    deployments = len(disco.api("GET", "/projects/shop/deployments").json())
    page.locator("input[data-unset=OTHER]").check()
    assert page.locator("#unset-names").input_value() == "OTHER"
    page.locator("#env-unset input[name=deploy]").uncheck()  # no redeploy: the page reloads
    page.click("#env-unset button[type=submit]")
    page.locator("tr[data-env]").nth(1).wait_for(state="detached")
    assert disco.api("GET", "/projects/shop/env").json()["names"] == ["GREETING"]
    assert len(disco.api("GET", "/projects/shop/deployments").json()) == deployments
    assert page.dialogs and "Unset" in page.dialogs[-1][1]
    page.context.close()


def test_the_logs_page_follows_a_service_live_and_keeps_markup_as_text(server, browser, pushed):
    disco, _ = server
    page = browser_page(browser, disco, disco.api_key)
    page.goto("/projects/shop/logs")
    logs = page.locator("#logs")
    logs.get_by_text(HOSTILE).first.wait_for(timeout=30_000)
    # Live: a line the app writes after the page opened arrives without a reload.
    ticks = logs.get_by_text(re.compile(r"tick \d+$"))
    seen = ticks.count()
    wait_for("a new line", lambda: ticks.count() > seen, 30)
    assert logs.locator(".ansi-fg-2").first.inner_text() == "green"  # its colour, as a terminal shows it
    assert page.locator("#logs img, main img").count() == 0 and page.dialogs == []
    page.fill("#log-filter", "green")
    assert logs.locator(".terminal-line:visible").count() >= 1
    assert all("green" in t for t in logs.locator(".terminal-line:visible").all_inner_texts())
    page.fill("#log-filter", "")
    screenshot(page, "logs")
    # Another service: the terminal starts over with its lines, and web's stream is stopped.
    page.select_option("#log-service", "worker")
    logs.get_by_text("worker-beat").first.wait_for()
    assert "tick" not in logs.inner_text()
    beats = logs.get_by_text("worker-beat").count()
    wait_for("a new beat", lambda: logs.get_by_text("worker-beat").count() > beats, 30)
    assert "tick" not in logs.inner_text()
    assert page.url.endswith("/projects/shop/logs?service=worker")
    page.context.close()


def test_a_domain_added_and_removed(server, browser, pushed):
    disco, _ = server
    page = browser_page(browser, disco, disco.api_key)
    page.goto("/projects/shop/settings")
    page.fill("#domain-add input[name=domain]", "shop.example.com")
    page.click("#domain-add button[type=submit]")
    row = page.locator("tr[data-domain='shop.example.com']")
    row.wait_for()
    assert "--no-tls" in row.inner_text()  # its certificate's state says why there is none
    assert [d["domain"] for d in disco.api("GET", "/projects/shop/domains").json()] == ["shop.example.com"]
    row.get_by_role("button", name="Remove").click()
    row.wait_for(state="detached")
    assert page.dialogs and "Stop routing shop.example.com" in page.dialogs[-1][1]
    assert disco.api("GET", "/projects/shop/domains").json() == []
    page.context.close()


def test_scale_a_service_from_the_page(server, browser, pushed):
    disco, _ = server
    page = browser_page(browser, disco, disco.api_key)
    page.goto("/projects/shop/settings")
    row = page.locator("tr[data-service=web]")
    assert row.locator(".wanted").inner_text().startswith("1") and row.locator(".running").inner_text() == "1"
    row.locator("input[name=web]").fill("2")
    page.click("#scale button[type=submit]")
    page.locator("tr[data-service=web] .wanted", has_text="2").wait_for()  # after the reload
    assert disco.api("GET", "/projects/shop/scale").json() == {"web": 2, "worker": 1}
    assert disco.api("GET", "/projects/shop").json()["scale"] == {"web": 2}  # only the count typed is kept
    wait_for("swarm to run 2 tasks of web", lambda: running_tasks(disco) == 2, 90)
    # The page shows swarm's counts as kept for a moment (a page never waits on Docker): a
    # reload or two later they are swarm's new ones.
    running = page.locator("tr[data-service=web] .running")
    wait_for("the page to show 2 running", lambda: page.reload() and running.inner_text() == "2", 30, every=0.5)
    screenshot(page, "settings")
    page.context.close()


def running_tasks(disco: Disco) -> int:
    return next(h.running for h in Engine(disco.instance).services_health()
                if h.project == "shop" and h.service == "web")


def test_link_to_github_shows_the_secret_once_then_unlink(server, browser, pushed):
    disco, _ = server
    page = browser_page(browser, disco, disco.api_key)
    page.goto("/projects/shop/settings")
    assert "Not linked" in page.locator("#github").inner_text()
    page.fill("#github-link input[name=repo]", "octo/shop")
    page.click("#github-link button[type=submit]")
    shown = page.locator("#github-shown code")
    shown.wait_for()
    secret = shown.inner_text()
    assert re.fullmatch(r"[0-9a-f]{64}", secret)
    page.reload()
    github = page.locator("#github")
    assert "octo/shop" in github.inner_text() and "/webhooks/github/shop" in github.inner_text()
    assert secret not in page.content()  # shown once, never in a page
    page.get_by_role("button", name="Unlink").click()
    page.get_by_text("Not linked").wait_for()
    assert disco.api("GET", "/projects/shop/github").status_code == 404
    page.context.close()


def test_who_may_not_deploy_sees_no_action():
    """The settings page as rendered for a reader: what exists, no form or button to change it
    (the API would refuse them anyway). No daemon needed: the template with a reader's values."""
    from types import SimpleNamespace

    from api.web.pages import templates
    from api.web.settings import ServiceScale
    from hooks.certificates import CertificateStatus

    who = SimpleNamespace(user=SimpleNamespace(name="rita", role="deployer", is_admin=False), csrf="t")
    link = {"repo": "octo/shop", "branch": "main", "clone_url": "https://github.com/octo/shop.git",
            "payload_url": "http://disco.test/webhooks/github/shop", "content_type": "application/json",
            "events": "Just the push event", "token_set": False, "through_app": False, "app_problem": "",
            "deploy_key": None}
    html = templates().get_template("settings.html").render(
        who=who, csrf="t", path="/projects/shop/settings", project="shop", may_deploy=False, env_names=["GREETING"],
        domains=[("shop.example.com", CertificateStatus("pending", reason="soon"))], docker_error="",
        scales=[ServiceScale("web", 2, 2, True)], max_replicas=20, live=None, github=link,
        app={"app": None, "installations": []}, webhook_url="http://disco.test/webhooks/github/shop")
    main = html.split("<main>", 1)[1]
    assert "GREETING" in main and "shop.example.com" in main and "octo/shop" in main
    assert "<form" not in main and "<button" not in main and "<input" not in main and "<textarea" not in main
