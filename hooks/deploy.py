"""Deploying: build, start beside the old version, wait for health, route, clean up.

Every deployment goes through the project's queue (hooks/queue.py), whether a push, a
rollback, or an env change asked for it. A failure before the switch undoes what this
deployment started, and the old version keeps serving: swarm only stops an old task once
its replacement is healthy, and rolls back on its own when one never is.
"""

from __future__ import annotations

import json
import logging
import shlex
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hooks.errors import Refused
from hooks.output import DeployOutput, Listener
from hooks.queue import DeployQueue, Ticket
from runtime import gitrepo
from runtime.appconfig import DEFAULT_PORT, AppConfig, AppConfigError, ServiceConfig, parse_app_config
from runtime.caddy import (ADMIN_SOCKET_NAME, CONTAINER_RUN_DIR, UPSTREAM_REFRESH_SECONDS, CaddyAdmin, CaddyError,
                           Route, build_config)
from runtime.docker_engine import DockerError, Engine, ServiceSpec
from runtime.settings import Settings
from runtime.store import ACTIVE_STATUSES, Deployment, Store, now


log = logging.getLogger("disco.deploy")


class DeployFailed(Refused):
    """Ends a deployment, or refuses to start one; the message is the reason shown and recorded."""


@dataclass
class Platform:
    """The outside systems a deployment drives, shared by every deployment of the daemon."""

    settings: Settings
    store: Store
    engine: Engine
    caddy: CaddyAdmin
    queue: DeployQueue = field(init=False)
    proxy_ready: threading.Event = field(default_factory=threading.Event)
    proxy_error: str = ""
    # Routes are computed from the store and loaded whole, so two changes at once (deploys of
    # two projects, a domain added) must not interleave: the later load would drop the other.
    _routes_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.queue = DeployQueue(self._run, self._supersede)

    # -- the proxy -------------------------------------------------------------------------

    def start_proxy(self) -> None:
        """Make sure the network and Caddy run and carry the current routes (idempotent)."""
        try:
            self.engine.ensure_network()
            # Caddy starts from this file the first time; later it resumes its autosaved config.
            self._write_config()
            command = ["caddy", "run", "--resume", "--config", f"{CONTAINER_RUN_DIR}/caddy.json"]
            if self.engine.ensure_proxy(self.settings.caddy_image, self.settings.run_dir,
                                        self.settings.http_port, self.settings.https_port, command):
                (self.settings.run_dir / ADMIN_SOCKET_NAME).unlink(missing_ok=True)
            self.caddy.wait_until_up(timeout=120)
            with self._routes_lock:  # routes changed while Caddy started are in this load
                self._load_routes()
                self.proxy_error = ""
                self.proxy_ready.set()
        except (DockerError, CaddyError) as err:
            self.proxy_error = f"the Caddy proxy is not running: {err}"
        finally:
            self.proxy_ready.set()

    def repo_path(self, project: str) -> Path:
        return gitrepo.repo_path(self.settings.repos_dir, project)

    # -- asking for deployments ----------------------------------------------------------

    def enqueue(
        self, project: str, commit_sha: str, branch: str, user: str, source: str,
        image: str = "", rollback_of: int | None = None, listener: Listener | None = None,
        delivery: str = "", prepare: Callable[[DeployOutput], None] | None = None,
    ) -> Ticket:
        """Record a deployment and queue it; `listener` gets every output line from the first."""
        deployment = self.store.create_deployment(
            project, commit_sha, branch, user, source, self.settings.deployments_dir,
            image=image, rollback_of=rollback_of, delivery=delivery,
        )
        secrets = list(self.store.env(project).values())
        ticket = Ticket(deployment, DeployOutput(Path(deployment.log_path), secrets), prepare=prepare)
        if listener is not None:
            ticket.output.subscribe(listener)
        ticket.output.line(f"deployment #{deployment.number} of {project}: {commit_sha[:7]} ({source} by {user})")
        self.queue.submit(ticket)
        return ticket

    def cancel(self, project: str, number: int, user: str) -> None:
        deployment = self.store.get_deployment(project, number)
        if deployment is None:
            raise DeployFailed(f"{project} has no deployment #{number}", "not_found")
        if deployment.status not in ACTIVE_STATUSES:
            raise DeployFailed(f"deployment #{number} is already {deployment.status}", "conflict")

        def record(ticket: Ticket) -> Deployment:
            ticket.output.line(f"deployment #{number} cancelled by {user} before it started")
            return self.store.update_deployment(project, number, status="cancelled",
                                                reason=f"cancelled by {user}", finished_at=now())

        if not self.queue.cancel(project, number, user, record):
            raise DeployFailed(f"deployment #{number} is not queued or running in this daemon", "conflict")
        self.store.audit(user, "deployments:cancel", project, f"#{number}")

    def _supersede(self, old: Ticket, new: Ticket) -> Deployment:
        reason = f"superseded by deployment #{new.deployment.number}"
        old.output.line(f"deployment #{old.deployment.number} will not run: {reason}")
        return self.store.update_deployment(old.project, old.deployment.number, status="superseded",
                                            reason=reason, finished_at=now())

    # -- running one -----------------------------------------------------------------------

    def _run(self, ticket: Ticket) -> Deployment:
        try:
            return DeploymentRun(self, ticket).run()
        except Exception as err:  # a bug must not leave the record "building" forever
            log.exception("deployment #%d of %s crashed", ticket.deployment.number, ticket.project)
            ticket.output.line(f"deploy failed: internal error: {err}")
            return self.store.update_deployment(ticket.project, ticket.deployment.number, status="failed",
                                                reason=f"internal error: {err}", finished_at=now())

    # -- routes ----------------------------------------------------------------------------

    def routes(self, switching: Deployment | None = None) -> list[Route]:
        """A route per project whose serving deployment has a web service.

        `switching` is a deployment about to go live: it serves its project in the routes.
        """
        routes = []
        for project in self.store.list_projects():
            name = project["name"]
            serving = switching if switching and switching.project == name else self.store.live_deployment(name)
            if serving is None or not serving.web_port:
                continue
            hosts = [d["domain"] for d in self.store.domains(name)]
            if self.settings.apps_domain:
                hosts.append(f"{name}.{self.settings.apps_domain}")
            routes.append(Route(tuple(hosts), self.engine.service_name(name, "web"), serving.web_port))
        return routes

    def docker_state(self) -> dict:
        """Whether Docker answers, its version and the swarm's state, for the server's meta."""
        try:
            info = self.engine.info()
        except DockerError as err:
            return {"reachable": False, "error": str(err)}
        return {"reachable": True, "version": info.get("ServerVersion", ""),
                "swarm": (info.get("Swarm") or {}).get("LocalNodeState", "")}

    def engine_replicas(self, project: str) -> dict[str, int]:
        """Replicas per service as swarm runs them now."""
        counts = {}
        for service in self.engine.project_services(project):  # selected by their project label
            labels = service.attrs["Spec"].get("Labels") or {}
            counts[labels.get("disco.service", service.name)] = service.attrs["Spec"]["Mode"]["Replicated"]["Replicas"]
        return counts

    def apply_routes_if_up(self) -> None:
        """After a route change outside a deploy (domains, a removed project).

        A proxy still starting loads the routes when it is up, so nothing is lost by waiting.
        """
        with self._routes_lock:
            if self.proxy_ready.is_set() and not self.proxy_error:
                self._load_routes()

    def switch(self, deployment: Deployment, mark_live: Callable[[], object]) -> bool:
        """Route to `deployment` and record it live as one step; True if Caddy's routes changed.

        Holding the lock until the store says live means no other route change in between
        loads routes computed without it.
        """
        self.proxy_ready.wait(timeout=180)  # not under the lock: start_proxy takes it to finish
        with self._routes_lock:
            if self.proxy_error:
                raise CaddyError(self.proxy_error)
            changed = self._load_routes(switching=deployment)
            mark_live()
            return changed

    def _load_routes(self, switching: Deployment | None = None) -> bool:
        return self.caddy.load(self._write_config(switching))

    def _write_config(self, switching: Deployment | None = None) -> dict:
        config = build_config(self.routes(switching), tls=self.settings.tls, api_host=self.api_host)
        (self.settings.run_dir / "caddy.json").write_text(json.dumps(config, indent=2))
        return config

    @property
    def api_host(self) -> str:
        """The server's own domain (--host), if it is one: Caddy serves the API there."""
        host = self.settings.host
        looks_like_domain = "." in host and not host.replace(".", "").isdigit()
        return host if looks_like_domain else ""


