"""Many at once (issue 16): 10 projects pushed at the same moment while 20 API clients change
their env vars and scale. Every deployment ends, nothing deadlocks, no write is lost, every
change is in the audit log, and every project serves its own body.

One daemon for the module; real `git push` over SSH, real swarm, real Caddy. Run with -s to see
what was measured.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from apps import web_app
from conftest import Disco, Key, require_docker, run, shared_disco, wait_for

PROJECTS = [f"many{n}" for n in range(10)]
PUSHERS = {project: f"dev{n}" for n, project in enumerate(PROJECTS)}
CLIENTS = 20
ENV_CHANGES = 8  # per client, alternating between its two projects
BEFORE_LIVE = 2  # of them made while the pushes deploy; the others once both projects are live
SCALES = (2, 1, 3, 1)  # the scaling clients' writes, in this order: the last one must stick
ENDED = {"live", "replaced", "superseded", "failed"}
ACTIVE = {"queued", "building", "starting"}
BOUND = 300  # seconds any one wait may take on a busy 2-core machine; never a sleep


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    require_docker()
    # Ten people push, one project each (one user may hold only max_ssh_sessions git sessions).
    yield from shared_disco(tmp_path_factory.mktemp("many"), users=tuple(PUSHERS.values()))


@dataclass
class Client:
    """One API client: its key, its projects, and every answer it got, in order."""

    number: int
    user: str
    key: str
    projects: tuple[str, str]
    scales: bool  # the one client that scales its first project
    env_writes: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (project, name) -> values
    scale_writes: list[int] = field(default_factory=list)
    redeploys: list[tuple[str, int]] = field(default_factory=list)  # (project, number) env:set asked for
    succeeded: Counter = field(default_factory=Counter)  # (action, project) -> successful changes
    refused: list[str] = field(default_factory=list)  # clear 4xx answers, with their reason
    broken: list[str] = field(default_factory=list)  # 5xx, timeouts, unreadable answers: failures

    def env_name(self, project: str) -> str:
        return f"C{self.number:02d}_{project.upper()}"


def api(disco: Disco, key: str, method: str, path: str, body: dict | None = None,
        **params: object) -> httpx.Response:
    return httpx.request(method, f"http://127.0.0.1:{disco.api_port}/api/v1{path}", json=body, params=params,
                         headers={"Authorization": f"Bearer {key}"}, timeout=120)


def make_clients(disco: Disco) -> list[Client]:
    """Even clients are deployers of their own, granted their two projects; odd ones use an
    API key of alice's (one each)."""
    clients = []
    for number in range(CLIENTS):
        projects = (PROJECTS[number % 10], PROJECTS[(number + 3) % 10])
        if number % 2 == 0:
            user = f"client{number}"
            assert disco.api("POST", "/users", {"name": user, "role": "deployer"}).status_code == 201
            for project in projects:
                assert disco.api("POST", f"/users/{user}/grants", {"project": project}).status_code == 201
        else:
            user = "alice"
        made = disco.api("POST", "/api-keys", {"label": f"client{number}", "user": user})
        assert made.status_code == 201, made.text
        clients.append(Client(number, user, made.json()["key"], projects, scales=number < 10))
    return clients


def change(disco: Disco, client: Client, action: str, project: str, path: str, body: dict,
           on_success: Callable[[httpx.Response], None]) -> None:
    """Make one change; a success is recorded as written, anything else as why not."""
    try:
        response = api(disco, client.key, "POST", path, body)
    except httpx.HTTPError as err:  # a timeout here would be a deadlock in the daemon
        client.broken.append(f"{action} {project}: {err!r}")
        return
    if response.status_code == 200:
        on_success(response)
        client.succeeded[(action, project)] += 1
        return
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = ""
    if 400 <= response.status_code < 500 and message:
        client.refused.append(f"{action} {project}: {response.status_code} {message}")
    else:
        client.broken.append(f"{action} {project}: {response.status_code} {response.text[:300]}")


@dataclass
class Push:
    """One project's push, told to the clients waiting for the project it creates."""

    project: str
    done: threading.Event = field(default_factory=threading.Event)
    result: subprocess.CompletedProcess | None = None

    def check(self) -> None:
        """Fail at once, not at a wait's bound, when the push that makes the project failed."""
        if self.done.is_set() and (self.result is None or self.result.returncode != 0):
            raise AssertionError(f"the push of {self.project} failed: {self.result and self.result.stderr}")


