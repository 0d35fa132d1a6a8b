"""Caddy's config as data (runtime/caddy.build_config), and the admin client's errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.caddy import (
    ADMIN_SOCKET_NAME,
    API_SOCKET_NAME,
    CONTAINER_RUN_DIR,
    CaddyAdmin,
    CaddyError,
    Route,
    build_config,
)

SHOP = Route(("www.shop.example", "shop.apps.example"), "disco-shop-web", 8000)


def server(config: dict) -> dict:
    return config["apps"]["http"]["servers"]["disco"]


def test_admin_api_stays_on_the_unix_socket_and_accepts_localhost():
    config = build_config([SHOP], tls=False)
    # /load replaces the admin block too: without it the admin API would move to :2019.
    assert config["admin"] == {"listen": f"unix/{CONTAINER_RUN_DIR}/{ADMIN_SOCKET_NAME}", "origins": ["localhost"]}


def test_a_route_resolves_the_service_name_in_caddy_and_retries_failed_dials():
    route = server(build_config([SHOP], tls=False))["routes"][0]
    assert route["match"] == [{"host": ["shop.apps.example", "www.shop.example"]}]
    assert route["terminal"] is True
    proxy = route["handle"][0]
    assert proxy["handler"] == "reverse_proxy"
    # Swarm swaps the tasks behind the name: a deploy never changes the config.
    assert proxy["dynamic_upstreams"] == {"source": "a", "name": "disco-shop-web", "port": "8000",
                                          "refresh": "250ms"}
    assert proxy["load_balancing"]["try_duration"] == "10s"  # a stopped task's dial is retried elsewhere


def test_an_unknown_host_gets_a_404_from_the_last_route():
    routes = server(build_config([SHOP], tls=False))["routes"]
    last = routes[-1]
    assert "match" not in last  # the catch-all; without it Caddy answers 200 with an empty body
    assert last["handle"][0]["handler"] == "static_response" and last["handle"][0]["status_code"] == 404


def test_plain_http_listens_on_80_without_automatic_https_and_tls_on_443():
    plain, tls = server(build_config([SHOP], tls=False)), server(build_config([SHOP], tls=True))
    assert plain["listen"] == [":80"] and plain["automatic_https"] == {"disable": True}
    assert tls["listen"] == [":443"] and "automatic_https" not in tls


def test_the_api_host_comes_first_and_goes_to_the_api_socket():
    routes = server(build_config([SHOP], tls=True, api_host="deploy.example.com"))["routes"]
    assert routes[0]["match"] == [{"host": ["deploy.example.com"]}]
    assert routes[0]["handle"][0]["upstreams"] == [{"dial": f"unix/{CONTAINER_RUN_DIR}/{API_SOCKET_NAME}"}]
    assert len(routes) == 3
    assert len(server(build_config([SHOP], tls=True))["routes"]) == 2  # no API route without a domain


def test_a_route_without_hosts_is_left_out():
    routes = server(build_config([Route((), "disco-x-web", 8000), SHOP], tls=False))["routes"]
    assert [r.get("match") for r in routes[:-1]] == [[{"host": ["shop.apps.example", "www.shop.example"]}]]


def test_loading_into_a_caddy_that_is_down_is_a_caddy_error(tmp_path: Path):
    with pytest.raises(CaddyError, match="cannot reach Caddy's admin API"):
        CaddyAdmin(tmp_path).load(build_config([SHOP], tls=False))
