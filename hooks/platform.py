"""The parts every front door gets: settings, the store, the Docker engine, the router (Caddy),
the deployer (the deploy queues), the scheduler (scheduled services) and the GitHub App's
installation tokens. `Platform.create` builds them the one way they fit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hooks.deployer import Deployer
from hooks.github_tokens import InstallationTokens
from hooks.router import Caddy, Router
from hooks.scheduler import Clock, Scheduler, utc_now
from runtime import gitrepo
from runtime.docker_engine import Engine
from runtime.settings import Settings
from runtime.store import Store


@dataclass(frozen=True)
class Platform:
    settings: Settings
    store: Store
    engine: Engine
    router: Router
    deployer: Deployer
    scheduler: Scheduler
    github_tokens: InstallationTokens

    @classmethod
    def create(cls, settings: Settings, store: Store, engine: Engine, caddy: Caddy,
               clock: Clock = utc_now, tick_seconds: float = 1.0) -> Platform:
        router = Router(settings, store, engine, caddy)
        return cls(settings, store, engine, router, Deployer(settings, store, engine, router),
                   Scheduler(settings, store, engine, clock, tick_seconds), InstallationTokens(settings, store))

    def repo_path(self, project: str) -> Path:
        return gitrepo.repo_path(self.settings.repos_dir, project)
