"""A repo made for Disco, with only a disco.json, on one real daemon (Docker, swarm, Caddy, git
over SSH): it deploys and serves as its file says, `disco config:show` writes it as disco.toml,
keys that are unknown or that this server cannot honour refuse the push before the ref moves,
and a disco.toml beside it wins, saying so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps import BASE, BUSYBOX
from conftest import Disco, Key, commit, laptop_cli, make_repo, require_docker, server_ref, shared_disco, wait_for
from runtime.appconfig import parse_app_config
from runtime.discojson import parse_disco_json


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory):
    require_docker()
    yield from shared_disco(tmp_path_factory.mktemp("disco-json"))


def push(disco: Disco, key: Key, repo: Path, project: str):
    return disco.git(key, "push", disco.url(project), "main", cwd=repo, timeout=300)


# Listens on 8080 though it EXPOSEs 8000: only disco.json's port makes it reachable.
APP = [*BASE, "EXPOSE 8000", 'CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/data"]']
DISCO_JSON = {
    "version": "1.0",
    "services": {
        "web": {"port": 8080, "volumes": [{"name": "data", "destinationPath": "/data"}]},
        "worker": {"command": "busybox sh -c 'while true; do echo worker of $DISCO_DEPLOYMENT; busybox sleep 1; done'"},
        "tick": {"type": "cron", "schedule": "0 3 * * *", "timeout": 30,
                 "command": "busybox sh -c 'echo tick >> /data/ticks'",
                 "volumes": [{"name": "data", "destinationPath": "/data"}]},
        "hook:deploy:start:before": {"type": "command", "command": "busybox sh -c 'echo released > /data/index.html'",
                                     "volumes": [{"name": "data", "destinationPath": "/data"}]},
    },
}


def test_a_repo_with_only_disco_json_deploys_serves_and_shows_as_disco_toml(rig, tmp_path: Path):
    disco, alice = rig
    text = json.dumps(DISCO_JSON, indent=2)
    repo = make_repo(tmp_path / "fromdisco", {"busybox": BUSYBOX.read_bytes(), "Dockerfile": "\n".join(APP),
                                              "disco.json": text})
    pushed = push(disco, alice, repo, "fromdisco")
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert "read disco.json (there is no disco.toml)" in pushed.stderr
    # The hook ran as the release command, on the web service's volume; web answers on 8080.
    assert "running the release command" in pushed.stderr
    assert disco.get("fromdisco.localhost").text == "released\n"
    assert wait_for("the worker's output", lambda: "worker of 1" in disco.api(
        "GET", "/projects/fromdisco/logs", service="worker", tail=20).text, timeout=120)
    # The cron service is the scheduler's, with its schedule; a run now writes to the volume.
    listed = {s["service"]: s for s in disco.api("GET", "/projects/fromdisco/cron").json()}
    assert list(listed) == ["tick"] and listed["tick"]["schedule"] == "0 3 * * *"
    run = disco.api("POST", "/projects/fromdisco/cron/tick/runs").json()

    def finished() -> dict | None:
        found = [r for r in disco.api("GET", "/projects/fromdisco/cron/tick/runs").json() if r["id"] == run["id"]]
        return found[0] if found and found[0]["status"] != "running" else None

    assert wait_for("the run of tick", finished, timeout=120)["status"] == "succeeded"
    assert disco.get("fromdisco.localhost", "/ticks").text == "tick\n"

    # config:show writes it as disco.toml, which reads back as the same configuration.
    shown = disco.api("GET", "/projects/fromdisco/config").json()
    assert shown["source"] == "disco.json" and shown["procfile"] is False
    assert shown["commit"] == server_ref(disco, "fromdisco")
    assert parse_app_config(shown["toml"]) == parse_disco_json(text)
    assert "port = 8080" in shown["toml"] and "[release]" in shown["toml"] and "timeout = 30" in shown["toml"]
    cli = laptop_cli(disco, tmp_path / "laptop")
    printed = cli("config:show", "-p", "fromdisco", "--ref", "main")
    assert printed.returncode == 0 and printed.stdout == shown["toml"], printed.stderr
    assert disco.api("GET", "/projects/fromdisco/config", ref="nope").status_code == 404
    assert disco.api("GET", "/projects/fromdisco/config", ref="--output=/tmp/x").status_code == 400

    # Moving over is one copy: disco.toml beside disco.json wins, and the push says disco.json is ignored.
    (repo / "disco.toml").write_text(shown["toml"])
    commit(repo, {"disco.json": json.dumps({**DISCO_JSON, "images": {"default": {"dockerfile": "Nope"}}})},
           "disco.toml now")
    moved = push(disco, alice, repo, "fromdisco")
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert "disco.json ignored: disco.toml is read when a repo has both" in moved.stderr
    assert disco.get("fromdisco.localhost").text == "released\n"
    again = disco.api("GET", "/projects/fromdisco/config").json()
    assert again["source"] == "disco.toml" and "# disco.json ignored" in again["toml"]


REFUSED = [
    ({"port": 8080, "replicas": 2}, "unknown key 'services.web.replicas'"),
    ({"extraSwarmParams": "--limit-cpu 1"}, "services.web.extraSwarmParams is not supported here"),
    ({"type": "cgi"}, "services.web.type 'cgi' is not supported here"),
    ({"publishedPorts": [{"publishedAs": 80, "fromContainerPort": 8080}]},
     "services.web.publishedPorts[0].publishedAs must be from 1024 to 65535"),
]


def test_unknown_and_unsupported_keys_refuse_the_push_before_the_ref_moves(rig, tmp_path: Path):
    disco, alice = rig
    repo = make_repo(tmp_path / "r", {"busybox": BUSYBOX.read_bytes(), "Dockerfile": "\n".join(APP)})
    for number, (service, said) in enumerate(REFUSED):
        commit(repo, {"disco.json": json.dumps({"version": "1.0", "services": {"web": service}})}, f"bad {number}")
        refused = push(disco, alice, repo, "refused")
        assert refused.returncode != 0
        assert "remote rejected" in refused.stderr and said in refused.stderr, refused.stderr[-2000:]
        assert server_ref(disco, "refused") is None
