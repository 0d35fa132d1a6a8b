"""How does `disco serve` hold up with many projects: its memory with 50 deployed, and 10 pushed at once?

The script starts its own `disco serve` (temp data dir, free loopback ports, an instance name of
its own, admin "bench") and deploys --projects projects p00, p01, ... of the tests' busybox httpd
app (FROM scratch; each project's page names the project and version, so no two builds share a
layer), pushed --setup-parallel at a time, each checked to answer through Caddy. Then:

  idle RSS   the daemon's VmRSS --settle seconds after the last project went live, with all of
             them deployed and nothing going on (target <= 80 MB); also the cores Docker
             (dockerd, containerd, the shims) kept busy meanwhile: mostly the health checks
             of the running tasks, which share the machine with the daemon.
  at once    --at-once projects (p00..) each get a new commit, and every one is pushed at the
             same moment, each by a team member of its own (a user may hold only 8 git sessions
             at once, and a team pushes as several people). Timed from the start until the last
             project answers its new page through Caddy with its deployment recorded live ("all
             live"); also until the last push returned. Every push must succeed and every
             project must go live.
  baseline   the floor a tool that builds these apps cannot beat: the same number of
             `DOCKER_BUILDKIT=1 docker build`s (Debian's CLI, the flags Disco's own build uses) of
             the same apps with a new page, started at the same moment by hand, timed until the
             last one finished. Builds only: no service is started, checked or switched.

The at-once round and the baseline repeat --repeat times, alternating which goes first so a
noisy moment does not always hit the same one; the medians count. It prints each round (with the
mean of each step of Disco's deployments, from their records: build, start, health, switch,
cleanup), the ratio disco all-live / baseline (target <= 1.2x) with PASS or MISS, the same for
the pushes' return, and the daemon's RSS (VmRSS, VmHWM) at each stage; the figures go to
bench/results/projects.json. The exit status is 0 whatever was measured, 1 if something broke. The daemon and its Docker
objects (services, images, networks, its Caddy), the baseline's images and the temp dir are
removed at the end, also on Ctrl-C.

Run by hand, from the repo root (never from the tests; 5-10 minutes with the defaults, a minute
or two with --projects 10):

    .venv/bin/python bench/projects.py [--projects 50] [--at-once 10] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from disco_harness import (
    DOCKER,
    GIT_ENV,
    Daemon,
    PushResult,
    describe_machine,
    ignore_signals,
    keep_signals_for_main_thread,
    run,
    running_daemon,
    run_measurement,
    write_app,
    write_results,
)
from runtime.docker_specs import build_command

IDLE_RSS_TARGET_MB = 80.0
AT_ONCE_RATIO_TARGET = 1.2
HEALTHY_TOML = "[services.web]\nport = 8000\n"
LIVE_TIMEOUT_SECONDS = 300
POLL_SECONDS = 0.05
BUILD_TIMEOUT_SECONDS = 600


# -- the apps ----------------------------------------------------------------------------------


def project_name(index: int) -> str:
    return f"p{index:02d}"


def page(project: str, version: int) -> str:
    return f"{project} v{version}\n"


def write_project_app(path: Path, project: str, version: int) -> None:
    """The busybox app, its page naming project and version, so no two builds share a layer."""
    write_app(path, version)
    (path / "www" / "index.html").write_text(page(project, version))


def commit(repo: Path, project: str, version: int) -> None:
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        run(["git", "init", "-q", "-b", "main", str(repo)])
    write_project_app(repo, project, version)
    (repo / "disco.toml").write_text(HEALTHY_TOML)
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.com", "commit", "-q", "-m",
         f"v{version}"], cwd=repo)


def serves(daemon: Daemon, client: httpx.Client, project: str, body: str) -> bool:
    try:
        response = client.get(daemon.app_url(), headers={"Host": f"{project}.localhost"})
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.text == body


def wait_until_all_live(daemon: Daemon, bodies: dict[str, str], timeout: float = LIVE_TIMEOUT_SECONDS) -> float:
    """Until every project answered its body through Caddy and its newest deployment record says
    live (the switch is done, not merely a new task in the DNS answers); when the last one was."""
    waiting = dict(bodies)
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as client:
        while waiting:
            for project, body in list(waiting.items()):
                if serves(daemon, client, project, body) and daemon.deployments(project)[-1]["status"] == "live":
                    del waiting[project]
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not live within {timeout:.0f} s: {', '.join(sorted(waiting))}")
            time.sleep(POLL_SECONDS)
    return time.monotonic()


# -- the daemon's side -------------------------------------------------------------------------


def rss_mb(daemon: Daemon) -> dict[str, float]:
    """VmRSS and VmHWM of the daemon, in MB."""
    assert daemon.process is not None
    found: dict[str, float] = {}
    with open(f"/proc/{daemon.process.pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0]) / 1000
    return found


DOCKER_PROCESSES = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2")


def docker_cpu_seconds() -> float:
    """CPU time so far of dockerd, containerd and the shims (with what they reaped: runc, the
    health checks' processes), in seconds."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                raw = stat.read()
        except OSError:  # gone meanwhile
            continue
        name, fields = raw[raw.index("(") + 1:raw.rindex(")")], raw[raw.rindex(")") + 2:].split()
        if name in DOCKER_PROCESSES or name.startswith("containerd-shim"):
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def idle_docker_cores(seconds: float) -> float:
    """Cores Docker keeps busy while nothing is deployed or pushed: mostly the health checks of
    the running tasks."""
    before, started = docker_cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (docker_cpu_seconds() - before) / (time.monotonic() - started)


@dataclass(frozen=True)
class Pusher:
    """A team member with a key of their own, who pushes one project."""

    name: str
    key: Path

    def git_env(self, daemon: Daemon) -> dict[str, str]:
        env = daemon.git_env()
        env["GIT_SSH_COMMAND"] = env["GIT_SSH_COMMAND"].replace(str(daemon.key), str(self.key))
        return env


def add_pushers(daemon: Daemon, count: int) -> list[Pusher]:
    """`count` admins with an SSH key each, added through the API."""
    pushers = []
    headers = {"Authorization": f"Bearer {daemon.api_key}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{daemon.api_port}/api/v1", headers=headers, timeout=30) as api:
        for number in range(count):
            pusher = Pusher(f"pusher{number}", daemon.workdir / f"pusher{number}_key")
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", pusher.name, "-f", str(pusher.key)])
            api.post("/users", json={"name": pusher.name, "role": "admin"}).raise_for_status()
            public_key = Path(f"{pusher.key}.pub").read_text().strip()
            api.post("/ssh-keys", json={"public_key": public_key, "user": pusher.name}).raise_for_status()
            pushers.append(pusher)
    return pushers


def push_project(daemon: Daemon, repo: Path, project: str, env: dict[str, str]) -> PushResult:
    """`git push` of main to the project, with the ssh key `env` names."""
    started = time.monotonic()
    result = subprocess.run(["git", "push", "-q", daemon.url(project), "main"], cwd=repo, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=LIVE_TIMEOUT_SECONDS)
    lines = [(time.monotonic(), line) for line in result.stderr.splitlines()]
    return PushResult(result.returncode, started, time.monotonic(), lines)


def deploy_all(daemon: Daemon, workdir: Path, count: int, parallel: int) -> float:
    """Push v1 of every project, `parallel` at a time, until each is live; seconds taken."""
    projects = [project_name(i) for i in range(count)]
    for project in projects:
        commit(workdir / "repos" / project, project, 1)
    started = time.monotonic()

    def deploy(project: str) -> None:
        keep_signals_for_main_thread()
        result = push_project(daemon, workdir / "repos" / project, project, daemon.git_env())
        if result.returncode != 0:
            raise RuntimeError(f"the first push of {project} failed:\n{result.tail()}\n{daemon.log_tail()}")

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(deploy, projects))
    wait_until_all_live(daemon, {project: page(project, 1) for project in projects})
    return time.monotonic() - started


