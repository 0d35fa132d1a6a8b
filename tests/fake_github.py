"""A fake GitHub for the GitHub App tests: the web side of the app manifest flow, the REST API of
GitHub Apps (GitHub Enterprise style, under /api/v3) and smart-HTTP git for private repositories,
all on 127.0.0.1 in a background thread, plus the webhook deliveries GitHub would make.

Strict like the real one: App JWTs are verified (RS256 against the App's key, GitHub's claim
rules), installation tokens are scoped to repositories and permissions and expire, a manifest
code works once and for one hour, git access needs a token that may read that repository, and
webhooks are signed with the App's secret. Shapes follow https://docs.github.com/en/rest/apps and
https://docs.github.com/en/apps/sharing-github-apps/registering-a-github-app-from-a-manifest.

Secrets (tokens, keys, client and webhook secrets) are never printed or logged: they are left out
of the reprs below and the server logs nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import string
import subprocess
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ZERO_SHA = "0" * 40
CODE_LIFETIME = 3600.0  # a manifest code is valid for one hour
NAME_MAX = 34  # GitHub's limit on an App's name
JWT_MAX_LIFETIME = 600  # exp - iat, and exp - now
JWT_IAT_SKEW = 60  # how far in the future iat may be
DOCS = "https://docs.github.com/rest"
LEVELS = {"read": 1, "write": 2, "admin": 3}
# Events a manifest may subscribe to only with a permission (GitHub refuses the others).
EVENT_PERMISSIONS = {
    "push": "contents", "create": "contents", "delete": "contents", "release": "contents",
    "pull_request": "pull_requests", "pull_request_review": "pull_requests",
    "pull_request_review_comment": "pull_requests", "issues": "issues",
    "check_run": "checks", "check_suite": "checks", "deployment": "deployments",
    "deployment_status": "deployments", "status": "statuses", "workflow_run": "actions",
    "workflow_job": "actions",
}
BAD_JWT = "A JSON web token could not be decoded"
BAD_IAT = "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"
BAD_EXP = ("'Expiration time' claim ('exp') must be a numeric value representing the future time at which "
           "the assertion expires")
FAR_EXP = "'Expiration time' claim ('exp') is too far in the future"
BAD_REPOS = "There is at least one repository that does not exist or is not accessible to the parent installation."
BAD_PERMS = "The permissions requested are not granted to this installation."
SUSPENDED = "This installation has been suspended"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _node_id(kind: str, number: int) -> str:
    return base64.b64encode(f"0{len(kind)}:{kind}{number}".encode()).decode().rstrip("=")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"git {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


# -- the state ------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class FakeApp:
    id: int
    slug: str
    name: str
    owner: str  # the account's login
    owner_type: str  # "User" | "Organization"
    owner_id: int
    node_id: str
    description: str
    external_url: str
    public: bool
    permissions: dict[str, str]
    events: list[str]
    hook_url: str | None
    hook_active: bool
    hook_id: int
    created_at: float
    client_id: str
    client_secret: str = field(repr=False)
    webhook_secret: str = field(repr=False)
    pem: str = field(repr=False)  # the private key, PKCS#1 PEM as GitHub hands it out
    public_key: str = field(repr=False)  # its public half, SubjectPublicKeyInfo PEM
    manifest: dict[str, Any] = field(repr=False)


@dataclass(kw_only=True)
class FakeInstallation:
    id: int
    app_id: int
    account: str
    account_id: int
    account_type: str
    repos: list[str]  # full names
    permissions: dict[str, str]
    events: list[str]
    created_at: float
    suspended_at: float | None = None


@dataclass(kw_only=True)
class FakeRepo:
    id: int
    full_name: str
    path: Path  # the bare mirror
    default_branch: str

    @property
    def owner(self) -> str:
        return self.full_name.split("/")[0]

    @property
    def name(self) -> str:
        return self.full_name.split("/")[1]


@dataclass(kw_only=True)
class IssuedToken:
    token: str = field(repr=False)
    installation_id: int
    repositories: list[str] | None  # names (without owner, as requested); None = all of the installation's
    permissions: dict[str, str]
    issued_at: float
    expires_at: float
    used_for: list[str] = field(default_factory=list)  # names of the repositories git read with it
    revoked: bool = False


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    raw_query: str = ""

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(data, indent=2).encode(),
                     {"Content-Type": "application/json; charset=utf-8", **(headers or {})})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> _Response:
    return _json(status, {"message": message, "documentation_url": DOCS, "status": str(status)}, headers)


# -- the fake -------------------------------------------------------------------------------------

class FakeGitHub:
    """GitHub's web side, REST API and smart-HTTP git, on 127.0.0.1 in a background thread."""

    def __init__(self, root: Path, per_page_max: int = 100, token_lifetime: float = 3600.0) -> None:
        self.root = Path(root)
        self.git_root = self.root / "git"
        self.git_root.mkdir(parents=True, exist_ok=True)
        self.per_page_max = per_page_max
        self.token_lifetime = token_lifetime
        self.clock: Callable[[], float] = time.time  # replace it to move GitHub's time
        self.user = "octocat"  # the person signed in on the web side (owns Apps made at /settings/apps/new)
        self.user_email = "octocat@users.noreply.github.com"
        self.organizations: set[str] = set()  # accounts of type Organization
        self.deliver_to: str | None = None
        self.apps: dict[int, FakeApp] = {}
        self.installations: dict[int, FakeInstallation] = {}
        self.repos: dict[str, FakeRepo] = {}
        self.issued_tokens: list[IssuedToken] = []
        self.deliveries: list[tuple[str, str, int]] = []
        self.requests: list[tuple[str, str]] = []
        self.errors: list[str] = []  # tracebacks of requests the fake itself failed (answered 500)
        self._codes: dict[str, tuple[int, float]] = {}  # manifest code -> (app id, made at)
        self._accounts: dict[str, int] = {}
        self._ids = {"app": 999, "installation": 41000000, "repo": 500000000, "account": 9000000,
                     "hook": 470000000}
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> FakeGitHub:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-github", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=10)
            self._server = self._thread = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake GitHub is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def api_url(self) -> str:
        return self.url + "/api/v3"

    def _next_id(self, kind: str) -> int:
        with self._lock:
            self._ids[kind] += 1
            return self._ids[kind]

    def _account_id(self, login: str) -> int:
        with self._lock:
            if login not in self._accounts:
                self._accounts[login] = self._next_id("account")
            return self._accounts[login]

    def _account(self, login: str) -> dict[str, Any]:
        kind = "Organization" if login in self.organizations else "User"
        account_id = self._account_id(login)
        return {"login": login, "id": account_id, "node_id": _node_id(kind, account_id),
                "avatar_url": f"{self.url}/avatars/u/{account_id}", "url": f"{self.api_url}/users/{login}",
                "html_url": f"{self.url}/{login}", "type": kind, "site_admin": False}

    # -- repositories

    def add_repo(self, full_name: str, work_tree: Path) -> None:
        """A private repository: a bare mirror of the branches and tags of that local work tree."""
        owner, _, name = full_name.partition("/")
        if not owner or not name or "/" in name:
            raise ValueError(f"not an owner/name: {full_name!r}")
        with self._lock:
            if full_name in self.repos:
                raise ValueError(f"{full_name} exists already")
        path = self.git_root / owner / f"{name}.git"
        path.parent.mkdir(parents=True, exist_ok=True)
        _git("clone", "-q", "--bare", "--no-local", str(work_tree), str(path))
        branch = _git("symbolic-ref", "--short", "HEAD", cwd=path).strip()
        with self._lock:
            self.repos[full_name] = FakeRepo(id=self._next_id("repo"), full_name=full_name, path=path,
                                             default_branch=branch)

    def update_repo(self, full_name: str, work_tree: Path) -> None:
        """Fetch the work tree's branches and tags into the mirror (gone branches go)."""
        repo = self._repo(full_name)
        _git("fetch", "-q", "--prune", "--no-auto-gc", str(work_tree), "+refs/heads/*:refs/heads/*",
             "+refs/tags/*:refs/tags/*", cwd=repo.path)

    def _repo(self, full_name: str) -> FakeRepo:
        with self._lock:
            if full_name not in self.repos:
                raise KeyError(f"no repository {full_name}; add_repo it first")
            return self.repos[full_name]

    def _repo_json(self, repo: FakeRepo) -> dict[str, Any]:
        return {
            "id": repo.id, "node_id": _node_id("Repository", repo.id), "name": repo.name,
            "full_name": repo.full_name, "private": True, "visibility": "private",
            "owner": self._account(repo.owner), "html_url": f"{self.url}/{repo.full_name}",
            "description": None, "fork": False, "url": f"{self.api_url}/repos/{repo.full_name}",
            "git_url": f"git://{urlsplit(self.url).netloc}/{repo.full_name}.git",
            "clone_url": f"{self.url}/{repo.full_name}.git", "default_branch": repo.default_branch,
            "archived": False, "disabled": False,
        }

    @staticmethod
    def _repo_short(repo: FakeRepo) -> dict[str, Any]:
        return {"id": repo.id, "node_id": _node_id("Repository", repo.id), "name": repo.name,
                "full_name": repo.full_name, "private": True}

    # -- the App

    def create_app(self, manifest: dict[str, Any], org: str | None = None) -> tuple[FakeApp, str]:
        """What clicking "Create GitHub App" on a manifest does: the App and its one-time code.

        Raises ValueError (the 422 of the web side) for a manifest GitHub would refuse.
        """
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with self._lock:
            problems = self._manifest_problems(manifest)
            if problems:
                raise ValueError("; ".join(problems))
            hook = manifest.get("hook_attributes")
            permissions = {"metadata": "read", **manifest.get("default_permissions", {})}
            if org:
                self.organizations.add(org)
            owner = org or self.user
            app_id = self._next_id("app")
            app = FakeApp(
                id=app_id, slug=slugify(manifest["name"]), name=manifest["name"], owner=owner,
                owner_type="Organization" if org else "User", owner_id=self._account_id(owner),
                node_id=_node_id("Integration", app_id), description=manifest.get("description") or "",
                external_url=manifest["url"], public=bool(manifest.get("public", False)),
                permissions=permissions, events=list(manifest.get("default_events", [])),
                hook_url=hook.get("url") if hook else None, hook_active=bool(hook and hook.get("active", True)),
                hook_id=self._next_id("hook"), created_at=self.clock(),
                client_id="Iv1." + secrets.token_hex(8), client_secret=secrets.token_hex(20),
                webhook_secret=secrets.token_hex(20),
                pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()).decode(),
                public_key=key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
                manifest=manifest)
            self.apps[app_id] = app
            code = secrets.token_hex(20)
            self._codes[code] = (app_id, self.clock())
            return app, code

    def _manifest_problems(self, manifest: object) -> list[str]:
        if not isinstance(manifest, dict):
            return ["manifest must be a JSON object"]
        problems = []
        name = manifest.get("name")
        if not isinstance(name, str) or not slugify(name):
            problems.append("Name can't be blank")
        elif len(name) > NAME_MAX:
            problems.append(f"Name is too long (maximum is {NAME_MAX} characters)")
        elif any(app.slug == slugify(name) for app in self.apps.values()):
            problems.append("Name is already in use")
        if not _http_url(manifest.get("url")):
            problems.append("Homepage URL (url) is required and must be an http(s) URL")
        if not _http_url(manifest.get("redirect_url")):
            problems.append("redirect_url is required and must be an http(s) URL")
        hook = manifest.get("hook_attributes")
        if hook is not None:
            if not isinstance(hook, dict):
                problems.append("hook_attributes must be an object")
            elif hook.get("active", True) and not _http_url(hook.get("url")):
                problems.append("Hook URL (hook_attributes.url) is required when the webhook is active")
        permissions = manifest.get("default_permissions", {})
        if not isinstance(permissions, dict) or any(level not in LEVELS for level in permissions.values()):
            problems.append("default_permissions must map permission names to read, write or admin")
            permissions = {}
        events = manifest.get("default_events", [])
        if not isinstance(events, list) or not all(isinstance(event, str) for event in events):
            problems.append("default_events must be a list of event names")
        else:
            unsupported = [e for e in events if e in EVENT_PERMISSIONS and EVENT_PERMISSIONS[e] not in permissions]
            if unsupported:
                problems.append(f"Default events unsupported by the permissions: {', '.join(unsupported)}")
        callbacks = manifest.get("callback_urls", [])
        if not isinstance(callbacks, list) or not all(map(_http_url, callbacks)):
            problems.append("callback_urls must be a list of http(s) URLs")
        return problems

    def _app_json(self, app: FakeApp) -> dict[str, Any]:
        with self._lock:
            count = sum(1 for inst in self.installations.values() if inst.app_id == app.id)
        return {
            "id": app.id, "slug": app.slug, "node_id": app.node_id, "client_id": app.client_id,
            "owner": self._account(app.owner), "name": app.name, "description": app.description,
            "external_url": app.external_url, "html_url": f"{self.url}/apps/{app.slug}",
            "created_at": iso(app.created_at), "updated_at": iso(app.created_at),
            "permissions": dict(app.permissions), "events": list(app.events), "installations_count": count,
        }

    # -- installations

    def install(self, app_id: int, account: str, repos: list[str]) -> int:
        """Install the App on `account` for those of its repositories (full names); delivers `installation` created."""
        with self._lock:
            app = self.apps[app_id]
            if not app.public and account != app.owner:
                raise ValueError(f"{app.slug} is private to {app.owner}; it cannot be installed on {account}")
            if any(i.app_id == app_id and i.account == account for i in self.installations.values()):
                raise ValueError(f"{app.slug} is installed on {account} already")
            names = self._own_repos(account, repos)
            inst = FakeInstallation(
                id=self._next_id("installation"), app_id=app_id, account=account,
                account_id=self._account_id(account),
                account_type="Organization" if account in self.organizations else "User", repos=names,
                permissions=dict(app.permissions), events=list(app.events), created_at=self.clock())
            self.installations[inst.id] = inst
            payload = {"action": "created", "installation": self._installation_json(inst),
                       "repositories": [self._repo_short(self.repos[n]) for n in names],
                       "requester": None, "sender": self._account(self.user)}
        self._notify(app_id, "installation", payload)
        return inst.id

    def _own_repos(self, account: str, repos: list[str]) -> list[str]:
        names = []
        for name in repos:
            full = name if "/" in name else f"{account}/{name}"
            self._repo(full)
            if full.split("/")[0] != account:
                raise ValueError(f"{full} is not a repository of {account}")
            if full not in names:
                names.append(full)
        return names

    def add_repos(self, installation_id: int, repos: list[str]) -> None:
        with self._lock:
            inst = self.installations[installation_id]
            added = [n for n in self._own_repos(inst.account, repos) if n not in inst.repos]
            inst.repos.extend(added)
            payload = self._repos_changed(inst, "added", added, [])
        self._notify(inst.app_id, "installation_repositories", payload)

    def remove_repos(self, installation_id: int, repos: list[str]) -> None:
        with self._lock:
            inst = self.installations[installation_id]
            removed = [n for n in self._own_repos(inst.account, repos) if n in inst.repos]
            inst.repos[:] = [n for n in inst.repos if n not in removed]
            payload = self._repos_changed(inst, "removed", [], removed)
        self._notify(inst.app_id, "installation_repositories", payload)

    def _repos_changed(self, inst: FakeInstallation, action: str, added: list[str],
                       removed: list[str]) -> dict[str, Any]:
        return {"action": action, "installation": self._installation_json(inst), "repository_selection": "selected",
                "repositories_added": [self._repo_short(self.repos[n]) for n in added],
                "repositories_removed": [self._repo_short(self.repos[n]) for n in removed],
                "requester": None, "sender": self._account(self.user)}

    def uninstall(self, installation_id: int) -> None:
        """Delivers `installation` deleted; the installation's tokens stop working."""
        with self._lock:
            inst = self.installations.pop(installation_id)
            payload = self._installation_event(inst, "deleted")
        self._notify(inst.app_id, "installation", payload)

    def suspend(self, installation_id: int) -> None:
        with self._lock:
            inst = self.installations[installation_id]
            inst.suspended_at = self.clock()
            payload = self._installation_event(inst, "suspend")
        self._notify(inst.app_id, "installation", payload)

    def unsuspend(self, installation_id: int) -> None:
        with self._lock:
            inst = self.installations[installation_id]
            inst.suspended_at = None
            payload = self._installation_event(inst, "unsuspend")
        self._notify(inst.app_id, "installation", payload)

    def _installation_event(self, inst: FakeInstallation, action: str) -> dict[str, Any]:
        return {"action": action, "installation": self._installation_json(inst),
                "repositories": [self._repo_short(self.repos[n]) for n in inst.repos],
                "requester": None, "sender": self._account(self.user)}

    def _installation_json(self, inst: FakeInstallation) -> dict[str, Any]:
        app = self.apps[inst.app_id]
        suspended = inst.suspended_at is not None
        return {
            "id": inst.id, "account": self._account(inst.account), "repository_selection": "selected",
            "access_tokens_url": f"{self.api_url}/app/installations/{inst.id}/access_tokens",
            "repositories_url": f"{self.api_url}/installation/repositories",
            "html_url": f"{self.url}/settings/installations/{inst.id}", "app_id": inst.app_id,
            "app_slug": app.slug, "target_id": inst.account_id, "target_type": inst.account_type,
            "permissions": dict(inst.permissions), "events": list(inst.events),
            "created_at": iso(inst.created_at), "updated_at": iso(inst.created_at), "single_file_name": None,
            "has_multiple_single_files": False, "single_file_paths": [],
            "suspended_at": iso(inst.suspended_at) if suspended else None,  # type: ignore[arg-type]
            "suspended_by": self._account(self.user) if suspended else None,
        }

    # -- tokens

    def expire_tokens(self) -> None:
        """Every installation token issued so far is now expired."""
        with self._lock:
            now = self.clock()
            for issued in self.issued_tokens:
                issued.expires_at = min(issued.expires_at, now - 1)

    def _valid_token(self, token: str) -> IssuedToken | None:
        """The issued token, if it is known, unexpired, unrevoked and its installation still there."""
        with self._lock:
            for issued in self.issued_tokens:
                if hmac.compare_digest(issued.token, token):
                    ok = (not issued.revoked and self.clock() < issued.expires_at
                          and issued.installation_id in self.installations)
                    return issued if ok else None
            return None

    def _visible(self, issued: IssuedToken) -> list[FakeRepo]:
        with self._lock:
            inst = self.installations[issued.installation_id]
            names = [n for n in inst.repos if issued.repositories is None
                     or n.split("/")[1] in issued.repositories]
            return sorted((self.repos[n] for n in names), key=lambda repo: repo.id)

    def _issue(self, inst: FakeInstallation, body: dict[str, Any]) -> dict[str, Any]:
        names, ids = body.get("repositories"), body.get("repository_ids")
        scope: list[str] | None = None
        if names or ids:
            if not isinstance(names or [], list) or not isinstance(ids or [], list):
                raise _HttpError(422, "repositories and repository_ids must be arrays")
            scope = []
            for name in names or []:
                full = f"{inst.account}/{name}" if isinstance(name, str) and "/" not in name else None
                if full not in inst.repos:
                    raise _HttpError(422, BAD_REPOS)
                scope.append(full)
            for repo_id in ids or []:
                found = [n for n in inst.repos if self.repos[n].id == repo_id]
                if not found:
                    raise _HttpError(422, BAD_REPOS)
                scope.append(found[0])
            scope = sorted(set(scope), key=lambda n: self.repos[n].id)  # full names here
        wanted = body.get("permissions")
        if wanted is None:
            permissions = dict(inst.permissions)
        else:
            if not isinstance(wanted, dict):
                raise _HttpError(422, "permissions must be an object")
            for name, level in wanted.items():
                have = inst.permissions.get(name)
                if level not in LEVELS or have is None or LEVELS[level] > LEVELS[have]:
                    raise _HttpError(422, BAD_PERMS)
            permissions = dict(wanted)
        now = self.clock()
        alphabet = string.ascii_letters + string.digits
        issued = IssuedToken(token="ghs_" + "".join(secrets.choice(alphabet) for _ in range(36)),
                             installation_id=inst.id, permissions=permissions,
                             repositories=None if scope is None else [n.split("/")[1] for n in scope],
                             issued_at=now, expires_at=now + self.token_lifetime)
        self.issued_tokens.append(issued)
        answer: dict[str, Any] = {"token": issued.token, "expires_at": iso(issued.expires_at),
                                  "permissions": permissions, "repository_selection": "selected"}
        if scope is not None:
            answer["repositories"] = [self._repo_json(self.repos[n]) for n in scope]
        return answer

    # -- webhooks

    def _hook_target(self, app: FakeApp) -> str | None:
        if not app.hook_active or not app.hook_url:
            return None
        if self.deliver_to is None:
            return app.hook_url
        base, hook = urlsplit(self.deliver_to), urlsplit(app.hook_url)
        return urlunsplit((base.scheme, base.netloc, hook.path, hook.query, ""))

    def deliver(self, app_id: int, event: str, payload: dict[str, Any], delivery: str | None = None,
                signature: str | None = None) -> httpx.Response:
        """POST one webhook delivery to the App's hook URL (or `signature`, verbatim, to forge one)."""
        with self._lock:
            app = self.apps[app_id]
            target, secret, hook_id = self._hook_target(app), app.webhook_secret, app.hook_id
        if target is None:
            raise RuntimeError(f"App {app_id} has no active webhook")
        body = json.dumps(payload).encode()
        delivery = delivery or str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/f1e2d3c", "Accept": "*/*",
            "X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "X-GitHub-Hook-ID": str(hook_id),
            "X-GitHub-Hook-Installation-Target-Type": "integration",
            "X-GitHub-Hook-Installation-Target-ID": str(app_id),
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            if signature is None else signature,
        }
        if signature is None:  # GitHub sends the SHA-1 one too; a forged delivery carries only what was given
            headers["X-Hub-Signature"] = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
        try:
            with httpx.Client(trust_env=False, timeout=10) as client:
                response = client.post(target, content=body, headers=headers)
        except httpx.HTTPError:
            with self._lock:
                self.deliveries.append((delivery, event, 0))
            raise
        with self._lock:
            self.deliveries.append((delivery, event, response.status_code))
        return response

    def _notify(self, app_id: int, event: str, payload: dict[str, Any]) -> None:
        """A delivery GitHub makes on its own: none without an active hook; a receiver that is down
        changes nothing (recorded with status 0)."""
        with self._lock:
            if self._hook_target(self.apps[app_id]) is None:
                return
        try:
            self.deliver(app_id, event, payload)
        except httpx.HTTPError:
            pass

    def push(self, full_name: str, branch: str, work_tree: Path) -> httpx.Response | None:
        """update_repo, then deliver `push` for that branch to every installation that can see the repo
        (not suspended, its App subscribed to push). The last response; None when none was delivered."""
        repo = self._repo(full_name)
        ref = f"refs/heads/{branch}"
        before = self._rev(repo, ref)
        self.update_repo(full_name, work_tree)
        after = self._rev(repo, ref)
        payload = self._push_payload(repo, ref, before, after)
        with self._lock:
            targets = [(inst.app_id, inst.id) for inst in self.installations.values()
                       if full_name in inst.repos and inst.suspended_at is None
                       and "push" in self.apps[inst.app_id].events
                       and self._hook_target(self.apps[inst.app_id]) is not None]
        response = None
        for app_id, installation_id in targets:
            installation = {"id": installation_id, "node_id": _node_id("Installation", installation_id)}
            response = self.deliver(app_id, "push", {**payload, "installation": installation})
        return response

    @staticmethod
    def _rev(repo: FakeRepo, ref: str) -> str:
        result = subprocess.run(["git", "rev-parse", "--verify", "-q", ref], cwd=repo.path, capture_output=True,
                                text=True)
        return result.stdout.strip() or ZERO_SHA

    def _commit_json(self, repo: FakeRepo, sha: str, distinct: bool = True) -> dict[str, Any]:
        fields = _git("show", "-s", "--format=%T%x00%an%x00%ae%x00%cn%x00%ce%x00%cI%x00%B", sha,
                      cwd=repo.path).split("\0")
        tree, author, author_email, committer, committer_email, when, message = fields
        changes: dict[str, list[str]] = {"added": [], "removed": [], "modified": []}
        status = _git("diff-tree", "-r", "--root", "--no-commit-id", "--no-renames", "--name-status", "-z", sha,
                      cwd=repo.path).split("\0")
        for kind, path in zip(status[0::2], status[1::2], strict=False):
            changes[{"A": "added", "D": "removed"}.get(kind, "modified")].append(path)
        return {"id": sha, "tree_id": tree, "distinct": distinct, "message": message.rstrip("\n"),
                "timestamp": when, "url": f"{self.url}/{repo.full_name}/commit/{sha}",
                "author": {"name": author, "email": author_email},
                "committer": {"name": committer, "email": committer_email}, **changes}

    def _push_payload(self, repo: FakeRepo, ref: str, before: str, after: str) -> dict[str, Any]:
        created, deleted = before == ZERO_SHA, after == ZERO_SHA
        commits: list[str] = []
        if not deleted:
            if created:
                others = [r for r in _git("for-each-ref", "--format=%(refname)", "refs/heads", cwd=repo.path).split()
                          if r != ref]
                span = [after, "--not", *others] if others else [after]
            else:
                span = [f"{before}..{after}"]
            commits = _git("rev-list", "--reverse", "--max-count=2048", *span, cwd=repo.path).split()
        forced = not created and not deleted and subprocess.run(
            ["git", "merge-base", "--is-ancestor", before, after], cwd=repo.path).returncode != 0
        owner = self._account(repo.owner)
        repository = {**self._repo_json(repo), "owner": {"name": repo.owner, "email": None, **owner},
                      "master_branch": repo.default_branch, "pushed_at": int(self.clock())}
        return {
            "ref": ref, "before": before, "after": after, "created": created, "deleted": deleted, "forced": forced,
            "base_ref": None, "compare": f"{self.url}/{repo.full_name}/compare/{before[:12]}...{after[:12]}",
            "commits": [self._commit_json(repo, sha) for sha in commits],
            "head_commit": None if deleted else self._commit_json(repo, after),
            "repository": repository, "pusher": {"name": self.user, "email": self.user_email},
            "sender": self._account(self.user),
        }

    # -- serving

    def _handle(self, req: _Request) -> _Response:
        for method, pattern, handler in _ROUTES:
            match = re.fullmatch(pattern, req.path)
            if match and method == req.method:
                try:
                    return handler(self, req, *match.groups())
                except _HttpError as error:
                    return _error(error.status, error.message, error.headers)
        if _GIT_PATH.fullmatch(req.path):
            return self._git(req)
        return _error(404, "Not Found")

    def _api_checks(self, req: _Request) -> None:
        if not req.headers.get("User-Agent"):
            raise _HttpError(403, "Request forbidden by administrative rules. "
                                  "Please make sure your request has a User-Agent header")

    # the web side of the manifest flow

    def _h_new_app(self, req: _Request, org: str | None = None) -> _Response:
        """The person clicks "Create GitHub App" on the manifest the form posted: GitHub redirects back."""
        content_type = (req.headers.get("Content-Type") or "").split(";")[0].strip()
        form = parse_qs(req.body.decode("utf-8", "replace")) if content_type == "application/x-www-form-urlencoded" \
            else {}
        if "manifest" not in form:
            return _error(422, "The manifest form field is missing (an application/x-www-form-urlencoded POST)")
        try:
            manifest = json.loads(form["manifest"][0])
        except ValueError:
            return _error(422, "The manifest is not valid JSON")
        try:
            _, code = self.create_app(manifest, org)
        except ValueError as error:
            return _error(422, f"Invalid GitHub App configuration: {error}")
        state = req.param("state")
        redirect = manifest["redirect_url"]
        query = f"code={code}" + (f"&state={quote(state, safe='')}" if state is not None else "")
        location = redirect + ("&" if urlsplit(redirect).query else "?") + query
        return _Response(302, b"", {"Location": location, "Content-Type": "text/html; charset=utf-8"})

    # the REST API

    def _h_conversion(self, req: _Request, code: str) -> _Response:
        self._api_checks(req)
        with self._lock:
            found = self._codes.pop(code, None)
            if found is None or self.clock() - found[1] > CODE_LIFETIME:
                return _error(404, "Not Found")
            app = self.apps[found[0]]
            data = {**self._app_json(app), "client_secret": app.client_secret,
                    "webhook_secret": app.webhook_secret if app.hook_active else None, "pem": app.pem}
        data.pop("installations_count")
        return _json(201, data)

    def _jwt_app(self, req: _Request) -> FakeApp:
        """The App whose JWT authenticates the request (GitHub's checks and messages)."""
        self._api_checks(req)
        scheme, _, token = (req.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _HttpError(401, "A JSON web token could not be decoded" if scheme else "Requires authentication")
        token = token.strip()
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _HttpError(401, BAD_JWT) from None
        if header.get("alg") != "RS256":
            raise _HttpError(401, BAD_JWT)
        app = self._issuer(claims.get("iss"))
        try:
            # only the signature: GitHub's claim rules (and its clock) follow
            claims = jwt.decode(token, app.public_key, algorithms=["RS256"], options={
                "verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False,
                "verify_iss": False, "verify_sub": False, "verify_jti": False})
        except jwt.PyJWTError:
            raise _HttpError(401, BAD_JWT) from None
        iat: Any = claims.get("iat")
        exp: Any = claims.get("exp")
        now = self.clock()
        if not _is_number(iat) or iat > now + JWT_IAT_SKEW:
            raise _HttpError(401, BAD_IAT)
        if not _is_number(exp) or exp <= now:
            raise _HttpError(401, BAD_EXP)
        if exp - iat > JWT_MAX_LIFETIME or exp > now + JWT_MAX_LIFETIME:
            raise _HttpError(401, FAR_EXP)
        return app

    def _issuer(self, iss: object) -> FakeApp:
        """`iss` is the App's id (an integer or its string) or, as GitHub also accepts, its client id."""
        with self._lock:
            if isinstance(iss, str) and iss.isdigit():
                iss = int(iss)
            if isinstance(iss, int) and not isinstance(iss, bool) and iss in self.apps:
                return self.apps[iss]
            for app in self.apps.values():
                if isinstance(iss, str) and iss == app.client_id:
                    return app
        if iss is None:
            raise _HttpError(401, "'Issuer' claim ('iss') must be an Integer")
        raise _HttpError(401, "Integration not found")

    def _h_app(self, req: _Request) -> _Response:
        return _json(200, self._app_json(self._jwt_app(req)))

    def _h_installations(self, req: _Request) -> _Response:
        app = self._jwt_app(req)
        with self._lock:
            items = [self._installation_json(i) for i in self.installations.values() if i.app_id == app.id]
        page, headers = self._paginate(req, items)
        return _json(200, page, headers)

    def _installation_of(self, app: FakeApp, installation_id: str) -> FakeInstallation:
        inst = self.installations.get(int(installation_id))
        if inst is None or inst.app_id != app.id:
            raise _HttpError(404, "Not Found")
        return inst

    def _h_installation(self, req: _Request, installation_id: str) -> _Response:
        app = self._jwt_app(req)
        with self._lock:
            return _json(200, self._installation_json(self._installation_of(app, installation_id)))

    def _h_access_token(self, req: _Request, installation_id: str) -> _Response:
        app = self._jwt_app(req)
        try:
            body = json.loads(req.body) if req.body.strip() else {}
        except ValueError:
            return _error(400, "Problems parsing JSON")
        if not isinstance(body, dict):
            return _error(400, "Problems parsing JSON")
        with self._lock:
            inst = self._installation_of(app, installation_id)
            if inst.suspended_at is not None:
                return _error(403, SUSPENDED)
            return _json(201, self._issue(inst, body))

    def _token_auth(self, req: _Request) -> IssuedToken:
        self._api_checks(req)
        scheme, _, token = (req.headers.get("Authorization") or "").partition(" ")
        if not scheme:
            raise _HttpError(401, "Requires authentication")
        issued = self._valid_token(token.strip()) if scheme.lower() in ("token", "bearer") else None
        if issued is None:
            raise _HttpError(401, "Bad credentials")
        if self.installations[issued.installation_id].suspended_at is not None:
            raise _HttpError(403, SUSPENDED)
        return issued

    def _h_installation_repos(self, req: _Request) -> _Response:
        issued = self._token_auth(req)
        repos = [self._repo_json(repo) for repo in self._visible(issued)]
        page, headers = self._paginate(req, repos)
        return _json(200, {"total_count": len(repos), "repository_selection": "selected", "repositories": page},
                     headers)

    def _h_revoke(self, req: _Request) -> _Response:
        issued = self._token_auth(req)
        with self._lock:
            issued.revoked = True
        return _Response(204)

    def _paginate(self, req: _Request, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
        """One page of `items` (per_page: default 30, capped at per_page_max) and GitHub's Link header."""
        def number(name: str, default: int) -> int:
            value = req.param(name)
            return int(value) if value and value.isdigit() and int(value) > 0 else default

        per_page = min(number("per_page", 30), self.per_page_max)
        page = number("page", 1)
        last = max(1, -(-len(items) // per_page))
        links = []

        def link(number: int, rel: str) -> str:
            query = {k: v[0] for k, v in req.query.items()} | {"page": str(number)}
            return f'<{self.url}{req.path}?{urlencode(query)}>; rel="{rel}"'

        if page > 1:
            links.append(link(min(page - 1, last), "prev"))
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links.append(link(1, "first"))
        headers = {"Link": ", ".join(links)} if links else {}
        return items[(page - 1) * per_page:page * per_page], headers

    # smart-HTTP git

    def _git(self, req: _Request) -> _Response:
        match = _GIT_PATH.fullmatch(req.path)
        assert match is not None
        full_name, tail = f"{match[1]}/{match[2]}", match[3]
        challenge = {"WWW-Authenticate": 'Basic realm="GitHub"'}
        issued = self._basic_token(req)
        if issued is None:
            return _Response(401, b"Invalid username or token. Password authentication is not supported "
                                  b"for Git operations.\n", {"Content-Type": "text/plain", **challenge})
        with self._lock:
            inst = self.installations[issued.installation_id]
            visible = (full_name in {repo.full_name for repo in self._visible(issued)}
                       and issued.permissions.get("contents") in LEVELS)
            if inst.suspended_at is not None:
                return _Response(403, b"This installation has been suspended\n", {"Content-Type": "text/plain"})
        if not visible:
            return _Response(404, b"Repository not found.\n", {"Content-Type": "text/plain"})
        service = req.param("service") if tail == "/info/refs" else tail.lstrip("/")
        if service == "git-receive-pack":
            return _Response(403, f"Write access to repository not granted to {full_name}.\n".encode(),
                             {"Content-Type": "text/plain"})
        if not ((tail == "/info/refs" and req.method == "GET" and service == "git-upload-pack")
                or (tail == "/git-upload-pack" and req.method == "POST")):
            return _Response(404, b"Not Found\n", {"Content-Type": "text/plain"})
        with self._lock:
            if match[2] not in issued.used_for:
                issued.used_for.append(match[2])
        return self._http_backend(req)

    def _basic_token(self, req: _Request) -> IssuedToken | None:
        scheme, _, value = (req.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return self._valid_token(password) if user == "x-access-token" else None

    def _http_backend(self, req: _Request) -> _Response:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": str(self.git_root), "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": req.path,
            "REQUEST_METHOD": req.method, "QUERY_STRING": req.raw_query,
            "CONTENT_TYPE": req.headers.get("Content-Type") or "", "CONTENT_LENGTH": str(len(req.body)),
            "REMOTE_USER": "x-access-token", "REMOTE_ADDR": "127.0.0.1",
        }
        for header in ("Content-Encoding", "Git-Protocol"):
            if req.headers.get(header):
                env["HTTP_" + header.upper().replace("-", "_")] = req.headers[header]
        result = subprocess.run(["git", "http-backend"], input=req.body, env=env, capture_output=True, timeout=300)
        head, sep, body = result.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, body = result.stdout.partition(b"\n\n")
        if result.returncode != 0 and not sep:
            return _Response(500, b"git http-backend failed\n", {"Content-Type": "text/plain"})
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        return _Response(status, body, headers)


_GIT_PATH = re.compile(r"/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)\.git(/.*)")
_ROUTES: list[tuple[str, str, Callable[..., _Response]]] = [
    ("POST", r"/settings/apps/new", FakeGitHub._h_new_app),
    ("POST", r"/organizations/([^/]+)/settings/apps/new", FakeGitHub._h_new_app),
    ("POST", r"/api/v3/app-manifests/([^/]+)/conversions", FakeGitHub._h_conversion),
    ("GET", r"/api/v3/app", FakeGitHub._h_app),
    ("GET", r"/api/v3/app/installations", FakeGitHub._h_installations),
    ("GET", r"/api/v3/app/installations/(\d+)", FakeGitHub._h_installation),
    ("POST", r"/api/v3/app/installations/(\d+)/access_tokens", FakeGitHub._h_access_token),
    ("GET", r"/api/v3/installation/repositories", FakeGitHub._h_installation_repos),
    ("DELETE", r"/api/v3/installation/token", FakeGitHub._h_revoke),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A response leaves in one write, without waiting for the client's delayed ACK (40 ms a request
    # otherwise); handle_one_request flushes it.
    disable_nagle_algorithm = True
    wbufsize = -1
    server_version = "GitHub.com"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - nothing is logged
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET  # noqa: N815

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        fake: FakeGitHub = self.server.fake  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        with fake._lock:
            fake.requests.append((self.command, parts.path))
        try:
            request = _Request(self.command, parts.path, parse_qs(parts.query), self.headers, self._body(),
                               parts.query)
            response = fake._handle(request)
        except Exception:
            with fake._lock:
                fake.errors.append(traceback.format_exc())
            response = _error(500, "Server Error")
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)
