"""Deploy on push, end to end: real git + ssh, dockerd with swarm, BuildKit, and Caddy.

Every app is built here FROM scratch with busybox; every test has its own instance name, so
its services, images, volumes and proxy are removed afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from apps import BASE, SERVE, new_version, shell_cmd, web_app
from conftest import Disco, Key, Poller, commit, head, require_docker, run, server_ref


@pytest.fixture
def live(disco: Disco, admin_key: Key) -> Disco:
    require_docker()
    disco.start()
    return disco


def push(disco: Disco, key: Key, repo: Path, project: str = "myapp", *extra: str) -> subprocess.CompletedProcess:
    return disco.git(key, "push", *extra, disco.url(project), "main", cwd=repo, timeout=300)


def deployments(disco: Disco, project: str = "myapp") -> list[dict]:
    with sqlite3.connect(disco.data_dir / "disco.sqlite3") as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM deployments WHERE project = ? ORDER BY number", [project]).fetchall()
        return [dict(row) for row in rows]


def body(disco: Disco, host: str = "myapp.localhost", path: str = "/") -> str:
    response = disco.get(host, path)
    assert response.status_code == 200, (response.status_code, response.text)
    return response.text


def inspect_service(name: str) -> dict:
    return json.loads(run(["/usr/bin/docker", "service", "inspect", name], check=True).stdout)[0]


def docker_rows(*args: str) -> list[dict]:
    """`docker ... ls` as one dict per row."""
    out = run(["/usr/bin/docker", *args, "--format", "{{json .}}"], check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def service_env(disco: Disco, service: str = "web") -> dict[str, str]:
    spec = inspect_service(f"{disco.instance}-myapp-{service}")["Spec"]
    return dict(item.split("=", 1) for item in spec["TaskTemplate"]["ContainerSpec"]["Env"])


def test_push_deploys_then_a_second_version_replaces_it(live: Disco, admin_key: Key, tmp_path: Path):
    repo = web_app(tmp_path / "app", "v1\n")
    first = push(live, admin_key, repo)
    assert first.returncode == 0, first.stderr
    assert "remote: deployment #1 is live at myapp.localhost" in first.stderr
    assert "remote: #" in first.stderr  # BuildKit's build output streamed as remote: lines
    assert body(live) == "v1\n"
    log = Path(deployments(live)[0]["log_path"]).read_text()
    assert "naming to" in log and "deployment #1 is live" in log

    new_version(repo, "v2\n")
    with Poller(live) as poller:
        second = push(live, admin_key, repo)
        time.sleep(1)
    assert second.returncode == 0, second.stderr
    assert body(live) == "v2\n"
    assert "leave swarm's DNS" not in second.stderr, "the deploy waited a fixed time instead of watching the DNS"
    assert poller.errors == []
    assert set(poller.bodies) <= {"v1\n", "v2\n"} and poller.bodies[-1] == "v2\n"

    records = deployments(live)
    assert [(d["number"], d["status"]) for d in records] == [(1, "replaced"), (2, "live")]
    assert records[1]["commit_sha"] == head(repo) and records[1]["user"] == "alice"
    assert set(json.loads(records[1]["timings"])) >= {"build", "start", "health", "switch", "cleanup"}
    env = service_env(live)
    assert env["PORT"] == "8000" and env["DISCO_PROJECT"] == "myapp" and env["DISCO_SERVICE"] == "web"
    assert env["DISCO_DEPLOYMENT"] == "2" and env["DISCO_COMMIT"] == head(repo)
    labels = inspect_service(f"{live.instance}-myapp-web")["Spec"]["Labels"]
    assert labels == {"disco.instance": live.instance, "disco.project": "myapp", "disco.service": "web",
                      "disco.deployment": "2"}
    assert live.get("unknown.localhost").status_code == 404


@pytest.mark.parametrize(
    "case, dockerfile, toml, reason",
    [
        ("build error", [*BASE, "COPY missing.txt /x", SERVE], None, "build failed"),
        ("app crashes", [*BASE, "COPY www /www", "EXPOSE 8000", 'CMD ["/bin/busybox", "false"]'], None,
         "exited with code 1"),
        ("never healthy", None, '[services.web]\nport = 8000\nhealth = "/missing"\nhealth_timeout = 3\n',
         "health check failed for {instance}-myapp-web: GET /missing on port 8000 got HTTP/1.1 404 Not Found"),
    ],
)
def test_a_failed_deploy_leaves_v1_serving(live: Disco, admin_key: Key, tmp_path: Path,
                                           case: str, dockerfile: list[str] | None, toml: str | None, reason: str):
    repo = web_app(tmp_path / "app", "v1\n")
    assert push(live, admin_key, repo).returncode == 0
    v1 = head(repo)
    extra = {"disco.toml": toml} if toml else {}
    new_version(repo, "broken\n", dockerfile, **extra)
    with Poller(live) as poller:
        result = push(live, admin_key, repo)
    assert result.returncode != 0, case
    assert reason.format(instance=live.instance) in result.stderr
    assert "deployment #2 failed" in result.stderr and "the previous version keeps serving" in result.stderr
    assert poller.errors == [] and set(poller.bodies) == {"v1\n"}
    assert body(live) == "v1\n"
    assert [d["status"] for d in deployments(live)] == ["live", "failed"]
    assert reason.format(instance=live.instance) in deployments(live)[1]["reason"]
    assert server_ref(live, "myapp") == v1  # the branch names what is deployed...
    assert not any(t.endswith(":2") or ":2-" in t for t in run(["/usr/bin/docker", "images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout.split() if t.startswith(live.instance))
    # ...so pushing the same commit again is a real push that deploys again.
    again = push(live, admin_key, repo)
    assert "Everything up-to-date" not in again.stderr
    assert "deployment #3" in again.stderr
    # A good version pushed at once after a failure goes live, though swarm may still be
    # rolling the failed one back.
    new_version(repo, "v3\n", **{"disco.toml": "[services.web]\nport = 8000\n"})
    fixed = push(live, admin_key, repo)
    assert fixed.returncode == 0, fixed.stderr
    assert body(live) == "v3\n"


def test_first_deploy_failing_leaves_nothing_running(live: Disco, admin_key: Key, tmp_path: Path):
    repo = web_app(tmp_path / "app", "v1\n", [*BASE, 'CMD ["/bin/busybox", "false"]'])
    result = push(live, admin_key, repo)
    assert result.returncode != 0 and "nothing was left running" in result.stderr
    assert run(["/usr/bin/docker", "service", "inspect", f"{live.instance}-myapp-web"]).returncode != 0
    live.wait_for_proxy()  # the failed deploy never reached the switch, which waits for Caddy
    assert live.get("myapp.localhost").status_code == 404
    assert server_ref(live, "myapp") is None


def test_deploy_branch_cannot_be_deleted(live: Disco, admin_key: Key, tmp_path: Path):
    repo = web_app(tmp_path / "app")
    assert push(live, admin_key, repo).returncode == 0
    refused = live.git(admin_key, "push", live.url("myapp"), ":main", cwd=repo)
    assert "[remote rejected] main (the deploy branch 'main' cannot be deleted)" in refused.stderr
    assert body(live) == "v1\n"


def test_volume_keeps_data_across_deploys_and_env_reaches_the_app(live: Disco, admin_key: Key, tmp_path: Path):
    toml = '[services.web]\nvolumes = ["data:/data"]\n'
    writer = [*BASE, "COPY www /www", "EXPOSE 8000",
              shell_cmd("echo written-by-v1 > /data/note; env > /www/env.txt; exec /bin/busybox httpd -f -p 8000 -h /www")]
    repo = web_app(tmp_path / "app", "v1\n", writer, **{"disco.toml": toml})
    # Env vars are set before the first deploy straight in the store, as the API will.
    from runtime.store import Store
    store = Store(live.data_dir / "disco.sqlite3")
    store.set_env("myapp", {"SECRET_TOKEN": "s3cr3t-value-42"})
    first = push(live, admin_key, repo)
    assert first.returncode == 0, first.stderr
    env_txt = body(live, path="/env.txt")
    assert "SECRET_TOKEN=s3cr3t-value-42" in env_txt and "PORT=8000" in env_txt
    assert "s3cr3t-value-42" not in first.stderr
    assert "s3cr3t-value-42" not in Path(deployments(live)[0]["log_path"]).read_text()

    reader = [*BASE, "EXPOSE 8000", 'CMD ["/bin/busybox", "httpd", "-f", "-p", "8000", "-h", "/data"]']
    new_version(repo, "v2\n", reader, **{"disco.toml": toml})
    assert push(live, admin_key, repo).returncode == 0
    assert body(live, path="/note") == "written-by-v1\n"
    volumes = run(["/usr/bin/docker", "volume", "ls", "-q"]).stdout.split()
    assert f"{live.instance}-myapp-data" in volumes


def test_worker_service_without_port_and_replicas_from_disco_toml(live: Disco, admin_key: Key, tmp_path: Path):
    toml = (
        '[services.web]\nreplicas = 2\nvolumes = ["shared:/www"]\n\n'
        '[services.worker]\nvolumes = ["shared:/out"]\n'
        'command = "/bin/busybox sh -c \'while true; do echo working > /out/worker.txt; sleep 1; done\'"\n'
    )
    repo = web_app(tmp_path / "app", "v1\n", **{"disco.toml": toml})
    result = push(live, admin_key, repo)
    assert result.returncode == 0, result.stderr
    assert "waiting for %s-myapp-worker to be healthy (no crash" % live.instance in result.stderr
    deadline = time.monotonic() + 20
    while live.get("myapp.localhost", "/worker.txt").text != "working\n":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    services = {s["Name"]: s["Replicas"] for s in docker_rows("service", "ls", "--filter", "label=disco.project=myapp")
                if s["Name"].startswith(live.instance)}
    assert services == {f"{live.instance}-myapp-web": "2/2", f"{live.instance}-myapp-worker": "1/1"}

    # The worker is private to the project: its update is watched from its own new task.
    new_version(repo, "v2\n")
    second = push(live, admin_key, repo)
    assert second.returncode == 0, second.stderr
    assert "leave swarm's DNS" not in second.stderr, "the deploy waited a fixed time instead of watching the DNS"

    # Dropping the worker from disco.toml removes its service on the next deploy.
    commit(repo, {"disco.toml": '[services.web]\nreplicas = 2\nvolumes = ["shared:/www"]\n'}, "no worker")
    assert push(live, admin_key, repo).returncode == 0
    live.cleaned_up("myapp")
    assert run(["/usr/bin/docker", "service", "inspect", f"{live.instance}-myapp-worker"]).returncode != 0


def test_scale_is_kept_across_deploys(live: Disco, admin_key: Key, tmp_path: Path):
    repo = web_app(tmp_path / "app", "v1\n")
    assert push(live, admin_key, repo).returncode == 0
    platform = local_platform(live)
    from hooks import operations
    operations.scale(platform, "myapp", "alice", {"web": 2})
    new_version(repo, "v2\n")
    assert push(live, admin_key, repo).returncode == 0
    spec = inspect_service(f"{live.instance}-myapp-web")["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 2
    assert {body(live) for _ in range(6)} == {"v2\n"}


def test_an_update_is_watched_until_the_proxys_dns_gives_only_its_new_tasks(live: Disco, admin_key: Key,
                                                                            tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    """The engine's wait after an update, on swarm's own DNS asked from inside Caddy's network."""
    from runtime import swarm_dns
    from runtime.docker_engine import Engine
    from runtime.docker_specs import Attachment, ServiceSpec
    assert push(live, admin_key, web_app(tmp_path / "app", "v1\n")).returncode == 0
    engine, name = Engine(live.instance), f"{live.instance}-myapp-web"

    def addresses_of(deployment: str) -> set[str]:
        """Where the running tasks of one deployment are on the proxy's network, as swarm says."""
        ids = run(["/usr/bin/docker", "service", "ps", "-q", "--filter", "desired-state=running", name],
                  check=True).stdout.split()
        tasks = json.loads(run(["/usr/bin/docker", "inspect", *ids], check=True).stdout)
        return {address.split("/")[0] for task in tasks if task["Status"]["State"] == "running"
                and task["Spec"]["ContainerSpec"]["Labels"]["disco.deployment"] == deployment
                for net in task["NetworksAttachments"] if net["Network"]["Spec"]["Name"] == engine.network_name
                for address in net["Addresses"]}

    old = addresses_of("1")
    spec = ServiceSpec(name=name, image=deployments(live)[0]["image"], env={"PORT": "8000"}, replicas=1, port=8000,
                       networks=(Attachment(engine.project_network_name("myapp"), ("web",)),
                                 Attachment(engine.network_name)),
                       labels=engine.labels(project="myapp", service="web", deployment="2"))
    assert len(old) == 1 and not engine.apply(spec)
    engine.wait_rollout(spec, False, 120, lambda line: None)
    heard: list[str] = []
    assert engine.wait_old_tasks_unresolved(spec, 10, heard.append), "the proxy's DNS could not be watched"
    assert heard == []
    proxy = run(["/usr/bin/docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={engine.proxy_name}"],
                check=True).stdout.split()
    pid = int(run(["/usr/bin/docker", "inspect", "-f", "{{.State.Pid}}", *proxy], check=True).stdout)
    host_network = os.readlink("/proc/thread-self/ns/net")
    with swarm_dns.resolver_in(pid) as resolver:  # what Caddy's next lookup gets, asked at once
        assert swarm_dns.addresses(resolver, name, timeout=1) == addresses_of("2") != old
    # Only the short-lived thread that made the socket entered Caddy's network; this one did not.
    assert os.readlink("/proc/thread-self/ns/net") == host_network != os.readlink(f"/proc/{pid}/ns/net")
    # Tasks that never leave (here deployment 2's, seen from a deployment 3 that never ran) are
    # waited for up to the timeout, and said.
    later = ServiceSpec(name=name, image=spec.image, networks=spec.networks, env={}, replicas=1,
                        labels={**spec.labels, "disco.deployment": "3"})
    assert engine.wait_old_tasks_unresolved(later, 0.3, heard.append)
    assert heard == [f"1 old task(s) of {name} still in swarm's DNS after 0.3 s: going live, "
                     "swarm stops the old tasks next"]
    # A resolver that never answers (every datagram lost) is asked again until the timeout, not trusted.
    def silent(resolver: object, asked: str, timeout: float) -> frozenset[str]:
        raise TimeoutError(f"Docker's DNS did not answer for {asked} in {timeout} s")

    monkeypatch.setattr(swarm_dns, "addresses", silent)
    assert engine.wait_old_tasks_unresolved(later, 0.3, heard.append)
    assert heard[-1] == (f"no answer about {name} from swarm's DNS after 0.3 s: going live, "
                         "swarm stops the old tasks next")
    monkeypatch.undo()
    # A service private to its project is watched from one of its own new tasks on this node
    # (a worker's update: test_worker_service_without_port_and_replicas_from_disco_toml); with
    # none here, the deploy waits a fixed time instead.
    private = ServiceSpec(name=name, image=spec.image, networks=spec.networks[:1], env={}, replicas=1,
                          labels={**spec.labels, "disco.deployment": "3"})
    assert not engine.wait_old_tasks_unresolved(private, 10, heard.append)


