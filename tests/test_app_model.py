"""Apps as people bring them, end to end on one real daemon (Docker, swarm, Caddy, git over SSH):
a Procfile with web + worker + release, a release that fails, scheduled services on the daemon's
one scheduler (on a clock 30 times faster, DISCO_TEST_CLOCK), and health checks that explain why
a version never answered.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from apps import BASE, BUSYBOX, shell_cmd
from conftest import Disco, Key, Poller, commit, laptop_cli, make_repo, require_docker, run, shared_disco, wait_for

SPEED = 30  # one scheduled minute every 2 s
ANCHOR = time.time()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory):
    require_docker()
    yield from shared_disco(tmp_path_factory.mktemp("app-model"),
                            extra_env={"DISCO_TEST_CLOCK": f"{ANCHOR}:{SPEED}"})


def virtual_now() -> datetime:
    """The daemon's scheduler clock (hooks/scheduler.fast_clock with the same anchor)."""
    return datetime.fromtimestamp(ANCHOR + (time.time() - ANCHOR) * SPEED, UTC)


def push(disco: Disco, key: Key, repo: Path, project: str):
    return disco.git(key, "push", disco.url(project), "main", cwd=repo, timeout=300)


def service_spec(disco: Disco, project: str, service: str) -> dict:
    out = run(["/usr/bin/docker", "service", "inspect", f"{disco.instance}-{project}-{service}"], check=True).stdout
    return json.loads(out)[0]["Spec"]


PROCFILE_APP = [*BASE, "COPY www /www"]  # no CMD: the Procfile says what runs
PROCFILE = (
    "# processes, as Heroku reads them\n"
    "web: busybox httpd -f -p $PORT -h /data\n"
    "worker: while true; do echo \"worker of #$DISCO_DEPLOYMENT working\"; busybox sleep 1; done\n"
    "release: echo \"release sees $GREETING\"; echo \"released $GREETING\" > /data/index.html\n"
)


def test_a_procfile_app_runs_web_and_worker_after_its_release_and_a_failed_release_changes_nothing(
        rig, tmp_path: Path):
    disco, alice = rig
    assert disco.api("POST", "/projects", {"name": "model"}).status_code == 201
    assert disco.api("POST", "/projects/model/env", {"values": {"GREETING": "hola"}, "deploy": False}).is_success
    repo = make_repo(tmp_path / "model", {"busybox": BUSYBOX.read_bytes(), "Dockerfile": "\n".join(PROCFILE_APP),
                                          "www/index.html": "unused\n", "Procfile": PROCFILE,
                                          "disco.toml": '[services.web]\nvolumes = ["data:/data"]\n'})
    first = push(disco, alice, repo, "model")
    assert first.returncode == 0, first.stderr
    # The release ran before the start, with the env (masked in output) and the web's volume.
    assert "running the release command" in first.stderr and "release command done" in first.stderr
    assert "remote: release | release sees *****" in first.stderr and "hola" not in first.stderr
    assert first.stderr.index("release command done") < first.stderr.index("starting")
    assert disco.get("model.localhost").text == "released hola\n"
    worker = service_spec(disco, "model", "worker")["TaskTemplate"]["ContainerSpec"]
    assert worker["Args"] == ["/bin/sh", "-c", 'while true; do echo "worker of #$DISCO_DEPLOYMENT working"; '
                                               "busybox sleep 1; done"]
    logs = wait_for("the worker's output", lambda: "worker of #1 working" in disco.api(
        "GET", "/projects/model/logs", service="worker", tail=20).text)
    assert logs
    timings = disco.api("GET", "/projects/model/deployments/1").json()["timings"]
    assert timings["release"] > 0

    # A release that fails: nothing new starts, the old version serves throughout.
    commit(repo, {"Procfile": PROCFILE.replace("release: echo", "release: echo migrating; exit 3; echo")}, "v2")
    with Poller(disco, "model.localhost") as poller:
        failed = push(disco, alice, repo, "model")
    assert failed.returncode != 0
    assert "remote: release | migrating" in failed.stderr
    assert "release command exited with 3" in failed.stderr and "the previous version keeps serving" in failed.stderr
    assert poller.errors == [] and set(poller.bodies) == {"released hola\n"}
    assert service_spec(disco, "model", "web")["Labels"]["disco.deployment"] == "1"
    assert disco.api("GET", "/projects/model/deployments/2").json()["reason"] == "release command exited with 3"

    # An env change redeploys the live commit and runs its release again; a rollback does not.
    changed = disco.api("POST", "/projects/model/env", {"values": {"GREETING": "again"}}).json()
    assert disco.finished_deployment("model", changed["deployment"])["status"] == "live"
    assert disco.get("model.localhost").text == "released again\n"
    back = disco.api("POST", "/projects/model/rollback", {"number": 1}).json()
    assert disco.finished_deployment("model", back["number"])["status"] == "live"
    rolled = Path(disco.data_dir / "deployments" / "model" / f"{back['number']}.log").read_text()
    assert "release command skipped" in rolled and "release |" not in rolled