class DeploymentRun:
    """One deployment, step by step; each step's duration lands in the record's timings."""

    def __init__(self, platform: Platform, ticket: Ticket) -> None:
        self.p = platform
        self.ticket = ticket
        self.d = ticket.deployment
        self.out = ticket.output
        self.timings: dict[str, float] = {}
        self.applied: list[tuple[ServiceSpec, bool]] = []  # (spec, created) in the order started
        self.built_image = False
        self._app_config: AppConfig | None = None

    def run(self) -> Deployment:
        store, d = self.p.store, self.d
        try:
            self._stop_if_cancelled()
            self._set(status="building")
            if self.ticket.prepare is not None:
                with self._step("fetch"):
                    self.ticket.prepare(self.out)
            with self._step("build"):
                image = self._image()
            specs = self._specs(self._config(), image)
            web = next((s for s in specs if s.labels["disco.service"] == "web" and s.port), None)
            self._stop_if_cancelled()
            self.d = self._set(status="starting", image=image, web_port=web.port if web else 0)
            with self._step("start"):
                for spec in specs:
                    self._start(spec)
            with self._step("health"):
                for spec, created in self.applied:
                    self._wait_healthy(spec, created)
                if any(not created for _, created in self.applied):
                    # Old tasks may still answer for a moment; once Caddy has looked the names up
                    # again, "live" means only the new version gets requests.
                    time.sleep(2 * UPSTREAM_REFRESH_SECONDS + 0.1)
            self._stop_if_cancelled()  # the last moment: after this the new version takes over
            previous = store.live_deployment(d.project)
            with self._step("switch"):
                if self.p.switch(self.d, mark_live=lambda: self._set(status="live")):
                    self.out.line("routes updated")
            if previous:
                store.update_deployment(d.project, previous.number,
                                        status="rolled back" if d.source == "rollback" else "replaced")
        except Exception as err:  # whatever broke, undo what this deployment started
            if self.ticket.cancelled_by:
                return self._fail(f"cancelled by {self.ticket.cancelled_by}", "cancelled")
            known = (DeployFailed, DockerError, CaddyError, gitrepo.GitRepoError)
            if not isinstance(err, known):
                log.exception("deployment #%d of %s failed unexpectedly", d.number, d.project)
            return self._fail(str(err) if isinstance(err, known) else f"{type(err).__name__}: {err}")
        with self._step("cleanup"):
            try:
                self._cleanup(specs)
            except DockerError as err:  # the new version is live; leftovers go next time
                self.out.line(f"warning: cleanup incomplete: {err}")
        self.out.line(f"deployment #{d.number} is live" + self._where())
        return self._set(finished_at=now())

    # -- steps -----------------------------------------------------------------------------

    def _image(self) -> str:
        engine, d = self.p.engine, self.d
        tag = engine.image_tag(d.project, d.number)
        if d.image:  # a rollback or env change: reuse the image, no rebuild
            engine.retag(d.image, tag)
            self.out.line(f"reusing image of {d.image} (no rebuild)")
            return tag
        repo = self.p.repo_path(d.project)
        config = self._config()
        for path in gitrepo.submodules(repo, d.commit_sha):
            self.out.line(f"warning: submodule {path} is skipped: its files are not part of the build context")
        with tempfile.TemporaryDirectory(prefix=f"disco-build-{d.project}-") as tmp:
            tree = Path(tmp)
            gitrepo.export_tree(repo, d.commit_sha, tree)
            dockerfile = tree / config.dockerfile_path
            context = tree / config.build.context
            for path, what in ((dockerfile, "build.dockerfile"), (context, "build.context")):
                # A symlink in the repo must not lead the build to the server's own files.
                if not path.resolve().is_relative_to(tree.resolve()):
                    raise DeployFailed(f"{what} leads outside the repo (through a symlink)")
            if not dockerfile.is_file():
                raise DeployFailed(f"no Dockerfile at {config.dockerfile_path} in {d.commit_sha[:7]}")
            self.out.line(f"building {config.dockerfile_path} of {d.commit_sha[:7]}")
            labels = engine.labels(project=d.project, deployment=str(d.number), commit=d.commit_sha)
            engine.build(context, dockerfile, tag, config.build.args, labels, self.out.line,
                         stop=lambda: bool(self.ticket.cancelled_by))
        self.built_image = True
        return tag

    def _config(self) -> AppConfig:
        if self._app_config is None:
            text = gitrepo.read_file(self.p.repo_path(self.d.project), self.d.commit_sha, "disco.toml")
            try:
                self._app_config = parse_app_config(text.decode() if text is not None else None)
            except (AppConfigError, UnicodeDecodeError) as err:
                raise DeployFailed(str(err)) from None
        return self._app_config

    def _specs(self, config: AppConfig, image: str) -> list[ServiceSpec]:
        engine, d = self.p.engine, self.d
        env = self.p.store.env(d.project)
        scale = self.p.store.scale(d.project)
        exposed = engine.exposed_ports(image)
        specs = []
        for service in config.services.values():
            port = _port_of(service, exposed)
            service_env = {
                **env,
                "DISCO_PROJECT": d.project,
                "DISCO_SERVICE": service.name,
                "DISCO_DEPLOYMENT": str(d.number),
                "DISCO_COMMIT": d.commit_sha,
            }
            if port is not None:
                service_env["PORT"] = str(port)
            specs.append(ServiceSpec(
                name=engine.service_name(d.project, service.name),
                image=image,
                network=engine.network_name,
                labels=engine.labels(project=d.project, service=service.name, deployment=str(d.number)),
                env=service_env,
                replicas=scale.get(service.name, service.replicas),
                args=shlex.split(service.command) if service.command else None,
                port=port,
                health_path=service.health,
                health_timeout=service.health_timeout,
                mounts=[(engine.volume_name(d.project, v.name), v.mount) for v in service.volumes],
            ))
        return specs

    def _start(self, spec: ServiceSpec) -> None:
        for volume, _ in spec.mounts:
            self.p.engine.ensure_volume(volume, self.d.project)
        self.out.line(f"starting {spec.name} ({spec.replicas} replica(s))")
        created = self.p.engine.apply(spec)
        self.applied.append((spec, created))

    def _wait_healthy(self, spec: ServiceSpec, created: bool) -> None:
        check = (f"GET {spec.health_path}" if spec.health_path else "TCP connect") if spec.port else "no crash"
        self.out.line(f"waiting for {spec.name} to be healthy ({check}, up to {spec.health_timeout} s)")
        # Swarm's own clock (start period + retries) fails the task first; this is the backstop.
        self.p.engine.wait_rollout(spec, created, spec.health_timeout + 30, self.out.line,
                                   stop=lambda: bool(self.ticket.cancelled_by))

    def _cleanup(self, specs: list[ServiceSpec]) -> None:
        engine, d = self.p.engine, self.d
        wanted = {s.name for s in specs}
        for service in engine.project_services(d.project):
            if service.name not in wanted:
                self.out.line(f"removing service {service.name}: no longer in disco.toml")
                engine.remove_service(service.name)
        self._prune_images()

    def _prune_images(self) -> None:
        """Keep the live image and the newest others that once ran, up to keep_images in all."""
        engine, d, store = self.p.engine, self.d, self.p.store
        ran = [x.number for x in store.list_deployments(d.project, limit=1000)
               if x.status in ("live", "replaced", "rolled back")]
        kept = set(ran[: self.p.settings.keep_images])
        for number, tag in engine.project_images(d.project).items():
            if number not in kept:
                engine.remove_image(tag)
        engine.remove_untagged_images(d.project)

    # -- failure ---------------------------------------------------------------------------

    def _stop_if_cancelled(self) -> None:
        if self.ticket.cancelled_by:
            raise DeployFailed("cancelled")

    def _fail(self, reason: str, status: str = "failed") -> Deployment:
        self.out.line(f"deploy {status}: {reason}")
        self._undo()
        self.out.line("the previous version keeps serving" if self.p.store.live_deployment(self.d.project)
                      else "nothing was left running")
        return self._set(status=status, reason=reason, finished_at=now())

    def _undo(self) -> None:
        engine = self.p.engine
        for spec, created in reversed(self.applied):
            try:
                current = engine.service_deployment(spec.name)
                if created:
                    engine.remove_service(spec.name)
                elif current and current[0] == str(self.d.number) and not current[1].startswith("rollback"):
                    engine.restore_previous(spec.name)  # swarm undoes the failed ones itself
            except DockerError as err:
                self.out.line(f"warning: could not undo {spec.name}: {err}")
        if self.built_image or self.d.image:
            engine.remove_image(engine.image_tag(self.d.project, self.d.number))

    # -- bookkeeping -----------------------------------------------------------------------

    @contextmanager
    def _step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(time.monotonic() - started, 3)
            self.p.store.update_deployment(self.d.project, self.d.number, timings=json.dumps(self.timings))

    def _set(self, **changes: object) -> Deployment:
        return self.p.store.update_deployment(self.d.project, self.d.number, **changes)

    def _where(self) -> str:
        hosts = [h for r in self.p.routes() if r.upstream == self.p.engine.service_name(self.d.project, "web")
                 for h in r.hosts]
        return f" at {', '.join(sorted(hosts))}" if hosts else ""


