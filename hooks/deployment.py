"""One deployment, stage by stage: fetch, build, plan, release, start, wait until healthy, switch,
clean up. Once switched it is live and says so: whoever waits for it (a push) is answered
then, and the cleanup goes on in the daemon, into the log, in the project's turn of the queue
(the next deployment of the project waits for it).

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
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hooks import holds, registry
from hooks.engine import DeployEngine
from hooks.images import Images, submodule_warnings
from hooks.errors import DeployFailed
from hooks.ports import published_port_problem
from hooks.queue import Ticket
from hooks.router import Router
from runtime import gitrepo, staticsites
from runtime.appconfig import (
    DEFAULT_IMAGE,
    DEFAULT_PORT,
    AppConfig,
    AppConfigError,
    ReleaseConfig,
    ServiceConfig,
    check_caps,
)
from runtime.appsource import config_at
from runtime.caddy import UPSTREAM_REFRESH_SECONDS, CaddyError
from runtime.docker_engine import DockerError, DockerUnreachable, RunResult, ServiceSpec
from runtime.docker_specs import TaskLimits, placement, service_networks, task_limits, volume_label
from runtime.registry import RegistryAccess
from runtime.settings import Settings
from runtime.store import WENT_LIVE, Deployment, DeploymentStatus, Store, StoreFull, now

log = logging.getLogger("disco.deploy")

# Errors that say what went wrong in the deploy's own terms; anything else is a bug, logged.
KNOWN_ERRORS = (DeployFailed, DockerError, CaddyError, gitrepo.GitRepoError, AppConfigError, StoreFull)
# How long a deployment that lost Docker waits for it, to undo what it started.
DOCKER_RETURN_WAIT = 600
# After this deploy sees swarm complete an update, the old tasks leave the service's DNS name
# within this: the node's agent stops them a moment later. Measured here from swarm's own
# completion time: up to 0.3 s on a loaded machine, and more under a load average of 50, when
# counting from that time let old answers through; counted from when the deploy sees the
# completion (a poll later, which grows with the load too), it has room to spare. A deploy waits
# this long only for services it cannot watch leave swarm's DNS (runtime/swarm_dns.py): a private
# service with no new task on this node, or a daemon without root. It watches the others, which
# leave 0.06 to 0.1 s after swarm's completion on an idle machine and later on a loaded one,
# for up to OLD_TASKS_DNS_TIMEOUT.
OLD_TASKS_LEAVE_DNS_SECONDS = 0.4
OLD_TASKS_DNS_TIMEOUT = 10


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
        self.images: dict[str, str] = {}  # image name -> tag, built or retagged
        self._images = Images(settings, engine, self.d, self.out.line, self._cancelled)  # `made`: for the undo
        self.specs: list[ServiceSpec] = []
        self.applied: list[tuple[ServiceSpec, bool]] = []  # (spec, created) in the order started
        self.previous: Deployment | None = None  # what served before the switch
        self.registry: RegistryAccess | None = None  # where the other nodes pull the images from, if any
        self.pushed: dict[str, str] = {}  # local tag -> its reference in the registry, pinned to its digest
        self.release_started = False
        self._app_config: AppConfig | None = None

    def run(self) -> Deployment:
        self._set(status=DeploymentStatus.BUILDING)
        stages = [
            *([Stage("fetch", self.fetch)] if self.ticket.prepare is not None else []),
            Stage("build", self.build),
            Stage("push", self.push, timed=False),  # timed by itself: only a swarm of several nodes has one
            Stage("plan", self.plan, timed=False),
            Stage("static", self.static_site, timed=False),  # timed by itself: only a static site has one
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
        self.out.line(f"deployment #{self.d.number} is live" + self._where())
        self.ticket.answer(self.d)  # the push returns now: retiring what it replaced is not its wait
        try:
            self._timed(Stage("cleanup", self.clean_up))
        except Exception as err:  # it serves and stays live: what was left behind goes next time
            log.exception("cleanup after deployment #%d of %s broke", self.d.number, self.d.project)
            self.out.line(f"warning: cleanup incomplete: {type(err).__name__}: {err}")
        return self._set(finished_at=now())

    # -- the stages ------------------------------------------------------------------------

    def fetch(self) -> None:
        """Work the queue does first (a webhook's git fetch), so a superseded one never does it."""
        assert self.ticket.prepare is not None
        self.ticket.prepare(self.out)

    def build(self) -> None:
        """The app's images: built from the commit, or reused by a rollback or an env change."""
        d = self.d
        if d.image or d.image_tags:
            self.images = self._images.reuse(d)
            return
        config = self._config()
        for warning in submodule_warnings(self._repo(), d.commit_sha):
            self.out.line(warning)
        if not config.images_to_build:
            return  # only a static site from the repo's own files
        with tempfile.TemporaryDirectory(prefix=f"disco-build-{d.project}-") as tmp:
            tree = Path(tmp) / "tree"
            gitrepo.export_tree(self._repo(), d.commit_sha, tree)
            self.images = self._images.build(self._repo(), config, tree, Path(tmp) / "work")

    def push(self) -> None:
        """With more than one node, the images go to the registry the other nodes pull from."""
        try:
            self.registry = registry.for_deploy(self.settings, self.store, self.engine)
        except registry.RegistryProblem as err:  # unreadable settings or files: the message names the fix
            raise DeployFailed(f"the images cannot reach the other nodes: {err}") from None
        if self.registry is None or not self.images:
            return
        started = time.monotonic()
        self.out.line(f"pushing {len(self.images)} image(s) to the registry at {self.registry.address}, "
                      "where every node pulls them from")
        with registry.PUSHES_OR_COLLECTION.push():
            for tag in self.images.values():
                self.pushed[tag] = self.engine.push(tag, self.registry, self.out.line)
        self.timings["push"] = round(time.monotonic() - started, 3)
        self.d = self._set(timings=json.dumps(self.timings))

    def static_site(self) -> None:
        """A static site's folder, complete in its own place before anything routes to it: out
        of the built image, or out of the commit."""
        site = self._config().static_site
        if site is None:
            return
        assert site.static is not None
        run_dir, project = self.settings.run_dir, self.d.project
        started = time.monotonic()
        unpacked = staticsites.staging_dir(run_dir, project)
        try:
            if site.static_source == "repo":
                self._static_from_repo(site.static, unpacked)
            else:
                labels = self.engine.labels(project=project, role="static", deployment=str(self.d.number))
                self.engine.copy_out(self._image(site.image), site.static, unpacked, labels)
            folder = staticsites.install(unpacked, run_dir, project, self.d.number)
        except staticsites.StaticSiteError as err:
            raise DeployFailed(f"static site {site.static}: {err}") from None
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)
        files = sum(1 for path in folder.rglob("*") if path.is_file())
        self.out.line(f"static site: {files} file(s) from {site.static}"
                      + (" of the commit" if site.static_source == "repo" else " of the image"))
        self.timings["static"] = round(time.monotonic() - started, 3)
        self.d = self._set(static_site=folder.name, timings=json.dumps(self.timings))

    def _static_from_repo(self, folder: str, unpacked: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=f"disco-static-{self.d.project}-") as tmp:
            gitrepo.export_tree(self._repo(), self.d.commit_sha, Path(tmp))
            source = Path(tmp) / folder
            try:
                real = source.resolve(strict=False)
            except (RuntimeError, OSError):  # a link loop on the way
                raise DeployFailed(f"static folder {folder} goes through a link loop") from None
            if source.is_symlink() or not real.is_relative_to(Path(tmp).resolve()):
                # Moved as it is, a link would mean something else at its new place.
                raise DeployFailed(f"static folder {folder} is a link; name the folder itself")
            if not real.is_dir():
                raise DeployFailed(f"static folder {folder} is not in {self.d.commit_sha[:7]}")
            shutil.rmtree(unpacked)
            shutil.move(real, unpacked)

    def plan(self) -> None:
        """The swarm spec of every running service (scheduled ones run at their times, see
        hooks/scheduler.py), on the env and scale of now."""
        engine, d = self.engine, self.d
        scale = self.store.scale(d.project)
        config = self._config()
        # Checked before the ref moved too; the settings, and what others publish, may have changed since.
        check_caps(config, self.settings.caps)
        if problem := published_port_problem(config, d.project, self.settings, scale, engine.host_ports):
            raise DeployFailed(problem)
        here = engine.here_node_id()  # without a registry, the images are only there
        for service in config.running_services.values():
            image = self._image(service.image)
            mounts = self._mounts(service)
            port = _port_of(service, engine.exposed_ports(image))
            service_env = self._env(service.name)
            if port is not None:
                service_env["PORT"] = str(port)
            self.specs.append(ServiceSpec(
                name=engine.service_name(d.project, service.name),
                image=self.pushed.get(image, image),
                networks=service_networks(engine.network_name, engine.project_network_name(d.project), service.name,
                                          routed=service.is_web,
                                          internal_name=engine.internal_name(d.project, service.name)
                                          if service.internal else None),
                labels=engine.labels(project=d.project, service=service.name, deployment=str(d.number)),
                env=service_env,
                replicas=scale.get(service.name, service.replicas),
                args=self._command(service.command, service.shell, image),
                port=port,
                health_path=service.health,
                health_timeout=service.health_timeout,
                health_interval=self.settings.health_interval,
                mounts=mounts,
                limits=task_limits(service.limits, self.settings),
                health_command=shlex.split(service.health_command) if service.health_command else None,
                publish=service.publish,
                constraints=placement(here, self.registry is not None, self._volume_nodes(service.name, mounts),
                                      publishes=bool(service.publish)),
            ))

    def _volume_nodes(self, service: str, mounts: list[tuple[str, str]]) -> list[str]:
        """The volumes a service keeps to the node of, with a registry (so it could run anywhere):
        each volume's data stays on the node it was made on; the output says which."""
        if self.registry is None or not mounts:
            return []
        volumes = [volume for volume, _ in mounts]
        nodes = sorted({self.engine.label_volume_node(volume_label(volume)) for volume in volumes})
        self.out.line(f"services.{service} runs on {' and '.join(nodes)}, where its volume data lives")
        return volumes

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
            command=self._command(release.command, release.shell, self.image),
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
        extra_images = {name: tag for name, tag in self.images.items() if name != DEFAULT_IMAGE}
        self.d = self._set(status=DeploymentStatus.STARTING, image=self.image, images=json.dumps(extra_images),
                           web_port=web.port if web else 0, web_service=web.name if web else "")
        # Services made before project networks existed move to theirs in this update (start-first).
        self.engine.ensure_project_network(self.d.project)
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
            self.out.line(f"waiting for {spec.name} to be healthy ({spec.check}{spec.cadence}, up to "
                          f"{spec.health_timeout} s)")
            # Swarm's own clock (start period + retries) fails the task first; this is the backstop.
            self.engine.wait_rollout(spec, created, spec.swarm_gives_up_after + 30, self.out.line,
                                     stop=self._cancelled)
        updated = [spec for spec, created in self.applied if not created]
        if updated:
            # Old tasks may still answer for a moment; once they left swarm's DNS and Caddy
            # looked the names up again, "live" means only the new version gets requests.
            completed = time.monotonic()
            unseen = [spec.name for spec in updated
                      if not self.engine.wait_old_tasks_unresolved(spec, OLD_TASKS_DNS_TIMEOUT, self.out.line)]
            if unseen:
                self.out.line(f"waiting {OLD_TASKS_LEAVE_DNS_SECONDS} s for the old tasks of {', '.join(unseen)} to "
                              "leave swarm's DNS (it cannot be watched from this node)")
            # The fixed wait counts from the completion: the watch of the others ran meanwhile.
            fixed = max(0.0, OLD_TASKS_LEAVE_DNS_SECONDS - (time.monotonic() - completed)) if unseen else 0
            time.sleep(fixed + UPSTREAM_REFRESH_SECONDS + 0.1)

    def switch(self) -> None:
        """Route to the new version and record it live; the one it replaces steps down. A static
        site switches by its `live` link (runtime/staticsites.py), under the router's lock."""
        previous = self.store.live_deployment(self.d.project)
        self.previous = previous

        def mark_live() -> None:
            holds.point("switch-routed", self.out.line)  # Caddy routes to it; the store does not say live yet
            self.d = self._set(status=DeploymentStatus.LIVE)

        if self.router.switch(self.d, mark_live=mark_live):
            self.out.line("routes updated")
        if previous:
            stepped_down = DeploymentStatus.ROLLED_BACK if self.d.source == "rollback" else DeploymentStatus.REPLACED
            self.store.update_deployment(self.d.project, previous.number, status=stepped_down)

    def clean_up(self) -> None:
        """Services dropped from disco.toml go, and images and static sites beyond the kept ones."""
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
        """Keep the live deployment's images and those of the newest others that once ran, up to
        keep_images deployments in all; and the static sites of this one and the one before."""
        ran = [x for x in self.store.list_deployments(self.d.project, limit=1000) if x.status in WENT_LIVE]
        kept_deployments = [*ran[: self.settings.keep_images], self.d]
        kept = {tag for x in kept_deployments for tag in (x.image, *x.image_tags.values())}  # as the records hold them
        pruned = [tag for tags in self.engine.project_images(self.d.project).values() for tag in tags
                  if tag not in kept]
        for tag in pruned:
            self.engine.remove_image(tag)
        if pruned and (pushed_to := registry.pushed_to(self.settings, self.store)) is not None:
            registry.forget(self.engine, pushed_to, pruned, sorted(kept - {""}), self.out.line)
        if pruned and self.registry is not None:  # several nodes: theirs too
            registry.prune_other_nodes(self.settings, self.engine, self.registry, self.out.line)
        self.engine.remove_untagged_images(self.d.project)
        # The site that served until now stays until the next deploy (a request that began on
        # it ends there); a rollback copies its site again from the image it reuses.
        sites = {x.number for x in (self.d, self.previous) if x is not None and x.static_site}
        staticsites.prune(self.settings.run_dir, self.d.project, sites)

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
        if self.d.static_site:  # a switch that failed past its link: the link names what is live again
            self.router.point_static_site(self.d.project)
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
        for tag in self._images.made:
            try:
                engine.remove_image(tag)
            except DockerError as err:  # the next deploy's cleanup removes it
                self.out.line(f"warning: could not remove the image {tag}: {err}")

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
            for note in self._app_config.notes:  # like "disco.json ignored", said once per deployment
                self.out.line(note)
        return self._app_config

    def _env(self, service: str) -> dict[str, str]:
        d = self.d
        return {**self.store.env(d.project), "DISCO_PROJECT": d.project, "DISCO_SERVICE": service,
                "DISCO_DEPLOYMENT": str(d.number), "DISCO_COMMIT": d.commit_sha}

    @property
    def image(self) -> str:
        """The default image's tag ("" when the app builds none: a static site from the repo)."""
        return self.images.get(DEFAULT_IMAGE, "")

    def _image(self, name: str) -> str:
        return self.images[name]

    def _command(self, command: str | None, shell: bool, image: str) -> list[str] | None:
        """A Procfile line runs in the image's shell, as Heroku runs it; disco.toml's is split into words."""
        if command is None:
            return None
        return [*self.engine.image_shell(image), command] if shell else shlex.split(command)

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