def run_client(disco: Disco, client: Client, pushes: dict[str, Push], start: threading.Barrier) -> None:
    start.wait()

    def ready(project: str, what: Callable[[httpx.Response], object]) -> object:
        pushes[project].check()
        response = api(disco, client.key, "GET", f"/projects/{project}")
        return response.status_code == 200 and what(response)

    for project in client.projects:  # created by its first push, which starts with us
        wait_for(f"{project} to exist for client {client.number}", lambda p=project: ready(p, bool), BOUND)
    scale_target = client.projects[0]
    for step in range(ENV_CHANGES):
        if step == BEFORE_LIVE:  # a redeploy needs a live deployment, a scale the service it made
            for project in client.projects:
                wait_for(f"{project} live for client {client.number}",
                         lambda p=project: ready(p, lambda r: r.json()["live_deployment"]), BOUND)
        project = client.projects[step % 2]
        name, value = client.env_name(project), f"v{step}-{uuid.uuid4().hex[:8]}"
        # env:set redeploys the live commit unless deploy=false: most changes ask for it, so
        # redeploys pile up behind running ones and the older waiting ones are superseded.
        deploy = step % 3 != 2

        def written(response: httpx.Response, key: tuple[str, str] = (project, name), value: str = value) -> None:
            client.env_writes.setdefault(key, []).append(value)
            if (number := response.json()["deployment"]) is not None:
                client.redeploys.append((key[0], number))

        change(disco, client, "env:set", project, f"/projects/{project}/env",
               {"values": {name: value}, "deploy": deploy}, written)
        if client.scales and step >= ENV_CHANGES - len(SCALES):
            replicas = SCALES[step - (ENV_CHANGES - len(SCALES))]
            change(disco, client, "scale", scale_target, f"/projects/{scale_target}/scale", {"web": replicas},
                   lambda _, r=replicas: client.scale_writes.append(r))


def explain(disco: Disco, failed: list[tuple[str, int, str]]) -> str:
    """What a failed deployment printed, and what swarm says of its project's tasks."""
    told = []
    for project, number, _ in failed:
        log = disco.data_dir / "deployments" / project / f"{number}.log"
        tasks = run(["/usr/bin/docker", "service", "ps", "--no-trunc", "--format",
                     "{{.Name}} {{.Image}} {{.DesiredState}} {{.CurrentState}} {{.Error}}",
                     f"{disco.instance}-{project}-web"]).stdout
        told.append(f"--- {project} #{number}\n{log.read_text()[-3000:] if log.exists() else ''}\n{tasks}")
    return "\n".join(told)


def deployments(disco: Disco, project: str) -> list[dict]:
    response = disco.api("GET", f"/projects/{project}/deployments", limit=1000)
    assert response.status_code == 200, response.text
    return response.json()


