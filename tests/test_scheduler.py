"""The daemon's one scheduler (hooks/scheduler.py) on a clock the test moves and a fake engine:
when a scheduled service runs, that runs never overlap, that a restart replays at most one
missed time, and that the live deployment's image and config are what run."""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fake_engine import FakeEngine

from hooks.errors import Refused
from hooks.scheduler import Scheduler
from runtime.docker_engine import RunResult
from runtime.settings import Settings, ensure_layout
from runtime.store import CronRun, Deployment, DeploymentStatus, Store

TOML = '[services.web]\n[services.report]\nschedule = "*/5 * * * *"\ncommand = "./report --all"\n' \
       'volumes = ["data:/data"]\ntimeout = 30\n'


class Clock:
    def __init__(self, at: str) -> None:
        self.now = datetime.fromisoformat(at).replace(tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def set(self, at: str) -> None:
        self.now = datetime.fromisoformat(at).replace(tzinfo=UTC)


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.settings = Settings(data_dir=tmp_path / "data", instance="fake")
        ensure_layout(self.settings)
        self.store = Store(self.settings.db_path)
        self.store.add_project("shop", "alice")
        self.engine = FakeEngine("fake")
        self.clock = Clock("2026-05-01T10:00:30")
        self.work = tmp_path / "work"
        self.bare = self.settings.repos_dir / "shop.git"
        git("init", "-q", "-b", "main", str(self.work))
        git("init", "-q", "--bare", str(self.bare))
        self.scheduler = self.new_scheduler()

    def new_scheduler(self) -> Scheduler:
        return Scheduler(self.settings, self.store, self.engine, self.clock)

    def go_live(self, toml: str, status: str = DeploymentStatus.LIVE) -> Deployment:
        (self.work / "disco.toml").write_text(toml)
        git("-C", str(self.work), "add", "-A")
        git("-C", str(self.work), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
        git("-C", str(self.bare), "fetch", "-q", str(self.work), "main:main")
        sha = git("-C", str(self.work), "rev-parse", "HEAD").strip()
        d = self.store.create_deployment("shop", sha, "main", "alice", "push", self.settings.deployments_dir)
        image = f"fake-shop:{d.number}-x"
        self.engine.images[image] = {"disco.project": "shop"}
        if status == DeploymentStatus.LIVE:
            for old in self.store.deployments_with_status((DeploymentStatus.LIVE,)):
                self.store.update_deployment("shop", old.number, status=DeploymentStatus.REPLACED)
        return self.store.update_deployment("shop", d.number, status=status, image=image)

    def tick_at(self, at: str) -> None:
        self.clock.set(at)
        self.scheduler.tick()

    def runs(self) -> list[CronRun]:
        return list(reversed(self.store.cron_runs("shop", "report")))

    def settled(self) -> list[CronRun]:
        deadline = time.monotonic() + 10
        while any(r.status == "running" for r in self.runs()):
            assert time.monotonic() < deadline, "a run did not finish"
            time.sleep(0.01)
        return self.runs()


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_a_scheduled_service_runs_at_its_times_once_each(rig: Rig):
    live = rig.go_live(TOML)
    rig.store.set_env("shop", {"TOKEN": "t0p-s3cret"})
    rig.engine.run_output = ["report with t0p-s3cret"]
    rig.tick_at("2026-05-01T10:00:30")  # first seen: nothing that was due before is run
    rig.tick_at("2026-05-01T10:04:59")
    assert rig.runs() == []
    rig.tick_at("2026-05-01T10:05:00")
    rig.tick_at("2026-05-01T10:05:40")  # the same time again: nothing more
    (run,) = rig.settled()
    assert (run.status, run.trigger, run.due_at, run.exit_code) == ("succeeded", "schedule", "2026-05-01T10:05:00+00:00", 0)
    assert run.deployment == live.number and run.image == live.image
    (asked,) = rig.engine.runs
    assert asked["image"] == live.image and asked["command"] == ["./report", "--all"] and asked["timeout"] == 30
    assert asked["mounts"] == [("fake-shop-data", "/data")] and asked["env"]["TOKEN"] == "t0p-s3cret"
    assert asked["labels"]["disco.role"] == "cron" and asked["env"]["DISCO_SERVICE"] == "report"
    output = Path(run.log_path).read_text()
    assert "report with *****" in output and "t0p-s3cret" not in output
    rig.tick_at("2026-05-01T10:10:01")
    assert [r.due_at for r in rig.settled()] == ["2026-05-01T10:05:00+00:00", "2026-05-01T10:10:00+00:00"]


def test_a_time_that_comes_while_the_previous_run_goes_is_skipped_and_recorded(rig: Rig):
    rig.go_live(TOML)
    gate = threading.Event()
    rig.engine.during_run = lambda: gate.wait(10)
    rig.tick_at("2026-05-01T10:00:30")
    rig.tick_at("2026-05-01T10:05:00")
    rig.tick_at("2026-05-01T10:10:00")
    with pytest.raises(Refused, match="runs never overlap"):
        rig.scheduler.run_now("shop", "report", "alice")
    gate.set()
    first, skipped = rig.settled()
    assert first.status == "succeeded" and skipped.status == "skipped"
    assert skipped.reason == f"run #{first.id} was still going" and skipped.due_at == "2026-05-01T10:10:00+00:00"
    assert len(rig.engine.runs) == 1


def test_a_restarted_daemon_runs_a_missed_time_once_not_every_one(rig: Rig):
    rig.go_live(TOML)
    rig.tick_at("2026-05-01T10:00:30")
    rig.tick_at("2026-05-01T10:05:00")
    rig.settled()
    rig.clock.set("2026-05-01T10:37:12")  # down from 10:05 to 10:37: six times missed
    rig.scheduler = rig.new_scheduler()
    rig.scheduler.tick()
    rig.scheduler.tick()
    assert [r.due_at for r in rig.settled()] == ["2026-05-01T10:05:00+00:00", "2026-05-01T10:35:00+00:00"]


def test_runs_follow_the_live_deployment_and_a_failed_one_changes_nothing(rig: Rig):
    first = rig.go_live(TOML)
    rig.tick_at("2026-05-01T10:00:30")
    rig.go_live(TOML.replace("./report --all", "./report --new"), status=DeploymentStatus.FAILED)
    rig.tick_at("2026-05-01T10:05:00")
    second = rig.go_live(TOML.replace("./report --all", "./report --v2"))
    rig.settled()
    rig.tick_at("2026-05-01T10:10:00")
    rig.settled()
    assert [(r["image"], r["command"]) for r in rig.engine.runs] == [
        (first.image, ["./report", "--all"]), (second.image, ["./report", "--v2"])]
    rig.go_live("[services.web]\n")  # the schedule went with the service
    rig.tick_at("2026-05-01T10:15:00")
    assert len(rig.settled()) == 2


def test_run_now_and_its_refusals(rig: Rig):
    with pytest.raises(Refused, match="no live deployment"):
        rig.scheduler.run_now("shop", "report", "alice")
    rig.go_live(TOML)
    with pytest.raises(Refused, match="no scheduled service 'web'") as refused:
        rig.scheduler.run_now("shop", "web", "alice")
    assert refused.value.kind == "not_found"
    rig.engine.run_result = RunResult(2)
    run = rig.scheduler.run_now("shop", "report", "alice")
    assert (run.trigger, run.user, run.due_at) == ("manual", "alice", "")
    (done,) = rig.settled()
    assert (done.status, done.exit_code, done.reason) == ("failed", 2, "exited with 2")
    assert rig.store.audit_log(limit=1)[0]["action"] == "cron:run"
    listed = rig.scheduler.scheduled("shop")
    assert [(s.service, s.schedule, s.command) for s in listed] == [("report", "*/5 * * * *", "./report --all")]
    assert listed[0].next_at == "2026-05-01T10:05:00+00:00" and listed[0].last_run == done


def test_recover_settles_runs_a_dead_daemon_left_running(rig: Rig):
    live = rig.go_live(TOML)
    left = rig.store.add_cron_run({"project": "shop", "service": "report", "status": "running", "trigger": "schedule",
                                   "user": "", "due_at": "", "started_at": "", "finished_at": "", "exit_code": None,
                                   "reason": "", "deployment": live.number, "image": live.image, "log_path": ""})
    (settled,) = rig.scheduler.recover()
    assert settled.id == left.id and settled.status == "interrupted"
    assert settled.reason == "interrupted by a daemon restart"
    assert ("remove_containers", "shop/cron") in rig.engine.calls


def test_a_changed_schedule_starts_afresh_instead_of_firing_at_once(rig: Rig):
    rig.go_live(TOML.replace("*/5 * * * *", "@daily"))
    rig.tick_at("2026-05-01T10:00:30")
    rig.go_live(TOML.replace("*/5 * * * *", "0 */6 * * *"))  # 06:00 passed since the @daily was seen
    rig.tick_at("2026-05-01T10:01:00")
    rig.tick_at("2026-05-01T11:59:00")
    assert rig.runs() == []
    rig.tick_at("2026-05-01T12:00:00")
    assert [r.due_at for r in rig.settled()] == ["2026-05-01T12:00:00+00:00"]


def test_a_run_that_cannot_start_is_recorded_failed_and_frees_its_slot(rig: Rig):
    rig.go_live(TOML)
    rig.engine.volumes["fake-shop-data"] = "another-project"  # ensure_volume refuses it
    run = rig.scheduler.run_now("shop", "report", "alice")
    (failed,) = rig.settled()
    assert failed.id == run.id and failed.status == "failed"
    assert "belongs to something else" in failed.reason
    del rig.engine.volumes["fake-shop-data"]
    rig.scheduler.run_now("shop", "report", "alice")  # not "running already"
    assert [r.status for r in rig.settled()] == ["failed", "succeeded"]


def test_nothing_starts_for_a_project_being_deleted(rig: Rig):
    rig.go_live(TOML)
    rig.tick_at("2026-05-01T10:00:30")
    with rig.scheduler.paused("shop"):
        rig.tick_at("2026-05-01T10:05:00")
        with pytest.raises(Refused, match="being deleted"):
            rig.scheduler.run_now("shop", "report", "alice")
    assert rig.runs() == [] and rig.engine.runs == []


def test_stop_interrupts_the_runs_going_on_and_records_them(rig: Rig):
    rig.go_live(TOML)
    rig.engine.during_run = lambda: rig.scheduler._stopping.wait(10)
    rig.scheduler.run_now("shop", "report", "alice")
    rig.scheduler.stop(wait=5)
    (run,) = rig.runs()
    assert (run.status, run.reason) == ("interrupted", "the daemon stopped during the run")
