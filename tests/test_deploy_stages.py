"""The deploy's paths, failures first, through the real Deployer, DeploymentRun and Router, with
Docker and Caddy faked in memory (tests/fake_engine.py): fast, no Docker. test_deploy.py drives
the same code against a real dockerd and Caddy.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
from fake_engine import FakeCaddy, FakeEngine

from hooks import deployment
from hooks.deployer import Deployer
from hooks.router import Router
from runtime.docker_engine import RunResult
from runtime.docker_specs import ServiceSpec
from runtime.settings import Settings, ensure_layout
from runtime.store import Deployment, DeploymentStatus, Store

WEB = "fake-shop-web"


class Rig:
    """A deployer on a fake engine, a fake Caddy and a bare repo of the project 'shop'."""

    def __init__(self, tmp_path: Path, **settings: object) -> None:
        self.settings = Settings(data_dir=tmp_path / "data", instance="fake", apps_domain="localhost", tls=False,
                                 keep_images=2, **settings)  # type: ignore[arg-type]
        ensure_layout(self.settings)
        self.store = Store(self.settings.db_path)
        self.store.add_project("shop", "alice")
        self.engine = FakeEngine("fake")
        self.caddy = FakeCaddy()
        self.router = Router(self.settings, self.store, self.engine, self.caddy)
        self.deployer = Deployer(self.settings, self.store, self.engine, self.router)
        self.work = tmp_path / "work"
        self.bare = self.settings.repos_dir / "shop.git"
        self.sha = self.commit({"Dockerfile": "FROM scratch\n", "disco.toml": '[services.web]\nhealth = "/healthz"\n'})
        git("clone", "-q", "--bare", str(self.work), str(self.bare))
        self.router.start_proxy()
        assert self.router.is_up

    def commit(self, files: dict[str, str]) -> str:
        self.work.mkdir(exist_ok=True)
        if not (self.work / ".git").exists():
            git("init", "-q", "-b", "main", str(self.work))
        for name, text in files.items():
            (self.work / name).write_text(text)
        git("-C", str(self.work), "add", "-A")
        git("-C", str(self.work), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
        return git("-C", str(self.work), "rev-parse", "HEAD").strip()

    def deploy(self, user: str = "alice") -> Deployment:
        """Deploy the commit; its record once it is done (a live one cleaned up after itself)."""
        ticket = self.deployer.enqueue("shop", self.sha, "main", user, "push")
        assert ticket.done.wait(30), "the deployment did not finish"
        assert ticket.final is not None
        return ticket.final

    def status(self, number: int) -> str:
        found = self.store.get_deployment("shop", number)
        assert found is not None
        return found.status

    def log(self, d: Deployment) -> str:
        return Path(d.log_path).read_text()


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    monkeypatch.setattr(deployment, "UPSTREAM_REFRESH_SECONDS", 0)  # no Caddy to look names up again
    return Rig(tmp_path)


def test_a_deploy_goes_live_replaces_the_previous_and_prunes_old_images(rig: Rig):
    first = rig.deploy()
    assert first.status == DeploymentStatus.LIVE and first.reason == ""
    assert rig.caddy.routed_hosts() >= {"shop.localhost"}
    assert rig.engine.deployment_of(WEB) == "1"
    assert "deployment #1 is live at shop.localhost" in rig.log(first)
    for _ in range(2):
        final = rig.deploy()
    assert final.number == 3 and final.status == DeploymentStatus.LIVE
    assert [rig.status(n) for n in (1, 2, 3)] == ["replaced", "replaced", "live"]
    assert rig.engine.deployment_of(WEB) == "3"
    assert set(json.loads(final.timings)) == {"build", "start", "health", "switch", "cleanup"}
    assert all(seconds >= 0 for seconds in json.loads(final.timings).values())
    # keep_images = 2: the live image and the newest one that ran before it.
    assert sorted(rig.engine.project_images("shop")) == [2, 3]
    assert final.image == rig.engine.tag_of(3) and final.web_port == 8000
    assert final.image.startswith("fake-shop:3-") and len(final.image) > len("fake-shop:3-") + 8  # not guessable
    # A deployment that never went live takes no place among the kept images.
    rig.engine.never_healthy[WEB] = "rollback"
    assert rig.deploy().status == DeploymentStatus.FAILED
    del rig.engine.never_healthy[WEB]
    assert rig.deploy().number == 5
    assert sorted(rig.engine.project_images("shop")) == [3, 5]


def test_the_servers_health_interval_reaches_the_service_and_the_deploy_waits_for_swarms_verdict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(deployment, "UPSTREAM_REFRESH_SECONDS", 0)
    rig = Rig(tmp_path, health_interval=7)
    waited: list[float] = []
    real_wait = rig.engine.wait_rollout

    def wait_rollout(spec: ServiceSpec, created: bool, timeout: float, *rest: Any, **kwargs: Any) -> None:
        waited.append(timeout)
        real_wait(spec, created, timeout, *rest, **kwargs)

    monkeypatch.setattr(rig.engine, "wait_rollout", wait_rollout)
    first = rig.deploy()
    assert first.status == DeploymentStatus.LIVE
    assert rig.engine.services[WEB].spec.health_interval == 7
    assert "waiting for fake-shop-web to be healthy (GET /healthz, every 7 s, up to 60 s)" in rig.log(first)
    # Swarm gives up after the start period (60 s) and 3 failed checks 7 s apart; the backstop is later.
    assert waited == [60 + 3 * 7 + 30]


@pytest.mark.parametrize("watchable", [True, False])
def test_an_update_goes_live_once_its_old_tasks_left_the_proxys_dns(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, watchable: bool):
    rig.deploy()
    watched = [call for call in rig.engine.calls if call[0] == "wait_old_tasks_unresolved"]
    assert watched == [], "a first deploy has no old tasks"
    rig.engine.dns_unwatched = set() if watchable else {WEB}
    slept: list[float] = []
    clock = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    clock.sleep = lambda seconds: (slept.append(seconds), time.sleep(seconds))
    monkeypatch.setattr(deployment, "time", clock)
    monkeypatch.setattr(deployment, "OLD_TASKS_LEAVE_DNS_SECONDS", 0.25)
    second = rig.deploy()
    assert second.status == DeploymentStatus.LIVE
    assert ("wait_old_tasks_unresolved", WEB) in rig.engine.calls
    fixed_wait = "waiting 0.25 s for the old tasks of fake-shop-web to leave swarm's DNS"
    if watchable:  # watched until they left: then only Caddy's next lookup (0 s here) and a margin
        assert slept == [pytest.approx(0.1)] and fixed_wait not in rig.log(second)
    else:
        assert slept == [pytest.approx(0.35, abs=0.02)] and fixed_wait in rig.log(second)


def test_an_update_with_a_private_service_waits_the_fixed_time_from_the_completion_not_after_the_watch(
        rig: Rig, monkeypatch: pytest.MonkeyPatch):
    _with(rig, {"Procfile": "web: ./serve\nworker: ./work\n"})
    rig.deploy()
    slept: list[float] = []
    clock = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    clock.sleep = lambda seconds: (slept.append(seconds), time.sleep(seconds))
    monkeypatch.setattr(deployment, "time", clock)
    monkeypatch.setattr(deployment, "OLD_TASKS_LEAVE_DNS_SECONDS", 0.25)
    rig.engine.dns_unwatched = {"fake-shop-worker"}  # e.g. its new task runs on another node
    rig.engine.dns_watch_seconds = 0.15  # the web's old tasks leave swarm's DNS meanwhile
    second = rig.deploy()
    assert second.status == DeploymentStatus.LIVE
    assert "waiting 0.25 s for the old tasks of fake-shop-worker to leave swarm's DNS" in rig.log(second)
    # 0.25 s from the completion, of which the web's watch took at least 0.15 (more on a busy
    # machine, never less), then Caddy's lookup (0 s here) and the 0.1 s margin; not 0.25 after the watch.
    assert len(slept) == 1 and 0.1 <= slept[0] <= 0.2 + 1e-6


def test_the_push_is_answered_at_live_and_the_next_deploy_waits_for_the_cleanup(
        rig: Rig, monkeypatch: pytest.MonkeyPatch):
    rig.deploy()
    cleaning, go_on = threading.Event(), threading.Event()
    clean_up = deployment.DeploymentRun.clean_up

    def held_clean_up(run: deployment.DeploymentRun) -> None:
        cleaning.set()
        assert go_on.wait(30)
        clean_up(run)

    monkeypatch.setattr(deployment.DeploymentRun, "clean_up", held_clean_up)
    heard: list[str] = []
    ticket = rig.deployer.enqueue("shop", rig.sha, "main", "alice", "push", listener=heard.append)
    answer = ticket.wait(30)
    assert answer is not None and answer.status == DeploymentStatus.LIVE and not answer.finished_at
    assert heard[-1].startswith("deployment #2 is live"), "the pusher gets every line up to live, and no more"
    assert cleaning.wait(30) and not ticket.done.is_set()
    assert sorted(rig.engine.project_images("shop")) == [1, 2]  # nothing pruned yet
    following = rig.deployer.enqueue("shop", rig.sha, "main", "alice", "push")
    time.sleep(0.3)
    assert rig.status(3) == "queued", "the next deployment started while the cleanup before it ran"
    go_on.set()
    assert ticket.done.wait(30) and ticket.final is not None and ticket.final.finished_at
    assert "cleanup" in json.loads(ticket.final.timings)
    assert following.done.wait(30) and following.final is not None and following.final.status == "live"
    assert sorted(rig.engine.project_images("shop")) == [2, 3]  # keep_images = 2, once cleaned up
    assert heard[-1].startswith("deployment #2 is live")


def test_a_failed_build_fails_with_its_reason_and_starts_nothing(rig: Rig):
    rig.engine.build_error = "ERROR: failed to solve: COPY missing.txt: not found"
    final = rig.deploy()
    assert final.status == DeploymentStatus.FAILED
    assert final.reason == "build failed: ERROR: failed to solve: COPY missing.txt: not found"
    assert rig.engine.started() == [] and rig.engine.services == {}
    assert rig.engine.project_images("shop") == {}
    log = rig.log(final)
    assert "#2 DONE" in log and "deploy failed: build failed" in log and "nothing was left running" in log


def test_a_first_deploy_that_never_gets_healthy_is_removed(rig: Rig):
    rig.engine.never_healthy[WEB] = "timeout"
    final = rig.deploy()
    assert final.status == DeploymentStatus.FAILED
    assert final.reason.startswith(f"health check failed for {WEB}: GET /healthz on port 8000")
    assert rig.engine.services == {} and ("remove_service", WEB) in rig.engine.calls
    assert rig.engine.project_images("shop") == {}  # its image went with it
    assert rig.store.live_deployment("shop") is None


@pytest.mark.parametrize("how", ["timeout", "rollback"])
def test_an_update_that_never_gets_healthy_leaves_the_old_version_live(rig: Rig, how: str):
    assert rig.deploy().status == DeploymentStatus.LIVE
    rig.engine.never_healthy[WEB] = how
    final = rig.deploy()
    assert final.status == DeploymentStatus.FAILED and "health check failed" in final.reason
    assert rig.engine.deployment_of(WEB) == "1"  # back on the old spec
    # Swarm rolled back by itself, or the deployer put the previous spec back; never both.
    restored = ("restore_previous", WEB) in rig.engine.calls
    assert restored is (how == "timeout")
    live = rig.store.live_deployment("shop")
    assert live is not None and live.number == 1
    assert "the previous version keeps serving" in rig.log(final)
    assert sorted(rig.engine.project_images("shop")) == [1]


def test_a_cancel_during_the_build_ends_it_cancelled_and_starts_nothing(rig: Rig):
    def cancel_now() -> None:
        rig.deployer.cancel("shop", 1, "bob")

    rig.engine.during_build = cancel_now
    final = rig.deploy()
    assert final.status == DeploymentStatus.CANCELLED
    assert final.reason == "cancelled by bob"
    assert rig.engine.started() == []
    assert "cancel requested by bob" in rig.log(final) and "deploy cancelled: cancelled by bob" in rig.log(final)


def test_docker_stopping_mid_deploy_waits_for_it_then_undoes(rig: Rig, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(deployment.time, "sleep", lambda seconds: None)
    assert rig.deploy().status == DeploymentStatus.LIVE
    rig.engine.docker_stops_in_rollout = 3  # dockerd answers again on the fourth ping
    final = rig.deploy()
    assert final.status == DeploymentStatus.FAILED
    assert final.reason.startswith("Docker stopped during the deployment: Docker is not reachable")
    log = rig.log(final)
    assert log.index("waiting for Docker to come back") < log.index("Docker is back")
    # The undo ran once Docker was back: the old version serves, #2's image went.
    assert rig.engine.deployment_of(WEB) == "1" and ("restore_previous", WEB) in rig.engine.calls
    assert sorted(rig.engine.project_images("shop")) == [1]
    assert rig.status(1) == "live"


def test_docker_that_never_comes_back_settles_the_deployment_all_the_same(rig: Rig, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(deployment, "DOCKER_RETURN_WAIT", 0)
    monkeypatch.setattr(deployment.time, "sleep", lambda seconds: None)
    assert rig.deploy().status == DeploymentStatus.LIVE
    rig.engine.docker_stops_in_rollout = 10**6
    final = rig.deploy()
    assert final.status == DeploymentStatus.FAILED and "Docker stopped" in final.reason
    assert "were not undone: deploy again once it is back" in rig.log(final)


def test_caddy_down_at_the_switch_fails_and_undoes_the_update(rig: Rig):
    assert rig.deploy().status == DeploymentStatus.LIVE
    rig.caddy.down = True
    final = rig.deploy()
    assert final.status == DeploymentStatus.FAILED
    assert "cannot reach Caddy's admin API" in final.reason
    assert rig.engine.deployment_of(WEB) == "1" and ("restore_previous", WEB) in rig.engine.calls
    assert rig.status(1) == "live"  # the store never said #2 was live
    assert sorted(rig.engine.project_images("shop")) == [1]  # #2's image went


def test_caddy_not_running_fails_the_first_deploy_and_removes_its_service(rig: Rig):
    rig.router.proxy_error = "the Caddy proxy is not running: no such image"
    rig.caddy.down = True  # and the switch's one more try does not bring it up
    final = rig.deploy()
    assert final.status == DeploymentStatus.FAILED
    assert final.reason == "the Caddy proxy is not running: Caddy's admin API did not answer within 120 s"
    assert rig.engine.services == {}


def test_a_proxy_that_failed_to_start_is_tried_again_at_the_switch(rig: Rig):
    rig.router.proxy_error = "the Caddy proxy is not running: Docker is not reachable"  # when Docker came back
    final = rig.deploy()
    assert final.status == DeploymentStatus.LIVE and rig.router.proxy_error == ""
    assert rig.caddy.routed_hosts() == {"shop.localhost"}


def test_a_bug_in_a_stage_fails_the_deploy_with_its_type_and_undoes(rig: Rig, monkeypatch: pytest.MonkeyPatch):
    def broken(spec: object) -> bool:
        raise KeyError("Spec")

    monkeypatch.setattr(rig.engine, "apply", broken)
    final = rig.deploy()
    assert final.status == DeploymentStatus.FAILED and final.reason == "KeyError: 'Spec'"
    assert rig.engine.project_images("shop") == {}


def test_a_bug_in_the_cleanup_leaves_the_deployment_live(rig: Rig, monkeypatch: pytest.MonkeyPatch):
    rig.deploy()

    def broken(project: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(rig.engine, "remove_untagged_images", broken)
    final = rig.deploy()  # the push was answered live before the cleanup ran: so it stays
    assert final.status == DeploymentStatus.LIVE and final.finished_at, final
    assert [rig.status(n) for n in (1, 2)] == ["replaced", "live"]
    assert "warning: cleanup incomplete: OSError: disk gone" in rig.log(final)


def test_an_invalid_disco_toml_fails_with_the_key_and_line(rig: Rig):
    rig.sha = rig.commit({"disco.toml": "[services.web]\nprot = 80\n"})
    git("-C", str(rig.bare), "fetch", "-q", str(rig.work), "main:main")
    final = rig.deploy()
    assert final.status == DeploymentStatus.FAILED
    assert final.reason.startswith("disco.toml line 2: unknown key 'services.web.prot'")
    assert [c for c in rig.engine.calls if c[0] == "build"] == []


def test_a_rollback_reuses_the_image_and_marks_the_old_one_rolled_back(rig: Rig):
    first, second = rig.deploy(), rig.deploy()
    ticket = rig.deployer.enqueue("shop", first.commit_sha, "main", "alice", "rollback", image=first.image,
                                  rollback_of=first.number)
    final = ticket.wait(30)
    assert final is not None and final.status == DeploymentStatus.LIVE
    assert [rig.status(n) for n in (1, 2, 3)] == ["replaced", "rolled back", "live"]
    assert len([c for c in rig.engine.calls if c[0] == "build"]) == 2  # no rebuild
    assert f"reusing image of {first.image}" in rig.log(final)
    assert final.image == rig.engine.tag_of(3) != first.image
    assert second.number == 2


def test_recover_settles_what_a_restart_left_unfinished(rig: Rig):
    assert rig.deploy().status == DeploymentStatus.LIVE
    building = rig.store.create_deployment("shop", rig.sha, "main", "alice", "push", rig.settings.deployments_dir)
    rig.store.update_deployment("shop", building.number, status=DeploymentStatus.BUILDING)
    settled = rig.deployer.recover()
    assert [(d.number, d.status) for d in settled] == [(2, "failed")]
    assert "interrupted by a daemon restart" in settled[0].reason
    assert rig.status(1) == "live" and rig.engine.deployment_of(WEB) == "1"


def test_recover_puts_the_deploy_branch_back_to_what_is_live(rig: Rig):
    live = rig.deploy()
    _with(rig, {"Dockerfile": "FROM scratch\n# v2\n"})  # the push moved main to the new commit
    pushed = rig.store.create_deployment("shop", rig.sha, "main", "alice", "push", rig.settings.deployments_dir)
    rig.store.update_deployment("shop", pushed.number, status=DeploymentStatus.STARTING)
    rig.deployer.recover()
    assert rig.status(pushed.number) == "failed"
    assert git("-C", str(rig.bare), "rev-parse", "main").strip() == live.commit_sha  # pushing it again retries


def test_recover_leaves_a_branch_that_moved_on_and_finishes_a_live_one(rig: Rig):
    live = rig.deploy()
    rig.store.update_deployment("shop", live.number, finished_at="")  # died in its cleanup
    old = rig.sha
    queued = rig.store.create_deployment("shop", old, "main", "alice", "push", rig.settings.deployments_dir)
    _with(rig, {"Dockerfile": "FROM scratch\n# v2\n"})  # a later push moved main on
    rig.deployer.recover()
    assert rig.status(queued.number) == "failed"
    assert git("-C", str(rig.bare), "rev-parse", "main").strip() == rig.sha != old
    found = rig.store.get_deployment("shop", live.number)
    assert found is not None and found.status == "live" and found.finished_at


def _with(rig: Rig, files: dict[str, str]) -> None:
    rig.sha = rig.commit(files)
    git("-C", str(rig.bare), "fetch", "-q", str(rig.work), "main:main")


RELEASE_TOML = '[services.web]\nhealth = "/healthz"\nvolumes = ["data:/data"]\nmemory = "300M"\n' \
               '[release]\ncommand = "./migrate --all"\ntimeout = 42\n'


def test_the_release_command_runs_once_in_the_new_image_before_anything_starts(rig: Rig):
    _with(rig, {"disco.toml": RELEASE_TOML})
    rig.store.set_env("shop", {"DATABASE_URL": "postgres://db"})
    rig.engine.run_output = ["migrated 3 tables"]
    final = rig.deploy()
    assert final.status == DeploymentStatus.LIVE
    methods = [method for method, _ in rig.engine.calls]
    assert methods.index("run_to_end") < methods.index("apply")
    (run,) = rig.engine.runs
    assert run["image"] == final.image and run["command"] == ["./migrate", "--all"] and run["timeout"] == 42
    assert run["env"]["DATABASE_URL"] == "postgres://db" and run["env"]["DISCO_DEPLOYMENT"] == str(final.number)
    assert run["mounts"] == [("fake-shop-data", "/data")]  # the web service's volumes
    assert run["labels"]["disco.role"] == "release"
    assert "release | migrated 3 tables" in rig.log(final)
    assert "release" in json.loads(final.timings)


@pytest.mark.parametrize("result, reason", [
    (RunResult(3), "release command exited with 3"),
    (RunResult(None, timed_out=True), "release command timed out after 42 s (set [release] timeout in disco.toml)"),
    (RunResult(137, out_of_memory=True), "release command ran out of memory (limit 300M) and was killed"),
])
def test_a_failing_release_fails_the_deploy_before_any_task_starts(rig: Rig, result: RunResult, reason: str):
    assert rig.deploy().status == DeploymentStatus.LIVE
    _with(rig, {"disco.toml": RELEASE_TOML})
    rig.engine.run_result = result
    started = list(rig.engine.started())
    final = rig.deploy()
    assert final.status == DeploymentStatus.FAILED and final.reason == reason
    assert rig.engine.started() == started  # nothing new started
    assert rig.status(1) == "live" and rig.engine.deployment_of(WEB) == "1"
    assert final.image not in rig.engine.images  # its image is undone


def test_a_rollback_does_not_run_the_release_again_and_an_env_redeploy_does(rig: Rig):
    _with(rig, {"disco.toml": RELEASE_TOML})
    first, second = rig.deploy(), rig.deploy()
    assert len(rig.engine.runs) == 2
    back = rig.deployer.enqueue("shop", first.commit_sha, "main", "alice", "rollback", image=first.image,
                                rollback_of=first.number).wait(30)
    assert back is not None and back.status == DeploymentStatus.LIVE and len(rig.engine.runs) == 2
    assert "release command skipped" in rig.log(back)
    env = rig.deployer.enqueue("shop", second.commit_sha, "main", "alice", "env", image=second.image).wait(30)
    assert env is not None and env.status == DeploymentStatus.LIVE and len(rig.engine.runs) == 3


def test_procfile_processes_become_services_run_by_the_image_shell(rig: Rig):
    _with(rig, {"disco.toml": '[services.worker]\nreplicas = 2\n',
                "Procfile": "web: ./serve --port $PORT\nworker: ./work && echo done\nrelease: ./migrate\n"})
    final = rig.deploy()
    assert final.status == DeploymentStatus.LIVE
    web, worker = rig.engine.services[WEB].spec, rig.engine.services["fake-shop-worker"].spec
    assert web.args == ["/bin/sh", "-c", "./serve --port $PORT"] and web.env["PORT"] == "8000"
    assert worker.args == ["/bin/sh", "-c", "./work && echo done"] and worker.replicas == 2 and worker.port is None
    assert rig.engine.runs[0]["command"] == ["/bin/sh", "-c", "./migrate"]


def test_scheduled_services_get_no_swarm_service(rig: Rig):
    _with(rig, {"disco.toml": '[services.web]\n[services.report]\nschedule = "@daily"\ncommand = "./report"\n'})
    assert rig.deploy().status == DeploymentStatus.LIVE
    assert set(rig.engine.services) == {WEB}
