"""Route changes at the same time: Caddy's last config must carry every one of them.

Caddy is faked here (a unit test of the Router's bookkeeping); test_deploy drives the real one.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hooks.platform import Platform
from runtime.docker_engine import Engine
from runtime.settings import Settings, ensure_layout
from runtime.store import Store


class RecordingCaddy:
    """The part of Caddy's admin API the Router uses: every config it loaded, in order."""

    def __init__(self) -> None:
        self.loaded: list[dict] = []

    def load(self, config: dict) -> bool:
        self.loaded.append(config)
        return True

    def routed_hosts(self) -> set[str]:
        server = self.loaded[-1]["apps"]["http"]["servers"]["disco"]
        return {host for route in server["routes"] for match in route.get("match", []) for host in match["host"]}


@pytest.fixture
def platform(tmp_path: Path) -> Platform:
    settings = Settings(data_dir=tmp_path / "data", instance="routetest", apps_domain="localhost", tls=False)
    ensure_layout(settings)
    platform = Platform.create(settings, Store(settings.db_path), Engine("routetest"), RecordingCaddy())  # type: ignore[arg-type]
    platform.router.proxy_ready.set()
    return platform


def live_project(platform: Platform, name: str) -> None:
    platform.store.add_project(name, "alice")
    d = platform.store.create_deployment(name, "a" * 40, "main", "alice", "push", platform.settings.deployments_dir)
    platform.store.update_deployment(name, d.number, status="live", web_port=8000)


def test_a_domain_added_while_another_project_switches_keeps_both_routes(platform: Platform):
    live_project(platform, "blog")
    platform.store.add_project("shop", "alice")
    first = platform.store.create_deployment("shop", "b" * 40, "main", "alice", "push",
                                             platform.settings.deployments_dir)
    first = platform.store.update_deployment("shop", first.number, status="starting", web_port=8000)
    switched, release = threading.Event(), threading.Event()

    def mark_live() -> None:  # the store records "live" only after Caddy got the routes
        switched.set()
        release.wait(5)
        platform.store.update_deployment("shop", first.number, status="live")

    deploy = threading.Thread(target=platform.router.switch, args=(first, mark_live))
    deploy.start()
    assert switched.wait(5)
    platform.store.add_domain("blog", "blog.example.com")
    domain = threading.Thread(target=platform.router.apply_routes_if_up)
    domain.start()
    domain.join(0.3)
    release.set()
    deploy.join(5)
    domain.join(5)
    assert platform.router.caddy.routed_hosts() == {"shop.localhost", "blog.localhost", "blog.example.com"}  # type: ignore[attr-defined]

