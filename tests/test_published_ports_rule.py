"""The rule that refuses a published host port Disco uses or something else publishes
(hooks/ports.py), as data: no Docker. tests/test_published_ports.py runs it for real."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from hooks.ports import published_port_problem
from runtime.appconfig import parse_app_config
from runtime.docker_engine import HostPort
from runtime.settings import Settings

DB = '[services.db]\ncommand = "db"\npublish = ["5432:5432/tcp"]\n'


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, instance="disco", ssh_port=2222, api_port=8800, http_port=8080,
                    https_port=8443)


def problem(settings: Settings, text: str, taken: Sequence[HostPort] = (), scale: dict[str, int] | None = None,
            project: str = "shop") -> str | None:
    return published_port_problem(parse_app_config(text), project, settings, scale or {}, lambda: list(taken))


def test_a_free_port_passes(settings: Settings):
    assert problem(settings, DB) is None
    assert problem(settings, DB, (HostPort(5433, "tcp", "disco-other-db", "disco", "other"),)) is None


def test_an_app_that_publishes_nothing_does_not_ask_docker(settings: Settings):
    def never() -> list[HostPort]:
        raise AssertionError("asked")
    assert published_port_problem(parse_app_config('[services.web]\nport = 8000\n'), "shop", settings, {},
                                  never) is None
    assert published_port_problem(parse_app_config(None), "shop", settings, {}, never) is None


@pytest.mark.parametrize("port, what", [
    (2222, "is the port of Disco's git-over-SSH server (ssh_port)"),
    (8800, "is the port of Disco's API (api_port)"),
    (8080, "is the port Disco's proxy serves HTTP on (http_port)"),
    (8443, "is the port Disco's proxy serves HTTPS on (https_port)"),
])
def test_the_ports_disco_itself_uses_are_refused_naming_them_and_the_fix(settings: Settings, port: int, what: str):
    found = problem(settings, f'[services.db]\ncommand = "db"\npublish = ["{port}:5432"]\n')
    assert found == (f"services.db.publish: host port {port}/tcp {what}; "
                     f"publish another host port, like \"{port + 1}:5432/tcp\"")


def test_disco_uses_tcp_only_so_the_same_number_in_udp_is_free(settings: Settings):
    assert problem(settings, '[services.dns]\ncommand = "dns"\npublish = ["2222:53/udp"]\n') is None


def test_a_port_another_project_publishes_is_refused_naming_the_project(settings: Settings):
    taken = [HostPort(5432, "tcp", "disco-billing-db", "disco", "billing")]
    assert problem(settings, DB, taken) == (
        "services.db.publish: host port 5432/tcp is already published by project 'billing' "
        "(swarm service disco-billing-db); publish another host port, like \"5433:5432/tcp\", or free it there first")


def test_the_same_number_in_the_other_protocol_is_not_a_clash(settings: Settings):
    assert problem(settings, DB, [HostPort(5432, "udp", "disco-billing-db", "disco", "billing")]) is None


def test_the_projects_own_service_keeps_its_port_across_deploys(settings: Settings):
    assert problem(settings, DB, [HostPort(5432, "tcp", "disco-shop-db", "disco", "shop")]) is None
    # The same project name in another instance on the same swarm is someone else.
    found = problem(settings, DB, [HostPort(5432, "tcp", "staging-shop-db", "staging", "shop")])
    assert found is not None and "the swarm service staging-shop-db, which is not one of this Disco's projects" in found


def test_a_port_of_a_service_disco_did_not_make_is_refused_too(settings: Settings):
    found = problem(settings, DB, [HostPort(5432, "tcp", "postgres", "", "")])
    assert found is not None and "already published by the swarm service postgres" in found


def test_a_publishing_service_runs_one_task(settings: Settings):
    found = problem(settings, DB.replace('command = "db"', 'command = "db"\nreplicas = 2'))
    assert found == ("services.db publishes 5432/tcp on the host, so it runs one task: it is set to 2 replicas, "
                     "and two tasks cannot share a host port (set replicas = 1, or `disco scale:set db=1 -p shop`)")
    # `disco scale` counts: it overrides disco.toml's replicas.
    assert problem(settings, DB, scale={"db": 3}) is not None
    assert problem(settings, DB, scale={"db": 0}) is None


def test_the_highest_port_suggests_the_one_below(settings: Settings):
    found = problem(settings, '[services.db]\ncommand = "db"\npublish = ["65535:1"]\n',
                    [HostPort(65535, "tcp", "x", "", "")])
    assert found is not None and '"65534:1/tcp"' in found