def local_platform(disco: Disco):
    """The hooks layer in this process, on the daemon's data dir (the API will call the same)."""
    from hooks.platform import Platform
    from runtime.caddy import CaddyAdmin
    from runtime.docker_engine import Engine
    from runtime.settings import resolve_settings
    from runtime.store import Store
    settings = resolve_settings({"data_dir": str(disco.data_dir), "instance": disco.instance, "tls": False,
                                 "apps_domain": "localhost"}, {})
    platform = Platform.create(settings, Store(settings.db_path), Engine(disco.instance), CaddyAdmin(settings.run_dir))
    platform.router.proxy_ready.set()
    return platform


def test_rollback_and_env_change_reuse_images(live: Disco, admin_key: Key, tmp_path: Path):
    app = [*BASE, "COPY www /www", "EXPOSE 8000", shell_cmd("env > /www/env.txt; exec /bin/busybox httpd -f -p 8000 -h /www")]
    repo = web_app(tmp_path / "app", "v1\n", app)
    assert push(live, admin_key, repo).returncode == 0
    new_version(repo, "v2\n", app)
    assert push(live, admin_key, repo).returncode == 0
    assert live.stop() == 0  # the hooks run in this process now; Caddy and the app keep serving
    platform = local_platform(live)
    from hooks import operations
    from hooks.errors import DeployFailed

    ticket = operations.rollback(platform, "myapp", "alice")
    final = ticket.wait(120)
    assert final.status == "live", final.reason
    assert final.rollback_of == 1 and final.source == "rollback"
    assert body(live) == "v1\n"
    assert "reusing image" in Path(final.log_path).read_text()
    assert [d["status"] for d in deployments(live)] == ["replaced", "rolled back", "live"]

    ticket = operations.set_env(platform, "myapp", "alice", {"GREETING": "hello-env"})
    final = ticket.wait(120)
    assert final.status == "live" and final.source == "env"
    assert "GREETING=hello-env" in body(live, path="/env.txt")
    assert body(live) == "v1\n"  # same image: the env change did not rebuild v2
    with pytest.raises(DeployFailed, match="PORT is set by Disco"):
        operations.set_env(platform, "myapp", "alice", {"PORT": "1"})
    with pytest.raises(DeployFailed, match="deployment #9"):
        operations.rollback(platform, "myapp", "alice", 9)


