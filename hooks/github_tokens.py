"""Installation tokens of the server's GitHub App, each limited to one repository and to
reading its contents, kept in memory (never in the store, a log or a command line) until five
minutes before they expire."""

from __future__ import annotations

import threading
import time

from runtime.github_api import GitHubApi, GitHubError, InstallationToken
from runtime.settings import Settings
from runtime.store import Store

RENEW_BEFORE = 300  # seconds before its expiry a token is replaced


class InstallationTokens:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store
        self._cache: dict[tuple[int, str | None], InstallationToken] = {}
        self._lock = threading.Lock()

    def token_for(self, installation_id: int, repo: str | None) -> str:
        """A token of that installation for `repo` (OWNER/NAME), or for listing its repos (None)."""
        key = (installation_id, repo.lower() if repo else None)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached.expires_at - RENEW_BEFORE > time.time():
            return cached.token
        app = self.store.github_app()
        if app is None:
            raise GitHubError("this server has no GitHub App (disco github:app:create makes one)")
        fresh = GitHubApi(self.settings.github_api_url).installation_token(app["app_id"], app["pem"],
                                                                          installation_id, repo)
        with self._lock:
            self._cache[key] = fresh
        return fresh.token

    def has(self, installation_id: int, repo: str | None) -> bool:
        """Whether a token that is still good here is kept for that repo (GitHub may disagree)."""
        with self._lock:
            cached = self._cache.get((installation_id, repo.lower() if repo else None))
        return cached is not None and cached.expires_at - RENEW_BEFORE > time.time()

    def forget(self, installation_id: int | None = None) -> None:
        """Drop cached tokens (of one installation, or all): the next ask gets a new one."""
        with self._lock:
            for key in [k for k in self._cache if installation_id is None or k[0] == installation_id]:
                del self._cache[key]
