"""GitHub's App API: the manifest that registers an App, the App's JWT, installation tokens and
the repositories an installation can reach. github.com by default; GitHub Enterprise Server
through the --github-url and --github-api-url settings.

What is sent is built by pure functions (`app_manifest`, `app_jwt`, `token_request`), tested as
data; the calls below hand out plain records. Secrets never reach an error message.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

API_VERSION = "2022-11-28"
JWT_LIFETIME = 540  # seconds; GitHub refuses more than 600
JWT_BACKDATE = 60  # iat in the past, for clocks that drift
TIMEOUT = 15.0


class GitHubError(Exception):
    """GitHub refused or could not be reached; the message says which call and why."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class NewApp:
    """What GitHub hands back once, when a manifest is converted into an App."""

    app_id: int
    slug: str
    name: str
    owner: str
    html_url: str
    client_id: str
    client_secret: str
    webhook_secret: str
    pem: str


@dataclass(frozen=True)
class InstallationToken:
    token: str
    expires_at: float  # Unix time


def app_manifest(name: str, base_url: str) -> dict:
    """The manifest of an App for this server: private, contents and metadata read-only, the
    push event, webhooks to this server and the manifest flow's callback on it."""
    return {
        "name": name,
        "url": base_url,
        "hook_attributes": {"url": f"{base_url}/webhooks/github/app", "active": True},
        "redirect_url": f"{base_url}/github/app/created",
        "public": False,
        "default_permissions": {"contents": "read", "metadata": "read"},
        "default_events": ["push"],
    }


def manifest_form_action(github_url: str, org: str, state: str) -> str:
    """Where the browser posts the manifest (an organization's settings, or the user's)."""
    where = f"organizations/{org}/settings/apps/new" if org else "settings/apps/new"
    return f"{github_url.rstrip('/')}/{where}?state={state}"


def app_jwt(app_id: int, pem: str, now: float | None = None) -> str:
    """The App's own credential: RS256, issued a minute in the past, valid 9 minutes."""
    import jwt  # here: only a GitHub App signs, and the daemon need not load it for anything else

    issued = int(now if now is not None else time.time()) - JWT_BACKDATE
    claims = {"iat": issued, "exp": issued + JWT_BACKDATE + JWT_LIFETIME, "iss": str(app_id)}
    return jwt.encode(claims, pem, algorithm="RS256")


def token_request(repo: str | None) -> dict:
    """An installation token limited to one repository (by name) and to reading its contents;
    None: every repo of the installation, metadata only (to list them)."""
    if repo is None:
        return {"permissions": {"metadata": "read"}}
    return {"repositories": [repo.split("/", 1)[1]], "permissions": {"contents": "read"}}


class GitHubApi:
    def __init__(self, api_url: str) -> None:
        self.api_url = api_url.rstrip("/")

    def convert_manifest(self, code: str) -> NewApp:
        if not CODE.fullmatch(code):
            raise GitHubError("the code GitHub sent back is not one (letters, digits, '-' and '_')")
        data = self._call("POST", f"/app-manifests/{code}/conversions", what="turning the manifest into an App")
        try:
            owner = data.get("owner")
            return NewApp(app_id=int(data["id"]), slug=str(data["slug"]), name=str(data["name"]),
                          owner=str(owner.get("login", "")) if isinstance(owner, dict) else "",
                          html_url=str(data["html_url"]), client_id=str(data["client_id"]),
                          client_secret=str(data["client_secret"]), webhook_secret=str(data["webhook_secret"]),
                          pem=str(data["pem"]))
        except (KeyError, TypeError, ValueError):
            raise GitHubError("GitHub's answer to the manifest conversion lacks the App's fields") from None

    def installations(self, app_id: int, pem: str) -> list[dict]:
        """The App's installations as GitHub knows them (the App's JWT)."""
        response = self._send("GET", f"{self.api_url}/app/installations?per_page=100", "the App's installations",
                              bearer=app_jwt(app_id, pem))
        found = _json(response, "the App's installations")
        return [i for i in found if isinstance(i, dict)] if isinstance(found, list) else []

    def installation_token(self, app_id: int, pem: str, installation_id: int, repo: str | None) -> InstallationToken:
        data = self._call("POST", f"/app/installations/{installation_id}/access_tokens",
                          bearer=app_jwt(app_id, pem), body=token_request(repo),
                          what=f"an installation token for {repo or 'the installation'}")
        try:
            expires = datetime.fromisoformat(str(data["expires_at"]).replace("Z", "+00:00")).timestamp()
            return InstallationToken(str(data["token"]), expires)
        except (KeyError, ValueError):
            raise GitHubError("GitHub's installation token answer lacks token or expires_at") from None

    def installation_repositories(self, token: str) -> list[dict]:
        """Every repository the token's installation can reach, page after page (Link: next)."""
        found: list[dict] = []
        url: str | None = f"{self.api_url}/installation/repositories?per_page=100"
        pages = 0
        while url and pages < 100:  # 10,000 repos: more is a loop, not an installation
            response = self._send("GET", url, bearer=token, what="the installation's repositories")
            page = _json(response, "the installation's repositories")
            repos = page.get("repositories") if isinstance(page, dict) else None
            found += [r for r in repos if isinstance(r, dict)] if isinstance(repos, list) else []
            url = next_link(response.headers.get("link", ""))
            pages += 1
        return found

    def _call(self, method: str, path: str, what: str, bearer: str = "", body: dict | None = None) -> dict:
        data = _json(self._send(method, f"{self.api_url}{path}", what, bearer, body), what)
        if not isinstance(data, dict):
            raise GitHubError(f"GitHub's answer for {what} is not a JSON object")
        return data

    def _send(self, method: str, url: str, what: str, bearer: str = "", body: dict | None = None) -> httpx.Response:
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION,
                   "User-Agent": "disco"}
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        import httpx  # here: only GitHub's API needs it in the daemon, and an idle daemon calls none

        try:
            response = httpx.request(method, url, json=body, headers=headers, timeout=TIMEOUT)
        except httpx.HTTPError as err:
            raise GitHubError(f"cannot reach GitHub at {self.api_url} for {what}: {type(err).__name__}") from None
        if response.status_code >= 300:
            message = ""
            try:
                found = response.json()
                message = str(found.get("message", ""))[:200] if isinstance(found, dict) else ""
            except ValueError:
                pass
            raise GitHubError(f"GitHub refused {what}: {response.status_code} {message}".rstrip(),
                              response.status_code)
        return response


def _json(response: httpx.Response, what: str) -> object:
    try:
        return response.json()
    except ValueError:
        raise GitHubError(f"GitHub's answer for {what} is not JSON") from None


CODE = re.compile(r"[A-Za-z0-9_-]{1,100}")
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="next"')


def next_link(header: str) -> str | None:
    """The `rel="next"` URL of a Link header (GitHub's pagination), if any."""
    for part in header.split(","):
        match = _NEXT.search(part)
        if match:
            return match.group(1)
    return None