def test_queue_runs_one_deploy_per_project_and_supersedes(live: Disco, admin_key: Key, tmp_path: Path):
    # v2 starts slowly, so that v3 and v4 are pushed while it runs, however loaded the machine.
    slow = [*BASE, "COPY www /www", "EXPOSE 8000", shell_cmd("sleep 15; exec /bin/busybox httpd -f -p 8000 -h /www")]
    repo = web_app(tmp_path / "app", "v1\n")
    assert push(live, admin_key, repo).returncode == 0
    results: dict[str, subprocess.CompletedProcess] = {}

    def push_in_background(name: str) -> threading.Thread:
        thread = threading.Thread(target=lambda: results.setdefault(name, push(live, admin_key, repo)))
        thread.start()
        return thread

    new_version(repo, "v2\n", slow)
    second = push_in_background("v2")
    wait_for_status(live, 2, "starting")
    new_version(repo, "v3\n")
    third = push_in_background("v3")
    wait_for_status(live, 3, "queued")
    new_version(repo, "v4\n")
    fourth = push_in_background("v4")
    for thread in (second, third, fourth):
        thread.join(240)
    assert results["v2"].returncode == 0, results["v2"].stderr
    assert "queued: waiting for deployment #2" in results["v3"].stderr
    assert results["v3"].returncode != 0 and "superseded by deployment #4" in results["v3"].stderr
    assert results["v4"].returncode == 0, results["v4"].stderr
    assert [d["status"] for d in deployments(live)] == ["replaced", "replaced", "superseded", "live"]
    assert body(live) == "v4\n"


