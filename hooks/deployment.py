"""One deployment, stage by stage: fetch, build, plan, release, start, wait until healthy, switch,
clean up.

A small stage runner does the bookkeeping around the stages: it stops at a cancel between
stages, times each stage into the record, and on any error undoes what the deployment started,
so the old version keeps serving (swarm only stops an old task once its replacement is healthy,
and rolls back on its own when one never is).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hooks import holds
from hooks.engine import DeployEngine
from hooks.errors import DeployFailed
from hooks.ports import published_port_problem
from hooks.queue import Ticket
from hooks.router import Router
from runtime import gitrepo
from runtime.appconfig import (
    DEFAULT_PORT,
    AppConfig,
    AppConfigError,
    ReleaseConfig,
    ServiceConfig,
    check_caps,
    config_at,
)
from runtime.caddy import UPSTREAM_REFRESH_SECONDS, CaddyError
from runtime.docker_engine import DockerError, DockerUnreachable, RunResult, ServiceSpec
from runtime.docker_specs import TaskLimits, task_limits
from runtime.dockerfile import DockerfileError, prepare
from runtime.settings import Settings, load_or_create_secret
from runtime.store import WENT_LIVE, Deployment, DeploymentStatus, Store, StoreFull, now

log = logging.getLogger("disco.deploy")

# Errors that say what went wrong in the deploy's own terms; anything else is a bug, logged.
KNOWN_ERRORS = (DeployFailed, DockerError, CaddyError, gitrepo.GitRepoError, AppConfigError, StoreFull)
# How long a deployment that lost Docker waits for it, to undo what it started.
DOCKER_RETURN_WAIT = 600


@dataclass(frozen=True)
class Stage:
    name: str  # its key in the record's timings, and its hold point (hooks/holds.py)
    run: Callable[[], None]
    timed: bool = True  # False for a stage too quick to time, or one that times itself


class DeploymentRun:
    """One deployment; `run` goes through the stages and returns the final record."""

    def __init__(self, settings: Settings, store: Store, engine: DeployEngine, router: Router,
                 ticket: Ticket) -> None:
        self.settings, self.store, self.engine, self.router = settings, store, engine, router
        self.ticket = ticket
        self.d = ticket.deployment
        self.out = ticket.output
        self.timings: dict[str, float] = {}
        # What the stages made, in order: the undo needs it.
        self.image = ""
        self.built_image = False
        self.tagged = ""  # the image tag this deployment made (built or retagged), for the undo
        self.specs: list[ServiceSpec] = []
        self.applied: list[tuple[ServiceSpec, bool]] = []  # (spec, created) in the order started
        self.release_started = False
        self._app_config: AppConfig | None = None

    def run(self) -> Deployment:
        self._set(status=DeploymentStatus.BUILDING)
        stages = [
            *([Stage("fetch", self.fetch)] if self.ticket.prepare is not None else []),
            Stage("build", self.build),
            Stage("plan", self.plan, timed=False),
            Stage("release", self.release, timed=False),  # only a deployment with a release command has one
            Stage("start", self.start),
            Stage("health", self.wait_until_healthy),
            Stage("switch", self.switch),
        ]
        for stage in stages:
            try:
                # Between stages; the last check, before switch, is the last moment to stop.
                self._stop_if_cancelled()
                self._timed(stage)
            except Exception as err:  # whatever broke, undo what this deployment started
                return self._fail(err)
        self._timed(Stage("cleanup", self.clean_up))
        self.out.line(f"deployment #{self.d.number} is live" + self._where())
        return self._set(finished_at=now())

    # -- the stages ------------------------------------------------------------------------

    def fetch(self) -> None:
        """Work the queue does first (a webhook's git fetch), so a superseded one never does it."""
        assert self.ticket.prepare is not None
        self.ticket.prepare(self.out)

    def build(self) -> None:
        engine, d = self.engine, self.d
        tag = engine.image_tag(d.project, d.number)  # random: the record's `image` keeps it
        if d.image:  # a rollback or env change: reuse the image, no rebuild
            engine.retag(d.image, tag)
            self.tagged = tag
            self.out.line(f"reusing image of {d.image} (no rebuild)")
            self.image = tag
            return
        repo = self._repo()
        config = self._config()
        for submodule in gitrepo.submodules(repo, d.commit_sha):
            self.out.line(f"warning: submodule {submodule} is skipped: its files are not part of the build context")
        with tempfile.TemporaryDirectory(prefix=f"disco-build-{d.project}-") as tmp:
            tree = Path(tmp) / "tree"
            gitrepo.export_tree(repo, d.commit_sha, tree)
            dockerfile = tree / config.dockerfile_path
            context = tree / config.build.context
            for path, what in ((dockerfile, "build.dockerfile"), (context, "build.context")):
                # A symlink in the repo must not lead the build to the server's own files.
                if not path.resolve().is_relative_to(tree.resolve()):
                    raise DeployFailed(f"{what} leads outside the repo (through a symlink)")
            if not dockerfile.is_file():
                raise DeployFailed(f"no Dockerfile at {config.dockerfile_path} in {d.commit_sha[:7]}")
            checked = self._checked_dockerfile(dockerfile, config.dockerfile_path, config.build.args, Path(tmp))
            self.out.line(f"building {config.dockerfile_path} of {d.commit_sha[:7]}")
            labels = engine.labels(project=d.project, deployment=str(d.number), commit=d.commit_sha)
            self.tagged = tag  # a cancelled build may still tag it
            engine.build(context, checked, tag, config.build.args, labels, self.out.line, stop=self._cancelled)
        self.built_image = True
        self.image = tag

    def _checked_dockerfile(self, dockerfile: Path, shown: str, args: dict[str, str], tmp: Path) -> Path:
        """The Dockerfile to build: refused if it names an image this project may not use, and
        with its cache mounts made private to the project (runtime/dockerfile.py). Written beside
        the exported tree, so the build context stays the commit's own files."""
        text = dockerfile.read_bytes().decode("utf-8", "surrogateescape")
        try:
            checked = prepare(text, build_args=args, instance=self.settings.instance, project=self.d.project,
                              cache_key=load_or_create_secret(self.settings.cache_key_path),
                              owner_of=self.engine.image_owner,
                              filename=shown)
        except DockerfileError as err:
            raise DeployFailed(str(err)) from None
        target = tmp / "dockerfile" / dockerfile.name
        target.parent.mkdir()
        target.write_bytes(checked.encode("utf-8", "surrogateescape"))
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")  # BuildKit reads it beside the file
        if ignore.is_file():
            target.with_name(ignore.name).write_bytes(ignore.read_bytes())
        return target

    def plan(self) -> None:
        """The swarm spec of every running service (scheduled ones run at their times, see
        hooks/scheduler.py), on the env and scale of now."""
        engine, d = self.engine, self.d
        scale = self.store.scale(d.project)
        exposed = engine.exposed_ports(self.image)
        config = self._config()
        # Checked before the ref moved too; the settings, and what others publish, may have changed since.
        check_caps(config, self.settings.caps)
        if problem := published_port_problem(config, d.project, self.settings, scale, engine.host_ports):
            raise DeployFailed(problem)
        for service in config.running_services.values():
            port = _port_of(service, exposed)
            service_env = self._env(service.name)
            if port is not None:
                service_env["PORT"] = str(port)
            self.specs.append(ServiceSpec(
                name=engine.service_name(d.project, service.name),
                image=self.image,
                network=engine.network_name,
                labels=engine.labels(project=d.project, service=service.name, deployment=str(d.number)),
                env=service_env,
                replicas=scale.get(service.name, service.replicas),
                args=self._command(service.command, service.shell),
                port=port,
                health_path=service.health,
                health_timeout=service.health_timeout,
                mounts=self._mounts(service),
                limits=task_limits(service.limits, self.settings),
                health_command=shlex.split(service.health_command) if service.health_command else None,
                publish=service.publish,
            ))

    def release(self) -> None:
        """The release command (migrations, say): once, in the new image, before any new task
        starts; a failure keeps the old version serving. A rollback does not run it again."""
        release = self._config().release
        if release is None:
            return
        if self.d.source == "rollback":
            self.out.line("release command skipped: a rollback puts back an image that was released before")
            return
        web = self._config().services.get("web") or ServiceConfig("web")
        for volume, _ in self._mounts(web):  # made here with the project's label, not by `docker run`
            self.engine.ensure_volume(volume, self.d.project)
        self.out.line(f"running the release command: {release.command}")
        self.release_started = True
        started = time.monotonic()
        try:
            result = self._run_release(release, web)
        finally:
            self.timings["release"] = round(time.monotonic() - started, 3)  # stored with the next write
        if (problem := _release_problem(result, release, task_limits(web.limits, self.settings))) is not None:
            raise DeployFailed(problem)
        self.out.line("release command done")

    def _run_release(self, release: ReleaseConfig, web: ServiceConfig) -> RunResult:
        return self.engine.run_to_end(
            image=self.image,
            command=self._command(release.command, release.shell),
            env=self._env("release"),
            mounts=self._mounts(web),
            labels=self.engine.labels(project=self.d.project, role="release", deployment=str(self.d.number)),
            limits=task_limits(web.limits, self.settings),
            on_line=lambda line: self.out.line(f"release | {line}"),
            timeout=release.timeout,
            stop=self._cancelled,
        )

    def start(self) -> None:
        """New tasks start beside the old ones; swarm keeps the old ones until these are healthy."""
        web = next((s for s in self.specs if s.labels["disco.service"] == "web" and s.port), None)
        self.d = self._set(status=DeploymentStatus.STARTING, image=self.image, web_port=web.port if web else 0,
                           web_service=web.name if web else "")
        for spec in self.specs:
            for volume, _ in spec.mounts:
                self.engine.ensure_volume(volume, self.d.project)
            self.out.line(f"starting {spec.name} ({spec.replicas} replica(s))")
            if spec.stops_first:
                ports = ", ".join(f"{p.published}/{p.protocol}" for p in spec.publish)
                self.out.line(f"services.{spec.labels['disco.service']} publishes {ports}: its update stops the "
                              "old task first (two tasks cannot share a host port)")
            created = self.engine.apply(spec)
            self.applied.append((spec, created))

    def wait_until_healthy(self) -> None:
        for spec, created in self.applied:
            self.out.line(f"waiting for {spec.name} to be healthy ({spec.check}, up to {spec.health_timeout} s)")
            # Swarm's own clock (start period + retries) fails the task first; this is the backstop.
            self.engine.wait_rollout(spec, created, spec.health_timeout + 30, self.out.line, stop=self._cancelled)
        if any(not created for _, created in self.applied):
            # Old tasks may still answer for a moment; once Caddy has looked the names up
            # again, "live" means only the new version gets requests.
            time.sleep(2 * UPSTREAM_REFRESH_SECONDS + 0.1)

    def switch(self) -> None:
        """Route to the new version and record it live; the one it replaces steps down."""
        previous = self.store.live_deployment(self.d.project)
        def mark_live() -> None:
            holds.point("switch-routed", self.out.line)  # Caddy routes to it; the store does not say live yet
            self._set(status=DeploymentStatus.LIVE)

        if self.router.switch(self.d, mark_live=mark_live):
            self.out.line("routes updated")
        if previous:
            stepped_down = DeploymentStatus.ROLLED_BACK if self.d.source == "rollback" else DeploymentStatus.REPLACED
            self.store.update_deployment(self.d.project, previous.number, status=stepped_down)

    def clean_up(self) -> None:
        """Services dropped from disco.toml go, and images beyond the kept ones."""
        try:
            wanted = {s.name for s in self.specs}
            for service in self.engine.project_services(self.d.project):
                if service.name not in wanted:
                    self.out.line(f"removing service {service.name}: the app no longer runs it "
                                  "(not in disco.toml or the Procfile, or now scheduled)")
                    self.engine.remove_service(service.name)
            self._prune_images()
        except DockerError as err:  # the new version is live; leftovers go next time
            self.out.line(f"warning: cleanup incomplete: {err}")

    def _prune_images(self) -> None:
        """Keep the live image and the newest others that once ran, up to keep_images in all."""
        ran = [x.image for x in self.store.list_deployments(self.d.project, limit=1000) if x.status in WENT_LIVE]
        kept = {*ran[: self.settings.keep_images], self.image}  # tags as the records hold them
        for tag in self.engine.project_images(self.d.project).values():
            if tag not in kept:
                self.engine.remove_image(tag)
        self.engine.remove_untagged_images(self.d.project)

    # -- failure ---------------------------------------------------------------------------

    def _cancelled(self) -> bool:
        return bool(self.ticket.cancelled_by)

    def _stop_if_cancelled(self) -> None:
        if self.ticket.cancelled_by:
            raise DeployFailed("cancelled")

    def _fail(self, err: Exception) -> Deployment:
        """Record why (a cancel, a known failure, or a bug), undo, and say what keeps serving."""
        status = DeploymentStatus.FAILED
        if self.ticket.cancelled_by:
            status, reason = DeploymentStatus.CANCELLED, f"cancelled by {self.ticket.cancelled_by}"
        elif isinstance(err, KNOWN_ERRORS):
            reason = str(err)
        else:
            log.exception("deployment #%d of %s failed unexpectedly", self.d.number, self.d.project, exc_info=err)
            reason = f"{type(err).__name__}: {err}"
        docker_went_away = isinstance(err, DockerUnreachable) or (
            isinstance(err, DockerError) and not self.engine.reachable())
        if docker_went_away:
            reason = f"Docker stopped during the deployment: {reason}"
        self.out.line(f"deploy {status}: {reason}")
        if docker_went_away:
            if not self._wait_for_docker():
                self.out.line(f"warning: Docker did not come back within {DOCKER_RETURN_WAIT} s; "
                              "this deployment's services were not undone: deploy again once it is back")
                return self._set(status=status, reason=reason, finished_at=now(), timings=json.dumps(self.timings))
            if self.release_started:  # its own cleanup failed while Docker was away
                with contextlib.suppress(DockerError):
                    self.engine.remove_containers(self.d.project, "release")
        self._undo()
        self.out.line("the previous version keeps serving" if self.store.live_deployment(self.d.project)
                      else "nothing was left running")
        return self._set(status=status, reason=reason, finished_at=now(), timings=json.dumps(self.timings))

    def _wait_for_docker(self) -> bool:
        """Wait for dockerd to answer again, so the undo sees what swarm made of this deployment."""
        self.out.line("waiting for Docker to come back, to undo what this deployment started")
        deadline = time.monotonic() + DOCKER_RETURN_WAIT
        while not self.engine.reachable():
            if time.monotonic() > deadline:
                return False
            time.sleep(1)
        self.out.line("Docker is back")
        return True

    def _undo(self) -> None:
        engine = self.engine
        for spec, created in reversed(self.applied):
            try:
                current = engine.service_state(spec.name)
                if created:
                    engine.remove_service(spec.name)
                elif (current and current.deployment == str(self.d.number)
                      and not current.update_state.startswith("rollback")):
                    engine.restore_previous(spec.name)  # swarm undoes the failed ones itself
            except DockerError as err:
                self.out.line(f"warning: could not undo {spec.name}: {err}")
        if self.tagged:
            engine.remove_image(self.tagged)

    # -- bookkeeping -----------------------------------------------------------------------

    def _timed(self, stage: Stage) -> None:
        holds.point(stage.name, self.out.line)
        started = time.monotonic()
        try:
            stage.run()
        finally:
            if stage.timed:
                self.timings[stage.name] = round(time.monotonic() - started, 3)
                self.store.update_deployment(self.d.project, self.d.number, timings=json.dumps(self.timings))

    def _set(self, **changes: object) -> Deployment:
        return self.store.update_deployment(self.d.project, self.d.number, **changes)

    def _repo(self) -> Path:
        return gitrepo.repo_path(self.settings.repos_dir, self.d.project)

    def _config(self) -> AppConfig:
        if self._app_config is None:
            self._app_config = config_at(self._repo(), self.d.commit_sha)
        return self._app_config

    def _env(self, service: str) -> dict[str, str]:
        d = self.d
        return {**self.store.env(d.project), "DISCO_PROJECT": d.project, "DISCO_SERVICE": service,
                "DISCO_DEPLOYMENT": str(d.number), "DISCO_COMMIT": d.commit_sha}

    def _command(self, command: str | None, shell: bool) -> list[str] | None:
        """A Procfile line runs in the image's shell, as Heroku runs it; disco.toml's is split into words."""
        if command is None:
            return None
        return [*self.engine.image_shell(self.image), command] if shell else shlex.split(command)

    def _mounts(self, service: ServiceConfig) -> list[tuple[str, str]]:
        return [(self.engine.volume_name(self.d.project, v.name), v.mount) for v in service.volumes]

    def _where(self) -> str:
        hosts = self.router.hosts_of(self.d.project)
        return f" at {', '.join(hosts)}" if hosts else ""


def _release_problem(result: RunResult, release: ReleaseConfig, limits: TaskLimits) -> str | None:
    if result.cancelled:
        return "cancelled during the release command"
    if result.timed_out:
        return f"release command timed out after {release.timeout} s (set [release] timeout in disco.toml)"
    if result.out_of_memory:
        return f"release command ran out of memory (limit {limits.memory}) and was killed"
    if result.exit_code != 0:
        return f"release command exited with {result.exit_code}"
    return None


def _port_of(service: ServiceConfig, exposed: list[int]) -> int | None:
    if service.port is not None:
        return service.port
    if not service.is_web:
        return None  # a worker without a port gets no health check and no route
    return exposed[0] if len(exposed) == 1 else DEFAULT_PORT
