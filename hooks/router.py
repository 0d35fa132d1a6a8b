"""The proxy: start Caddy, compute every project's route from the store, load them whole.

Routes are computed from the store and loaded whole, so two changes at once (deploys of two
projects, a domain added) must not interleave: the later load would drop the other. One lock
orders them; a deploy's switch holds it until the store says the new version is live.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from hooks.engine import DeployEngine
from runtime.caddy import (
    ACME_ROOT_NAME,
    ADMIN_SOCKET_NAME,
    CONTAINER_RUN_DIR,
    Acme,
    CaddyError,
    Route,
    build_config,
)
from runtime import staticsites
from runtime.docker_engine import DockerError
from runtime.settings import Settings
from runtime.store import Deployment, Store


class Caddy(Protocol):
    """The part of Caddy's admin API (runtime/caddy.CaddyAdmin) the router uses."""

    def load(self, config: dict) -> bool: ...  # Caddy's JSON config
    def wait_until_up(self, timeout: float) -> None: ...


class Router:
    def __init__(self, settings: Settings, store: Store, engine: DeployEngine, caddy: Caddy) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.caddy = caddy
        self.proxy_ready = threading.Event()  # set once start_proxy is done, however it went
        self.proxy_error = ""  # why the proxy is not running, if it is not
        self._lock = threading.Lock()

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
            with self._lock:  # routes changed while Caddy started are in this load
                self._point_static_sites()
                self._load_routes()
                self.proxy_error = ""
                self.proxy_ready.set()
        except (DockerError, CaddyError) as err:
            self.proxy_error = f"the Caddy proxy is not running: {err}"
        finally:
            self.proxy_ready.set()

    @property
    def is_up(self) -> bool:
        return self.proxy_ready.is_set() and not self.proxy_error

    @property
    def api_host(self) -> str:
        """The server's own domain (--host), if it is one: Caddy serves the API there."""
        host = self.settings.host
        looks_like_domain = "." in host and not host.replace(".", "").isdigit()
        return host if looks_like_domain else ""

    def routes(self, switching: Deployment | None = None) -> list[Route]:
        """A route per project whose serving deployment has a web service.

        `switching` is a deployment about to go live: it serves its project in the routes.
        """
        routes = []
        for project in self.store.list_projects():
            name = project["name"]
            serving = switching if switching and switching.project == name else self.store.live_deployment(name)
            if serving is None or not (serving.web_port or serving.static_site):
                continue
            hosts = [d["domain"] for d in self.store.domains(name)]
            if self.settings.apps_domain:
                hosts.append(f"{name}.{self.settings.apps_domain}")
            if serving.static_site:
                routes.append(Route(tuple(hosts), "", 0, static_root=staticsites.live_path(CONTAINER_RUN_DIR, name)))
            else:
                routes.append(Route(tuple(hosts), self._upstream(serving), serving.web_port))
        return routes

    def point_static_site(self, project: str) -> None:
        """The project's `live` link names what the store says is live (after a switch that
        failed past its link)."""
        with self._lock:
            self._point_static_site(project)

    def _point_static_sites(self) -> None:
        """Each static site's `live` link names what the store says is live: a daemon that died
        between a switch's link and its record left them apart."""
        for project in self.store.list_projects():
            self._point_static_site(project["name"])

    def _point_static_site(self, project: str) -> None:
        live, run_dir = self.store.live_deployment(project), self.settings.run_dir
        if live is not None and live.static_site and staticsites.live_number(run_dir, project) != live.number:
            staticsites.point_live(run_dir, project, live.number)

    def _upstream(self, serving: Deployment) -> str:
        """The web service a deployment routes to; deployments made before names were
        collision-free (runtime/names.py) kept the old name until a deploy replaces them."""
        return serving.web_service or self.engine.legacy_service_name(serving.project, "web")

    def hosts_of(self, project: str) -> list[str]:
        """The host names routed to the project's web service (or static site) now."""
        live = self.store.live_deployment(project)
        if live is None:
            return []
        if live.static_site:
            root = staticsites.live_path(CONTAINER_RUN_DIR, project)
            return sorted(h for r in self.routes() if r.static_root == root for h in r.hosts)
        upstream = self._upstream(live)
        return sorted(h for r in self.routes() if r.upstream == upstream and not r.static_root for h in r.hosts)

    def apply_routes_if_up(self) -> None:
        """After a route change outside a deploy (domains, a removed project).

        A proxy still starting loads the routes when it is up, so nothing is lost by waiting.
        """
        with self._lock:
            if self.is_up:
                self._load_routes()

    def switch(self, deployment: Deployment, mark_live: Callable[[], object]) -> bool:
        """Route to `deployment` and record it live as one step; True if Caddy's routes changed.

        Holding the lock until the store says live means no other route change in between
        loads routes computed without it.
        """
        self.proxy_ready.wait(timeout=180)  # not under the lock: start_proxy takes it to finish
        if self.proxy_error:  # it failed before (Docker was away, say): once more before giving up
            self.start_proxy()
        with self._lock:
            if self.proxy_error:
                raise CaddyError(self.proxy_error)
            if deployment.static_site:  # the switch itself: Caddy's route names this link
                staticsites.point_live(self.settings.run_dir, deployment.project, deployment.number)
            changed = self._load_routes(switching=deployment)
            mark_live()
            return changed

    def _load_routes(self, switching: Deployment | None = None) -> bool:
        return self.caddy.load(self._write_config(switching))

    def _acme(self) -> Acme:
        """The ACME settings as Caddy reads them: a CA root to trust is copied into run/, which
        the Caddy container mounts."""
        settings, root = self.settings, ""
        if settings.acme_ca_root:
            copy = settings.run_dir / ACME_ROOT_NAME
            try:
                pem = Path(settings.acme_ca_root).read_bytes()
                if not copy.exists() or copy.read_bytes() != pem:
                    copy.write_bytes(pem)
            except FileNotFoundError:  # gone since the start: the copy Caddy has keeps working
                if not copy.exists():
                    raise CaddyError(f"the ACME root {settings.acme_ca_root} is gone") from None
            root = f"{CONTAINER_RUN_DIR}/{ACME_ROOT_NAME}"
        return Acme(ca=settings.acme_ca, email=settings.acme_email, ca_root=root)

    def _write_config(self, switching: Deployment | None = None) -> dict:
        config = build_config(self.routes(switching), tls=self.settings.tls, api_host=self.api_host,
                              acme=self._acme())
        (self.settings.run_dir / "caddy.json").write_text(json.dumps(config, indent=2))
        return config