def test_ten_pushes_and_twenty_api_clients_at_once(daemon: tuple[Disco, dict[str, Key]], tmp_path: Path):
    disco, keys = daemon
    repos = {p: web_app(tmp_path / p, f"{p}\n") for p in PROJECTS}
    clients = make_clients(disco)
    start = threading.Barrier(len(PROJECTS) + CLIENTS)
    pushes = {p: Push(p) for p in PROJECTS}

    def push(project: str) -> None:
        start.wait()
        try:
            pushes[project].result = disco.git(keys[PUSHERS[project]], "push", disco.url(project), "main",
                                               cwd=repos[project], timeout=BOUND)
        finally:
            pushes[project].done.set()

    crashed: list[str] = []

    def guarded(target: Callable[..., None], *args: object) -> Callable[[], None]:
        def body() -> None:
            try:
                target(*args)
            except BaseException as err:  # a thread's failure must fail the test, not vanish
                crashed.append(f"{target.__name__}{args[1:2]}: {err!r}")
        return body

    threads = [threading.Thread(target=guarded(push, p)) for p in PROJECTS]
    threads += [threading.Thread(target=guarded(run_client, disco, c, pushes, start)) for c in clients]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * BOUND)
    assert not any(t.is_alive() for t in threads), "a push or an API client never returned"
    changes_done = time.monotonic() - began
    assert crashed == []

    # Every push went live: each was its project's first deployment, with nothing to wait for.
    for project, pushed in pushes.items():
        assert pushed.result is not None and pushed.result.returncode == 0, (project, pushed.result)
        assert f"is live at {project}.localhost" in pushed.result.stderr

    # Every deployment ends, however many env changes asked for one.
    def all_ended() -> dict[str, list[dict]] | None:
        found = {p: deployments(disco, p) for p in PROJECTS}
        return found if not any(d["status"] in ACTIVE for ds in found.values() for d in ds) else None

    records = wait_for("every deployment to end", all_ended, BOUND, every=0.5)
    total = time.monotonic() - began
    statuses = Counter(d["status"] for ds in records.values() for d in ds)
    failed = [(p, d["number"], d["reason"]) for p, ds in records.items() for d in ds if d["status"] == "failed"]
    assert set(statuses) <= ENDED, statuses
    assert failed == [], explain(disco, failed)
    numbers = {(p, d["number"]) for p, ds in records.items() for d in ds}
    assert {r for c in clients for r in c.redeploys} <= numbers  # each redeploy asked for is among them
    for project, ds in records.items():
        assert [d["status"] for d in ds].count("live") == 1, (project, ds)
        assert all(d["reason"] for d in ds if d["status"] == "superseded")

    broken = [b for c in clients for b in c.broken]
    refused = [r for c in clients for r in c.refused]
    assert broken == []  # success or a clear 4xx naming why: never a 500 or a timeout
    # Every condition a change needs (project made, first deploy live) was waited for first.
    assert refused == []

    # No lost update: each client's last write of each of its own names is what the store holds.
    for project in PROJECTS:
        expected = {c.env_name(project): c.env_writes[(project, c.env_name(project))][-1]
                    for c in clients if project in c.projects}
        env = disco.api("GET", f"/projects/{project}/env", values=True).json()["values"]
        assert env == expected, project
    for client in clients:
        if client.scales:
            project = client.projects[0]
            assert client.scale_writes == list(SCALES)
            shown = disco.api("GET", f"/projects/{project}").json()
            assert shown["scale"] == {"web": SCALES[-1]}, project  # recorded
            running = disco.api("GET", f"/projects/{project}/scale")
            assert running.json() == {"web": SCALES[-1]}, project  # and what swarm runs

    # The audit log has one entry per successful change and one per push.
    audit = disco.api("GET", "/audit", limit=1000).json()
    assert len(audit) < 1000  # all of it
    audited = Counter((e["user"], e["action"], e["target"]) for e in audit)
    wanted: Counter = Counter()
    for client in clients:
        for (action, project), count in client.succeeded.items():
            wanted[(client.user, action, project)] += count
    for project in PROJECTS:
        wanted[(PUSHERS[project], "push", project)] = 1
        wanted[(PUSHERS[project], "projects:create", project)] = 1
    kinds = {"env:set", "scale", "push", "projects:create"}
    assert {k: n for k, n in audited.items() if k[1] in kinds} == dict(wanted)

    # Every project serves its own body through Caddy, whatever its replicas.
    disco.wait_for_proxy()
    for project in PROJECTS:
        response = wait_for(f"{project} through Caddy",
                            lambda p=project: (r := disco.get(f"{p}.localhost")).status_code == 200 and r, BOUND)
        assert response.text == f"{project}\n"

    env_changes = sum(n for c in clients for (a, _), n in c.succeeded.items() if a == "env:set")
    scale_changes = sum(n for c in clients for (a, _), n in c.succeeded.items() if a == "scale")
    print(f"\nmany at once: {len(PROJECTS)} pushes, {CLIENTS} API clients; pushes and changes done in "
          f"{changes_done:.1f} s, every deployment ended after {total:.1f} s")
    print(f"  deployments: {sum(statuses.values())} ({', '.join(f'{s} {n}' for s, n in sorted(statuses.items()))})")
    print(f"  changes: {env_changes} env:set ({sum(len(c.redeploys) for c in clients)} redeploying), "
          f"{scale_changes} scale; refused {len(refused)}, failed {len(broken)}")
    print(f"  audit entries: {sum(audited.values())} in all, {sum(wanted.values())} of pushes, projects and changes")
