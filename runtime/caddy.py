"""Caddy: the edge proxy. Its config is generated from routes; its admin API is a unix socket.

A route points at a project's web service by its swarm DNS name, resolved by Caddy itself
(dynamic A upstreams, refreshed every 250 ms). A deploy therefore never changes the config:
swarm swaps the tasks behind the name. The config changes only when routes do (a project's
first deploy, a domain added, a port changed), because every change makes Caddy reload, and
a reload resets some keep-alive connections.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ADMIN_SOCKET_NAME = "caddy-admin.sock"
API_SOCKET_NAME = "api.sock"  # the daemon's API, for Caddy to serve on the server's own domain
CONTAINER_RUN_DIR = "/run/disco"  # where the data dir's run/ is mounted in the Caddy container


# How often Caddy looks a service's tasks up again; after a swarm update completes, the proxy
# has dropped the old tasks within two of these.
UPSTREAM_REFRESH_SECONDS = 0.25


class CaddyError(Exception):
    pass


@dataclass(frozen=True)
class Route:
    hosts: tuple[str, ...]
    upstream: str  # swarm service DNS name
    port: int


def build_config(routes: list[Route], tls: bool, api_host: str = "") -> dict:
    """The whole Caddy config; `api_host` (the server's own domain) serves the Disco API."""
    api = [_api_route(api_host)] if api_host else []
    server: dict = {
        "listen": [":443"] if tls else [":80"],
        "routes": api + [_route(r) for r in routes if r.hosts] + [_not_found()],
    }
    if not tls:
        server["automatic_https"] = {"disable": True}
    return {
        "admin": {
            "listen": f"unix/{CONTAINER_RUN_DIR}/{ADMIN_SOCKET_NAME}",
            # Caddy checks the Host of admin requests; ours send "localhost".
            "origins": ["localhost"],
        },
        "apps": {"http": {"servers": {"disco": server}}},
    }


def _route(route: Route) -> dict:
    return {
        "match": [{"host": sorted(route.hosts)}],
        "handle": [
            {
                "handler": "reverse_proxy",
                "dynamic_upstreams": {
                    "source": "a",
                    "name": route.upstream,
                    "port": str(route.port),
                    "refresh": f"{int(UPSTREAM_REFRESH_SECONDS * 1000)}ms",
                },
                # A dial that fails (a task just stopped) is retried on another task, inside
                # Caddy, so the client never sees it.
                "load_balancing": {
                    "selection_policy": {"policy": "round_robin"},
                    "try_duration": "10s",
                    "try_interval": "100ms",
                },
                "health_checks": {"passive": {"fail_duration": "2s"}},
                "transport": {"protocol": "http", "dial_timeout": "1s"},
            }
        ],
        "terminal": True,
    }


def _api_route(host: str) -> dict:
    return {
        "match": [{"host": [host]}],
        "handle": [{"handler": "reverse_proxy",
                    "upstreams": [{"dial": f"unix/{CONTAINER_RUN_DIR}/{API_SOCKET_NAME}"}]}],
        "terminal": True,
    }


def _not_found() -> dict:
    return {
        "handle": [
            {
                "handler": "static_response",
                "status_code": 404,
                "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
                "body": "404 Not Found: no app is deployed at {http.request.host}\n",
            }
        ]
    }


class CaddyAdmin:
    """Client of Caddy's admin API over the unix socket in the data dir."""

    def __init__(self, run_dir: Path) -> None:
        self.socket = run_dir / ADMIN_SOCKET_NAME

    def _client(self) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://localhost", timeout=30
        )

    def is_up(self) -> bool:
        try:
            with self._client() as client:
                return client.get("/config/").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_until_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_up():
            if time.monotonic() > deadline:
                raise CaddyError(f"Caddy's admin API did not answer on {self.socket} within {timeout:.0f} s")
            time.sleep(0.2)

    def current_config(self) -> dict:
        with self._client() as client:
            response = client.get("/config/")
            response.raise_for_status()
            return response.json() or {}

    def load(self, config: dict) -> bool:
        """Replace the config if it differs; return whether Caddy had to reload."""
        try:
            if _normalise(self.current_config()) == _normalise(config):
                return False
            with self._client() as client:
                response = client.post("/load", content=json.dumps(config),
                                       headers={"Content-Type": "application/json"})
        except httpx.HTTPError as err:  # Caddy down or restarting: a known failure, not a bug
            raise CaddyError(f"cannot reach Caddy's admin API on {self.socket}: {err}") from None
        if response.status_code != 200:
            raise CaddyError(f"Caddy refused the config: {response.text.strip()[:500]}")
        return True


def _normalise(config: dict) -> str:
    return json.dumps(config, sort_keys=True)
