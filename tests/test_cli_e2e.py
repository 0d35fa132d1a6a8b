"""The `disco` CLI as a team member uses it from a laptop: through the API of a real daemon,
with real git pushes, Docker, swarm and Caddy."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from apps import BASE, new_version, shell_cmd, web_app
from conftest import DISCO, Disco, Key, require_docker, run


@pytest.fixture
def laptop(disco: Disco, admin_key: Key, tmp_path: Path):
    """A repo with a `disco` remote and a CLI logged in to the daemon's API."""
    require_docker()
    disco.start()
    env = {**disco.git_env(admin_key), "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}
    env.pop("DISCO_DATA_DIR", None)
    app = [*BASE, "COPY www /www", "EXPOSE 8000",
           shell_cmd("echo app-started-$DISCO_DEPLOYMENT; env > /www/env.txt; exec /bin/busybox httpd -f -p 8000 -h /www")]
    repo = web_app(tmp_path / "app", "v1\n", app, **{"disco.toml": '[services.web]\nvolumes = ["data:/data"]\n'})
    run(["git", "remote", "add", "disco", disco.url("shop")], cwd=repo, check=True)

    def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return run([DISCO, *args], cwd=repo, env=env, input=input, timeout=300)

    login = cli("login", f"http://127.0.0.1:{disco.api_port}", input=disco.api_key + "\n")
    assert login.returncode == 0, login.stderr
    assert oct((tmp_path / "xdg/disco/config.toml").stat().st_mode & 0o777) == "0o600"
    return disco, repo, cli, env, app


def test_a_team_members_day_through_the_cli(laptop):
    disco, repo, cli, env, app = laptop
    assert cli("projects:create", "shop").returncode == 0
    assert cli("env:set", "GREETING=hello", "API_TOKEN=sup3r-s3cret", "--no-deploy").returncode == 0
    assert cli("env").stdout.split() == ["API_TOKEN", "GREETING"]
    assert "sup3r-s3cret" not in cli("env", "--json").stdout
    assert cli("domains:add", "shop.example.com").returncode == 0

    pushed = run(["git", "push", "disco", "main"], cwd=repo, env=env, timeout=300)
    assert pushed.returncode == 0, pushed.stderr
    assert "sup3r-s3cret" not in pushed.stderr
    assert disco.get("shop.example.com").text == "v1\n"
    assert "GREETING=hello" in disco.get("shop.localhost", "/env.txt").text

    # A new commit on another branch, deployed through the API while following its output.
    run(["git", "checkout", "-q", "-b", "next"], cwd=repo, check=True)
    new_version(repo, "v2\n", app, **{"disco.toml": '[services.web]\nvolumes = ["data:/data"]\n'})
    assert run(["git", "push", "disco", "next"], cwd=repo, env=env).returncode == 0
    deployed = cli("deploy", "--branch", "next")
    assert deployed.returncode == 0, deployed.stderr
    assert "deployment #2 of shop queued" in deployed.stdout
    assert "starting" in deployed.stdout and "deployment #2 is live (" in deployed.stdout
    assert disco.get("shop.example.com").text == "v2\n"

    assert cli("scale:set", "web=2").stdout.strip() == "web=2"
    assert cli("scale").stdout.strip() == "web=2"

    listed = json.loads(cli("deployments", "--json").stdout)
    assert [(d["number"], d["status"], d["source"]) for d in listed] == [(2, "live", "api"), (1, "replaced", "push")]
    output = cli("deployments:output", "1")
    assert output.returncode == 0 and "deployment #1 is live" in output.stdout

    rolled = cli("rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert disco.get("shop.example.com").text == "v1\n"
    assert cli("scale").stdout.strip() == "web=2"  # kept across the rollback

    ran = cli("run", "--", "/bin/busybox", "sh", "-c", "echo from-run; echo $GREETING; echo hi > /data/f; exit 7")
    assert ran.returncode == 7
    assert ran.stdout.split() == ["from-run", "hello"]
    again = cli("run", "--", "/bin/busybox", "cat", "/data/f")
    assert again.returncode == 0 and again.stdout == "hi\n"  # the project's volume is mounted

    info = json.loads(cli("projects:info", "--json").stdout)
    assert info["live_deployment"]["number"] == 3 and "shop.example.com" in info["domains"]

    failing = cli("env:set", "GREETING=bonjour")
    assert failing.returncode == 0, failing.stderr
    assert "GREETING=bonjour" in disco.get("shop.localhost", "/env.txt").text

    logs = cli("logs", "--tail", "50")
    assert logs.returncode == 0 and "app-started-4" in logs.stdout  # the env change's deployment

    removed = cli("projects:remove")
    assert removed.returncode == 1 and "--confirm shop" in removed.stderr
    assert cli("projects:remove", "--confirm", "shop", "--volumes").returncode == 0
    assert disco.get("shop.example.com").status_code == 404
    assert json.loads(cli("projects", "--json").stdout) == []
    assert f"{disco.instance}-shop-data" not in run(["/usr/bin/docker", "volume", "ls", "-q"]).stdout.split()


def test_cli_errors_are_one_line_and_exit_non_zero(laptop):
    disco, repo, cli, env, app = laptop
    missing = cli("projects:info", "--project", "ghost")
    assert missing.returncode == 1 and missing.stderr.strip() == "disco: project 'ghost' does not exist"
    bad = cli("env:set", "NOEQUALS")
    assert bad.returncode == 1 and "expected KEY=VALUE" in bad.stderr
    created = json.loads(cli("apikeys:create", "ci", "--expires-in-days", "7", "--json").stdout)
    assert created["key"].startswith("disco_")
    assert cli("apikeys:revoke", str(created["id"])).returncode == 0
    revoked = run([DISCO, "projects"], env={**env, "DISCO_URL": f"http://127.0.0.1:{disco.api_port}",
                                            "DISCO_API_KEY": created["key"]})
    assert revoked.returncode == 1 and "invalid, revoked or expired API key" in revoked.stderr
    nowhere = run([DISCO, "projects"], env={**env, "DISCO_URL": "http://127.0.0.1:1", "DISCO_API_KEY": "disco_x"})
    assert nowhere.returncode == 1 and "cannot reach http://127.0.0.1:1" in nowhere.stderr


def test_cancel_a_running_deploy_keeps_the_old_version(laptop):
    disco, repo, cli, env, app = laptop
    assert run(["git", "push", "disco", "main"], cwd=repo, env=env, timeout=300).returncode == 0
    slow = [*BASE, "COPY www /www", "EXPOSE 8000", shell_cmd("sleep 30; exec /bin/busybox httpd -f -p 8000 -h /www")]
    run(["git", "checkout", "-q", "-b", "slow"], cwd=repo, check=True)
    new_version(repo, "slow\n", slow)
    assert run(["git", "push", "disco", "slow"], cwd=repo, env=env).returncode == 0
    assert cli("deploy", "--branch", "slow", "--no-follow").returncode == 0
    deadline = time.monotonic() + 60
    while json.loads(cli("deployments", "--json").stdout)[0]["status"] != "starting":
        assert time.monotonic() < deadline
    cancelled = cli("deployments:cancel")
    assert cancelled.returncode == 0, cancelled.stderr
    followed = cli("deployments:output", "2")
    assert followed.returncode == 1 and "deployment #2 cancelled: cancelled by alice" in followed.stderr
    assert disco.get("shop.localhost").text == "v1\n"
    assert json.loads(cli("deployments", "--json").stdout)[0]["status"] == "cancelled"
    # The cancelled build's image lost its tag while its container ran; the next deploy's
    # cleanup removes it, so cancelled deploys do not fill the disk. Docker cannot remove it
    # while that container still stops (a shell as PID 1 waits out the 10 s SIGKILL grace).
    cancelled_containers = ["/usr/bin/docker", "ps", "-q", "--filter", f"label=disco.instance={disco.instance}",
                            "--filter", "label=disco.deployment=2"]
    deadline = time.monotonic() + 60
    while run(cancelled_containers).stdout.strip():
        assert time.monotonic() < deadline, "the cancelled deployment's container never stopped"
        time.sleep(0.5)
    assert cli("deploy").returncode == 0
    disco.cleaned_up("shop")  # `disco deploy` returns once live; the cleanup goes on a moment
    untagged = run(["/usr/bin/docker", "images", "-q", "--filter", "dangling=true",
                    "--filter", f"label=disco.instance={disco.instance}"]).stdout.split()
    assert untagged == []


def test_the_api_is_served_through_caddy_on_the_servers_domain(laptop):
    disco, repo, cli, env, app = laptop
    disco.wait_for_proxy()
    response = httpx.get(f"http://127.0.0.1:{disco.http_port}/api/v1/meta",
                         headers={"Host": "disco.test", "Authorization": f"Bearer {disco.api_key}"}, timeout=10)
    assert response.status_code == 200 and response.json()["instance"] == disco.instance


def test_team_commands_go_through_the_api_without_a_data_dir(laptop, make_key):
    disco, repo, cli, env, app = laptop
    assert cli("users:add", "dave", "--role", "deployer").returncode == 0
    key = make_key("dave")
    assert cli("keys:add", "dave", str(key.public)).returncode == 0
    assert key.fingerprint in cli("keys", "--user", "dave").stdout
    assert cli("users:grant", "dave", "shop").returncode == 0
    users = json.loads(cli("users", "--json").stdout)
    assert {"name": "dave", "role": "deployer", "projects": ["shop"]}.items() <= users[1].items()
    # The server's own shell sees the same, through the data dir.
    local = disco.cli("users:list", "--json")
    assert [u["name"] for u in json.loads(local.stdout)] == ["alice", "dave"]
    assert cli("keys:remove", key.fingerprint).returncode == 0
    assert cli("users:remove", "dave").returncode == 0
