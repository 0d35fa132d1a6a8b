"""The daemon killed (SIGKILL) at every stage of a push and its deployment, then started again.

Each story: a new version is pushed while requests go to the app over keep-alive connections;
the daemon dies at one stage; a new daemon starts. Then: no request failed, no deployment is
left queued/building/starting, the deploy branch names what is live, what serves is what the
store says is live, and pushing again deploys.

Stages long enough to catch are caught by watching the deployment's output (a build step, a
release command and an app that take a while); the others hold at a named point
(hooks/holds.py) that the test picks by writing its name into the hold file.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apps import BASE, SERVE, new_version, shell_cmd, web_app
from conftest import Disco, Key, Poller, require_docker, run, server_ref, shared_disco, wait_for

PROJECT = "crashapp"
HOST = f"{PROJECT}.localhost"
RELEASE_QUICK = '[release]\ncommand = "/bin/busybox true"\n'
ACTIVE = ("queued", "building", "starting")


@dataclass
class App:
    disco: Disco
    key: Key
    repo: Path
    hold_file: Path
    version: int = 1

    def push(self, *extra: str) -> subprocess.CompletedProcess:
        return self.disco.git(self.key, "push", *extra, self.disco.url(PROJECT), "main", cwd=self.repo, timeout=300)

    def start_push(self) -> subprocess.Popen:
        return subprocess.Popen(["git", "push", self.disco.url(PROJECT), "main"], cwd=self.repo,
                                env=self.disco.git_env(self.key), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def deployments(self) -> list[dict]:
        return self.disco.api("GET", f"/projects/{PROJECT}/deployments", limit=100).json()

    def live(self) -> dict:
        [live] = [d for d in self.deployments() if d["status"] == "live"]
        return live

    def output(self, number: int) -> str:
        path = self.disco.data_dir / "deployments" / PROJECT / f"{number}.log"
        return path.read_text() if path.exists() else ""

    def served(self) -> str:
        response = self.disco.get(HOST)
        assert response.status_code == 200, (response.status_code, response.text)
        return response.text


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    require_docker()
    workdir = tmp_path_factory.mktemp("crash")
    hold_file = workdir / "hold"
    for disco, key in shared_disco(workdir, extra_env={"DISCO_TEST_HOLD_FILE": str(hold_file)}):
        repo = web_app(workdir / "repo", "v1\n", **{"disco.toml": RELEASE_QUICK})
        app = App(disco, key, repo, hold_file)
        result = app.push()
        assert result.returncode == 0, result.stderr
        yield app


@dataclass(frozen=True)
class Fault:
    stage: str
    hold: str = ""  # a hold point (hooks/holds.py), or "" to kill on seeing `watch` in the output
    watch: str = ""
    dockerfile: tuple[str, ...] = ()  # the new version's, when the stage needs one that takes time
    release: str = RELEASE_QUICK


SLOW_START = (*BASE, "COPY www /www", "EXPOSE 8000", shell_cmd("sleep 8; exec /bin/busybox httpd -f -p 8000 -h /www"))
FAULTS = [
    Fault("receiving the pack", hold="receive"),
    Fault("building", watch="sleep 30",
          dockerfile=(*BASE, "COPY www /www", "RUN /bin/busybox sleep 30", "EXPOSE 8000", SERVE)),
    Fault("release command", watch="running the release command",
          release='[release]\ncommand = "/bin/busybox sleep 30"\n'),
    Fault("starting", hold="start"),
    Fault("waiting for health", watch="to be healthy", dockerfile=SLOW_START),
    Fault("switching, before the routes", hold="switch"),
    Fault("switching, routes loaded, not yet recorded", hold="switch-routed"),
    Fault("cleaning up", hold="cleanup"),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.hold or f.stage.split()[0] for f in FAULTS])
def test_daemon_killed_at_a_stage_comes_back_with_nothing_stuck(app: App, fault: Fault):
    disco = app.disco
    before = app.live()
    app.version += 1
    text = f"v{app.version}\n"
    commit = new_version(app.repo, text, list(fault.dockerfile) or None, **{"disco.toml": fault.release})
    number = max(d["number"] for d in app.deployments()) + 1
    app.hold_file.write_text(fault.hold or "nothing")

    with Poller(disco, host=HOST) as poller:
        pusher = app.start_push()
        if fault.hold:
            disco.wait_for_log(f"held at {fault.hold}", timeout=180)
        else:
            wait_for(f"{fault.watch!r} in the output of #{number}", lambda: fault.watch in app.output(number), 180)
        disco.stop(signal.SIGKILL)
        pusher.wait(30)
        app.hold_file.unlink()
        disco.start()
        disco.wait_for_proxy()
        after = app.deployments()
        live = app.live()
        assert wait_for("the live version to serve", lambda: app.served() == (text if live["commit"] == commit
                                                                                else f"v{app.version - 1}\n"), 30)
    assert poller.errors == [], f"requests failed while the daemon died at {fault.stage}: {poller.errors[:5]}"
    assert poller.bodies, "no request was answered"

    # Nothing stuck: the interrupted deployment is settled, saying why.
    assert [d["number"] for d in after if d["status"] in ACTIVE] == []
    interrupted = [d for d in after if d["number"] == number]
    if fault.hold == "receive":
        assert interrupted == [], "a push that died before its refs moved has no deployment"
        assert not list((disco.repo_dir(PROJECT) / "objects").glob("tmp_pack_*")), "the half-received pack stays"
    elif interrupted[0]["status"] != "live":
        assert interrupted[0]["status"] == "failed" and "daemon restart" in interrupted[0]["reason"], interrupted
    if fault.stage in ("switching, routes loaded, not yet recorded", "cleaning up"):
        assert live["number"] == number, "routes pointed at the new version: it is the live one"
        assert live["finished_at"], "a live deployment whose cleanup died is finished all the same"

    # The deploy branch names what is live, and the repo is whole.
    assert server_ref(disco, PROJECT) == live["commit"]
    assert run(["git", "--git-dir", str(disco.repo_dir(PROJECT)), "fsck", "--no-dangling"]).returncode == 0
    if fault.release != RELEASE_QUICK:
        left = run(["/usr/bin/docker", "ps", "-aq", "--filter", f"label=disco.instance={disco.instance}",
                    "--filter", "label=disco.role=release"]).stdout.split()
        assert left == [], "the release container of the dead daemon is still there"

    # The next push deploys, and the next cleanup leaves no image of a deployment that failed.
    if live["commit"] != commit:
        assert live["number"] == before["number"]
    app.version += 1
    text = f"v{app.version}\n"
    new_version(app.repo, text, None, **{"disco.toml": RELEASE_QUICK})
    result = app.push()
    assert result.returncode == 0, result.stderr
    assert app.served() == text
    disco.cleaned_up(PROJECT)  # the push returned once live; its cleanup goes on a moment
    if interrupted and interrupted[0]["status"] == "failed":
        images = run(["/usr/bin/docker", "images", "-q", "--filter", f"label=disco.instance={disco.instance}",
                      "--filter", f"label=disco.deployment={number}"]).stdout.split()
        assert images == [], "the image of the interrupted deployment was left behind"