STEPS = ("build", "start", "health", "switch", "cleanup")


@dataclass(frozen=True)
class AtOnce:
    pushed: float  # start -> the last push returned
    live: float  # start -> the last project answered its new page
    steps: dict[str, float]  # each step's seconds (the deployment records' timings), mean of the projects


def disco_at_once(daemon: Daemon, workdir: Path, pushers: list[Pusher], version: int) -> AtOnce:
    projects = [project_name(i) for i in range(len(pushers))]
    for project in projects:
        commit(workdir / "repos" / project, project, version)
    results: dict[str, PushResult] = {}
    barrier = threading.Barrier(len(projects) + 1)

    def push_one(project: str, pusher: Pusher) -> None:
        keep_signals_for_main_thread()
        barrier.wait()
        results[project] = push_project(daemon, workdir / "repos" / project, project, pusher.git_env(daemon))

    threads = [threading.Thread(target=push_one, args=(p, u), daemon=True) for p, u in zip(projects, pushers, strict=True)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.monotonic()
    live = wait_until_all_live(daemon, {project: page(project, version) for project in projects})
    for thread in threads:
        thread.join(LIVE_TIMEOUT_SECONDS)
    failed = {p: r for p, r in results.items() if r.returncode != 0}
    if failed or len(results) != len(projects):
        details = "\n".join(f"{p}: {r.tail()}" for p, r in failed.items())
        raise RuntimeError(f"pushes failed at once (v{version}):\n{details}\n{daemon.log_tail()}")
    pushed = max(r.finished for r in results.values())
    timings = [json.loads(daemon.deployments(project)[-1]["timings"] or "{}") for project in projects]
    steps = {step: statistics.mean(t.get(step, 0.0) for t in timings) for step in STEPS}
    return AtOnce(pushed=pushed - started, live=live - started, steps=steps)


# -- the baseline: the same builds, at once, by hand -------------------------------------------


class BaselineBuilds:
    """`docker build`s of the apps, labelled so that exactly their images are removed after."""

    def __init__(self, workdir: Path, instance: str) -> None:
        self.root = workdir / "baseline"
        self.label = f"disco.bench.projects={instance}"
        self.repository = f"{instance}-baseline"

    def build_at_once(self, count: int, version: int) -> float:
        """Seconds from starting `count` builds at once until the last one finished."""
        commands = []
        for index in range(count):
            project = project_name(index)
            context = self.root / project
            write_project_app(context, f"{project} baseline", version)
            (context / "disco.toml").write_text(HEALTHY_TOML)
            key, _, value = self.label.partition("=")
            commands.append(build_command(context, context / "Dockerfile", f"{self.repository}-{project}:{version}",
                                          {}, {key: value}))
        env = {**GIT_ENV, "DOCKER_BUILDKIT": "1"}
        started = time.monotonic()
        processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env) for command in commands]
        outputs = [process.communicate(timeout=BUILD_TIMEOUT_SECONDS)[0] for process in processes]
        finished = time.monotonic()
        for command, process, output in zip(commands, processes, outputs, strict=True):
            if process.returncode != 0:
                raise RuntimeError(f"baseline build {command[-1]} exited {process.returncode}:\n"
                                   f"{output.decode(errors='replace')[-1500:]}")
        return finished - started

    def remove(self) -> None:
        images = subprocess.run([DOCKER, "image", "ls", "-q", "--filter", f"label={self.label}"],
                                capture_output=True, text=True, timeout=60).stdout.split()
        if images:
            subprocess.run([DOCKER, "image", "rm", "-f", *sorted(set(images))], capture_output=True, timeout=300)
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def baseline_builds(workdir: Path, instance: str) -> Iterator[BaselineBuilds]:
    builds = BaselineBuilds(workdir, instance)
    try:
        yield builds
    finally:
        ignore_signals()
        builds.remove()