def test_projects_deploy_in_parallel(live: Disco, admin_key: Key, tmp_path: Path):
    # Long enough for the fast project's whole deploy on a loaded machine.
    slow = [*BASE, "COPY www /www", "EXPOSE 8000", shell_cmd("sleep 15; exec /bin/busybox httpd -f -p 8000 -h /www")]
    slow_repo = web_app(tmp_path / "slow", "slow\n", slow)
    fast_repo = web_app(tmp_path / "fast", "fast\n")
    results: dict[str, subprocess.CompletedProcess] = {}
    thread = threading.Thread(target=lambda: results.setdefault("slow", push(live, admin_key, slow_repo, "slowapp")))
    thread.start()
    wait_for_status(live, 1, "starting", "slowapp")
    fast = push(live, admin_key, fast_repo, "fastapp")
    assert fast.returncode == 0, fast.stderr
    assert "queued" not in fast.stderr and "slow" not in results, "the fast project waited for the slow one"
    thread.join(120)
    assert results["slow"].returncode == 0
    assert body(live, "fastapp.localhost") == "fast\n" and body(live, "slowapp.localhost") == "slow\n"


def wait_for_status(disco: Disco, number: int, status: str, project: str = "myapp", timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = [d["status"] for d in deployments(disco, project) if d["number"] == number]
        if found == [status]:
            return
        assert time.monotonic() < deadline, f"deployment #{number} never reached {status}: {found}"
        time.sleep(0.1)


def test_daemon_killed_mid_deploy_then_restarted(live: Disco, admin_key: Key, tmp_path: Path):
    repo = web_app(tmp_path / "app", "v1\n")
    assert push(live, admin_key, repo).returncode == 0
    slow = [*BASE, "COPY www /www", "EXPOSE 8000", shell_cmd("sleep 8; exec /bin/busybox httpd -f -p 8000 -h /www")]
    new_version(repo, "v2\n", slow)
    with Poller(live) as poller:
        pusher = subprocess.Popen(["git", "push", live.url("myapp"), "main"], cwd=repo, env=live.git_env(admin_key),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_status(live, 2, "starting")
        live.stop(signal.SIGKILL)
        pusher.wait(30)
        live.start()
        time.sleep(1)
    assert poller.errors == []
    status = deployments(live)[1]["status"]
    assert status in ("failed", "live")
    assert deployments(live)[1]["reason"]
    # Nothing of the interrupted deployment is left half-done, and the next push deploys.
    new_version(repo, "v3\n")
    result = push(live, admin_key, repo)
    assert result.returncode == 0, result.stderr
    assert body(live) == "v3\n"


def test_restart_keeps_routes_and_proxy(live: Disco, admin_key: Key, tmp_path: Path):
    repo = web_app(tmp_path / "app", "v1\n")
    assert push(live, admin_key, repo).returncode == 0
    proxy_id = inspect_service(f"{live.instance}-caddy")["ID"]
    assert live.stop() == 0
    assert body(live) == "v1\n"  # the app and Caddy do not need the daemon to serve
    live.start()
    live.wait_for_proxy()
    assert inspect_service(f"{live.instance}-caddy")["ID"] == proxy_id
    assert body(live) == "v1\n"


def test_sigterm_stops_the_daemon_while_caddy_cannot_start(disco: Disco, admin_key: Key):
    require_docker()
    disco.extra_args = ["--caddy-image", f"{disco.instance}-no-such-caddy:1"]  # swarm retries it for ever
    disco.start()
    disco.wait_for_log("ready")
    assert disco.stop(timeout=20) == 0
    assert "proxy up" not in disco.log() and "shutting down" in disco.log()


def test_build_uses_disco_toml_build_section_buildkit_and_symlinks(live: Disco, admin_key: Key, tmp_path: Path):
    dockerfile = [
        *BASE,
        "ARG GREETING",
        "COPY www /www",
        "RUN --mount=type=cache,target=/cache echo \"$GREETING\" > /www/greeting.txt && echo cached > /cache/x",
        "EXPOSE 8000",
        SERVE,
    ]
    import apps
    files = apps.web_files("v1\n", dockerfile)
    repo = tmp_path / "app"
    from conftest import make_repo
    make_repo(repo, {f"site/{k}": v for k, v in files.items() if k != "Dockerfile"} | {
        "build/Dockerfile.prod": files["Dockerfile"],
        "disco.toml": '[build]\ndockerfile = "build/Dockerfile.prod"\ncontext = "site"\nargs = { GREETING = "hi-arg" }\n',
    })
    (repo / "site/www/link.html").symlink_to("index.html")
    commit(repo, {}, "symlink")
    result = push(live, admin_key, repo)
    assert result.returncode == 0, result.stderr
    assert body(live, path="/greeting.txt") == "hi-arg\n"
    assert body(live, path="/link.html") == "v1\n"


def test_old_images_are_pruned(disco: Disco, admin_key: Key, tmp_path: Path):
    require_docker()
    disco.extra_args = ["--keep-images", "2"]
    disco.start()
    repo = web_app(tmp_path / "app", "v1\n")
    for version in range(1, 5):
        if version > 1:
            new_version(repo, f"v{version}\n")
        assert push(disco, admin_key, repo).returncode == 0
    disco.cleaned_up("myapp")
    tags = sorted(t for t in run(["/usr/bin/docker", "images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout.split()
                  if t.startswith(f"{disco.instance}-myapp:"))
    assert tags == sorted(d["image"] for d in deployments(disco)[2:])  # tags are random: the records hold them
    assert [t.split(":")[1].split("-")[0] for t in tags] == ["3", "4"]


def test_symlinks_cannot_lead_the_build_out_of_the_repo(live: Disco, admin_key: Key, tmp_path: Path):
    repo = web_app(tmp_path / "app", "v1\n", **{"disco.toml": '[build]\ncontext = "ctx"\n'})
    (repo / "ctx").symlink_to(str(live.data_dir))  # would put the server's database in the image
    commit(repo, {}, "escape")
    result = push(live, admin_key, repo)
    assert result.returncode != 0
    assert "build.context leads outside the repo (through a symlink)" in result.stderr
    assert not [t for t in run(["/usr/bin/docker", "images", "--format", "{{.Repository}}"]).stdout.split()
                if t.startswith(live.instance + "-myapp")]


def test_a_service_name_cannot_take_over_another_projects_service(live: Disco, admin_key: Key, tmp_path: Path):
    other = web_app(tmp_path / "other", "admin-site\n")
    assert push(live, admin_key, other, "shop-admin").returncode == 0
    # "shop" + service "admin-web" once spelled the same swarm name as "shop-admin" + "web", and
    # the second project could never deploy; names are joined so that they cannot (runtime/names.py).
    repo = web_app(tmp_path / "app", "v1\n", **{"disco.toml": "[services.web]\n\n[services.admin-web]\nport = 8000\n"})
    result = push(live, admin_key, repo, "shop")
    assert result.returncode == 0, result.stderr
    assert body(live, "shop-admin.localhost") == "admin-site\n"
    assert body(live, "shop.localhost") == "v1\n"
    theirs = inspect_service(f"{live.instance}-shop--admin-web")["Spec"]["Labels"]
    ours = inspect_service(f"{live.instance}-shop-admin--web")["Spec"]["Labels"]
    assert (theirs["disco.project"], theirs["disco.service"]) == ("shop-admin", "web")
    assert (ours["disco.project"], ours["disco.service"]) == ("shop", "admin-web")


def test_caddy_restarting_resumes_its_routes(live: Disco, admin_key: Key, tmp_path: Path):
    repo = web_app(tmp_path / "app", "v1\n")
    assert push(live, admin_key, repo).returncode == 0
    before = run(["/usr/bin/docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={live.instance}-caddy"],
                 check=True).stdout.split()
    assert len(before) == 1
    run(["/usr/bin/docker", "kill", before[0]], check=True)
    deadline = time.monotonic() + 60
    while True:  # swarm starts a new Caddy, which resumes the config it autosaved
        try:
            if live.get("myapp.localhost", timeout=2).text == "v1\n":
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "Caddy did not come back with its routes"
        time.sleep(0.5)
    after = run(["/usr/bin/docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={live.instance}-caddy"],
                check=True).stdout.split()
    assert after and after != before


def test_the_push_returns_once_live_and_the_cleanup_finishes_after_it(disco: Disco, admin_key: Key, tmp_path: Path):
    """`git push` waits for its deployment to go live, not for retiring what it replaced. The
    cleanup, held at its start here (hooks/holds.py), runs to its end once let go, and the next
    deployment of the project waits for it."""
    require_docker()
    hold = tmp_path / "hold"
    disco.extra_env = {"DISCO_TEST_HOLD_FILE": str(hold)}
    disco.extra_args = ["--keep-images", "1"]
    disco.start()
    with_worker = '[services.web]\nport = 8000\n\n[services.worker]\ncommand = "/bin/busybox sleep 3600"\n'
    repo = web_app(tmp_path / "app", "v1\n", **{"disco.toml": with_worker})
    assert push(disco, admin_key, repo).returncode == 0
    first_image = deployments(disco)[0]["image"]
    worker = f"{disco.instance}-myapp-worker"

    hold.write_text("cleanup")
    new_version(repo, "v2\n", **{"disco.toml": "[services.web]\nport = 8000\n"})  # the worker goes
    pushed = push(disco, admin_key, repo)
    assert pushed.returncode == 0, pushed.stderr
    assert "remote: deployment #2 is live" in pushed.stderr
    disco.wait_for_log("held at cleanup")
    assert body(disco) == "v2\n"
    second = deployments(disco)[1]
    assert second["status"] == "live" and not second["finished_at"]
    # The push returned with the cleanup not begun: what #2 retires is all still there.
    assert run(["/usr/bin/docker", "service", "inspect", worker]).returncode == 0
    assert run(["/usr/bin/docker", "image", "inspect", first_image]).returncode == 0

    # The next push waits for that cleanup (it never races it), then deploys.
    new_version(repo, "v3\n", **{"disco.toml": "[services.web]\nport = 8000\n"})
    results: list[subprocess.CompletedProcess] = []
    third = threading.Thread(target=lambda: results.append(push(disco, admin_key, repo)))
    third.start()
    wait_for_status(disco, 3, "queued")
    time.sleep(1)
    assert deployments(disco)[2]["status"] == "queued"
    hold.unlink()
    third.join(240)
    assert results and results[0].returncode == 0, results[0].stderr if results else "no push"
    assert "queued: waiting for deployment #2 of myapp to finish" in results[0].stderr

    # #2's cleanup ran to its end, recorded and logged: the worker it dropped and the image of #1 are gone.
    second = deployments(disco)[1]
    assert second["finished_at"] and "cleanup" in json.loads(second["timings"])
    assert "removing service " + worker in Path(second["log_path"]).read_text()
    assert run(["/usr/bin/docker", "service", "inspect", worker]).returncode != 0
    assert run(["/usr/bin/docker", "image", "inspect", first_image]).returncode != 0
    assert body(disco) == "v3\n"