def _port_of(service: ServiceConfig, exposed: list[int]) -> int | None:
    if service.port is not None:
        return service.port
    if not service.is_web:
        return None  # a worker without a port gets no health check and no route
    return exposed[0] if len(exposed) == 1 else DEFAULT_PORT


def recover(platform: Platform) -> list[Deployment]:
    """After a restart: settle every deployment the last daemon left unfinished."""
    settled = []
    for d in platform.store.deployments_with_status(ACTIVE_STATUSES):
        try:
            settled.append(_settle(platform, d))
        except DockerError as err:
            settled.append(platform.store.update_deployment(
                d.project, d.number, status="failed", finished_at=now(),
                reason=f"interrupted by a daemon restart, and Docker could not be checked: {err}"))
    return settled


def _settle(platform: Platform, d: Deployment) -> Deployment:
    engine, store = platform.engine, platform.store
    services = engine.project_services(d.project)
    ours = [s for s in services if (s.attrs["Spec"].get("Labels") or {}).get("disco.deployment") == str(d.number)]
    if d.status == "starting" and ours and all(
        (s.attrs.get("UpdateStatus") or {}).get("State", "completed") == "completed" for s in ours
    ) and len(ours) == len(services):
        previous = store.live_deployment(d.project)
        if previous:
            store.update_deployment(d.project, previous.number, status="replaced")
        return store.update_deployment(d.project, d.number, status="live", finished_at=now(),
                                       reason="finished by swarm while the daemon restarted")
    for service in ours:
        if "PreviousSpec" in service.attrs:
            engine.restore_previous(service.name)
        else:
            engine.remove_service(service.name)
    engine.remove_image(engine.image_tag(d.project, d.number))
    return store.update_deployment(d.project, d.number, status="failed", finished_at=now(),
                                   reason="interrupted by a daemon restart; push again to retry")