# -- the run -----------------------------------------------------------------------------------


def measure(args: argparse.Namespace, workdir: Path) -> None:
    print(f"projects bench: {args.projects} projects deployed, then {args.at_once} pushed at once "
          f"({args.repeat} rounds) against {args.at_once} docker builds at once")
    print(f"machine: {describe_machine()}")
    figures: dict[str, object] = {"projects": args.projects, "at_once": args.at_once, "repeat": args.repeat}
    with running_daemon(workdir) as daemon, baseline_builds(workdir, daemon.instance) as baseline:
        print(f"daemon: instance {daemon.instance}, http port {daemon.http_port}", flush=True)
        time.sleep(args.settle)
        figures["rss_started_mb"] = rss_mb(daemon)["VmRSS"]
        print(f"RSS started, no project: {figures['rss_started_mb']:.1f} MB", flush=True)
        pushers = add_pushers(daemon, args.at_once)
        setup = deploy_all(daemon, workdir, args.projects, args.setup_parallel)
        print(f"deployed {args.projects} projects in {setup:.1f} s ({args.setup_parallel} pushes at a time)", flush=True)
        figures["docker_idle_cores"] = idle_docker_cores(args.settle)
        deployed = rss_mb(daemon)
        figures["rss_deployed_idle_mb"], figures["hwm_after_deploys_mb"] = deployed["VmRSS"], deployed["VmHWM"]
        print(f"RSS with {args.projects} deployed, idle {args.settle:.0f} s: {deployed['VmRSS']:.1f} MB "
              f"(VmHWM {deployed['VmHWM']:.1f} MB); meanwhile Docker (dockerd, containerd, shims) used "
              f"{figures['docker_idle_cores']:.2f} of {os.cpu_count()} cores", flush=True)

        rounds: list[tuple[AtOnce, float]] = []
        for number in range(args.repeat):
            version = number + 2
            if number % 2 == 0:
                disco = disco_at_once(daemon, workdir, pushers, version)
                built = baseline.build_at_once(args.at_once, version)
            else:
                built = baseline.build_at_once(args.at_once, version)
                disco = disco_at_once(daemon, workdir, pushers, version)
            rounds.append((disco, built))
            print(f"  round {number + 1}: disco all pushes returned {disco.pushed:.2f} s, all live {disco.live:.2f} s; "
                  f"baseline {args.at_once} builds {built:.2f} s", flush=True)
            print("    disco's steps, mean of the projects: "
                  + ", ".join(f"{step} {seconds:.2f} s" for step, seconds in disco.steps.items()), flush=True)
        after = rss_mb(daemon)
        report(args, figures, deployed, rounds, after)
    write_results("projects", figures)