def test_a_malformed_procfile_or_two_commands_are_refused_before_the_ref_moves(rig, tmp_path: Path):
    disco, alice = rig
    files = {"busybox": BUSYBOX.read_bytes(), "Dockerfile": "\n".join(PROCFILE_APP), "www/index.html": "x\n"}
    repo = make_repo(tmp_path / "bad", {**files, "Procfile": "web: busybox httpd -f -p $PORT\nthis is not a line\n"})
    refused = push(disco, alice, repo, "badproc")
    assert refused.returncode != 0
    assert "Procfile line 2: 'this is not a line' is not `<process type>: <command>`" in refused.stderr
    commit(repo, {"Procfile": "web: ./serve\n", "disco.toml": '[services.web]\ncommand = "./other"\n'}, "both")
    refused = push(disco, alice, repo, "badproc")
    assert "Procfile line 1: services.web.command is also set in disco.toml" in refused.stderr
    assert run(["git", "--git-dir", str(disco.repo_dir("badproc")), "rev-parse", "--verify", "-q",
                "refs/heads/main"]).stdout == ""


def test_health_failures_say_what_was_checked_what_listens_and_what_the_app_printed(rig, tmp_path: Path):
    disco, alice = rig
    toml = "[services.web]\nhealth_timeout = 3\n"
    cases = [
        (shell_cmd("echo starting on 8080 for real; exec /bin/busybox httpd -f -p 8080 -h /www"),
         ["TCP connect to port 8000 failed",
          "the app listens on 8080, not 8000: set [services.web] port = 8080 in disco.toml",
          "remote:   | starting on 8080 for real"]),
        (shell_cmd("echo local only; exec /bin/busybox httpd -f -p 127.0.0.1:8000 -h /www"),
         ["the app listens on 127.0.0.1:8000 only, which the proxy cannot reach", "remote:   | local only"]),
        (shell_cmd("echo about to crash; exit 4"), ["exited with code 4", "remote:   | about to crash"]),
    ]
    for number, (cmd, expected) in enumerate(cases):
        repo = make_repo(tmp_path / f"h{number}", {"busybox": BUSYBOX.read_bytes(), "www/index.html": "x\n",
                                                   "Dockerfile": "\n".join([*BASE, "COPY www /www", cmd]),
                                                   "disco.toml": toml})
        failed = push(disco, alice, repo, f"health{number}")
        assert failed.returncode != 0
        for text in expected:
            assert text in failed.stderr, (text, failed.stderr[-3000:])
        log = Path(disco.data_dir / "deployments" / f"health{number}" / "1.log").read_text()
        assert expected[-1].removeprefix("remote: ") in log


CRON_TOML = """
[services.web]
volumes = ["data:/data"]

[services.tick]
schedule = "* * * * *"
command = "busybox sh -c 'echo tick $DISCO_CRON_RUN; echo $DISCO_CRON_RUN >> /data/ticks'"
volumes = ["data:/data"]

[services.slow]
schedule = "@hourly"
command = "busybox sleep 5"
"""