def report(args: argparse.Namespace, figures: dict[str, object], deployed: dict[str, float],
           rounds: list[tuple[AtOnce, float]], after: dict[str, float]) -> None:
    live = statistics.median(d.live for d, _ in rounds)
    pushed = statistics.median(d.pushed for d, _ in rounds)
    built = statistics.median(b for _, b in rounds)
    idle_ok = deployed["VmRSS"] <= IDLE_RSS_TARGET_MB
    ratio_ok = live / built <= AT_ONCE_RATIO_TARGET
    print()
    print(f"daemon RSS with {args.projects} projects deployed, idle: {deployed['VmRSS']:.1f} MB "
          f"(target <= {IDLE_RSS_TARGET_MB:.0f} MB) {'PASS' if idle_ok else 'MISS'}")
    print(f"{args.at_once} projects pushed at once (medians of {len(rounds)}): all live {live:.2f} s, "
          f"all pushes returned {pushed:.2f} s; {args.at_once} docker builds at once {built:.2f} s")
    print(f"  all live / builds at once        {live / built:5.2f}x  (target <= {AT_ONCE_RATIO_TARGET}x) "
          f"{'PASS' if ratio_ok else 'MISS'}")
    print(f"  pushes returned / builds at once {pushed / built:5.2f}x")
    print(f"daemon after the rounds: VmRSS {after['VmRSS']:.1f} MB, VmHWM {after['VmHWM']:.1f} MB")
    figures.update({
        "at_once_live_s": live, "at_once_pushed_s": pushed, "baseline_builds_s": built,
        "ratio_live_to_builds": live / built, "ratio_pushed_to_builds": pushed / built,
        "rounds": [{"live_s": d.live, "pushed_s": d.pushed, "builds_s": b, "steps_mean_s": d.steps} for d, b in rounds],
        "rss_after_rounds_mb": after["VmRSS"], "hwm_after_rounds_mb": after["VmHWM"],
    })


# -- entry -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=50, help="projects to deploy (default 50)")
    parser.add_argument("--at-once", type=int, default=10, help="of them, pushed at once (default 10)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of pushes at once and baseline (default 2)")
    parser.add_argument("--setup-parallel", type=int, default=4, help="first pushes running at a time (default 4)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before reading RSS (default 5)")
    args = parser.parse_args(argv)
    if not 1 <= args.projects <= 100 or not 1 <= args.at_once <= args.projects:
        parser.error("--projects must be 1..100 and --at-once 1..--projects")
    if args.repeat < 1 or args.setup_parallel < 1 or args.settle < 0:
        parser.error("--repeat and --setup-parallel must be positive, --settle not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_measurement(measure, parse_args(argv), "disco-bench-projects-")


if __name__ == "__main__":
    sys.exit(main())