def test_scheduled_services_run_on_time_never_overlap_and_a_restart_replays_at_most_one(rig, tmp_path: Path):
    disco, alice = rig
    app = [*BASE, "EXPOSE 8000", 'CMD ["/bin/busybox", "httpd", "-f", "-p", "8000", "-h", "/data"]']
    # slow runs every minute here: "@hourly" would take 2 minutes of this clock to come round.
    toml = CRON_TOML.replace('"@hourly"', '"* * * * *"')
    repo = make_repo(tmp_path / "crony", {"busybox": BUSYBOX.read_bytes(), "Dockerfile": "\n".join(app),
                                          "disco.toml": toml})
    pushed = push(disco, alice, repo, "crony")
    assert pushed.returncode == 0, pushed.stderr
    assert run(["/usr/bin/docker", "service", "inspect", f"{disco.instance}-crony-tick"]).returncode != 0

    def runs(service: str) -> list[dict]:
        return disco.api("GET", f"/projects/crony/cron/{service}/runs", limit=1000).json()

    def succeeded() -> list[dict] | None:
        found = [r for r in runs("tick") if r["status"] == "succeeded"]
        return found if len(found) >= 2 else None

    done = wait_for("two scheduled runs of tick", succeeded)
    for finished in done:
        assert finished["trigger"] == "schedule" and finished["exit_code"] == 0
        due = datetime.fromisoformat(finished["due_at"])
        assert due.second == 0 and due <= virtual_now()  # due_at is on the scheduler's clock
    assert len({r["due_at"] for r in done}) == len(done)  # one run per time
    # Its output, as the API streams it, and what it wrote to the volume the web service serves.
    output = disco.api("GET", f"/projects/crony/cron/tick/runs/{done[-1]['id']}/output").text
    assert f"data: tick {done[-1]['id']}" in output and '"status": "succeeded"' in output
    served = disco.get("crony.localhost", "/ticks").text.split()
    assert str(done[-1]["id"]) in served

    skipped = wait_for("a skipped run of slow", lambda: [r for r in runs("slow") if r["status"] == "skipped"])
    assert skipped[0]["reason"].startswith("run #") and skipped[0]["reason"].endswith("was still going")
    listed = {s["service"]: s for s in disco.api("GET", "/projects/crony/cron").json()}
    assert set(listed) == {"tick", "slow"} and listed["tick"]["schedule"] == "* * * * *"
    assert datetime.fromisoformat(listed["tick"]["next_at"]) > virtual_now() - timedelta(minutes=1)

    # tick runs every 2 s here: a manual run may meet a scheduled one going, which it must not
    # overlap (refused with 409); then it is asked again.
    def run_now() -> httpx.Response | None:
        response = disco.api("POST", "/projects/crony/cron/tick/runs")
        return None if response.status_code == 409 else response

    manual = wait_for("a manual run of tick between its scheduled ones", run_now)
    assert manual.status_code == 202 and manual.json()["trigger"] == "manual" and manual.json()["user"] == "alice"
    assert disco.api("POST", "/projects/crony/cron/web/runs").status_code == 404

    # The same through the CLI: the schedules, the runs, and a run now that shows its output.
    cli = laptop_cli(disco, tmp_path / "laptop")
    listed = cli("cron", "-p", "crony")
    assert listed.returncode == 0 and "SCHEDULE" in listed.stdout and "tick" in listed.stdout
    assert cli("cron:runs", "tick", "-p", "crony").stdout.count("schedule") >= 2
    def cli_run_now() -> subprocess.CompletedProcess | None:
        result = cli("cron:run", "tick", "-p", "crony")
        return None if "is running already" in result.stderr else result

    ran = wait_for("a run of tick now between its scheduled ones", cli_run_now)
    assert ran.returncode == 0 and "tick " in ran.stdout and "succeeded" in ran.stdout, ran.stderr

    # Down for 4 scheduled minutes: at most one of them runs after the restart.
    disco.stop(signal.SIGTERM)
    stopped_at, stopped_really = virtual_now(), datetime.now(UTC)
    time.sleep(8)  # the downtime under test, not a wait for a condition
    restarted_at = virtual_now()
    disco.start()
    wait_for("a run after the restart", lambda: [r for r in runs("tick")
                                                 if r["due_at"] and datetime.fromisoformat(r["due_at"]) > restarted_at])
    missed = [r for r in runs("tick")
              if r["due_at"] and stopped_at < datetime.fromisoformat(r["due_at"]) <= restarted_at]
    assert len(missed) <= 1, missed
    # Nothing the stopped daemon ran is left "running".
    before = [r for r in runs("slow") + runs("tick") if datetime.fromisoformat(r["started_at"]) < stopped_really]
    assert before and all(r["status"] != "running" for r in before)
    interrupted = [r for r in runs("slow") if r["status"] == "interrupted"]
    assert all(r["reason"] in ("interrupted by a daemon restart", "the daemon stopped during the run")
               for r in interrupted)
    assert disco.api("DELETE", "/projects/crony").is_success  # its schedule ends with it
