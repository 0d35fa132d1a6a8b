"""GitHub push webhooks: link a project to a repo, verify deliveries, mirror and deploy.

A delivery costs nothing until it is proven: the project's link and the headers' presence and
shape are checked before its body is read (`check_headers`), the body is then read as a stream
into an HMAC (`signer`), and it is verified (HMAC-SHA256 over the raw body, constant-time
compare) before it is parsed or logged. A push to the linked branch is answered at once with the number of a
queued deployment; the fetch from GitHub is that deployment's first step, run by the project's
queue, so a burst of pushes fetches and builds only the newest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hooks.errors import DeployFailed, Refused
from hooks.output import DeployOutput
from hooks.platform import Platform
from runtime import gitrepo
from runtime.github_api import GitHubError
from runtime.sshkeys import generate_key_pair, public_key_of
from runtime.store import now

REPO_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}")
BRANCH_NAME = re.compile(r"(?!.*\.\.)(?!/)[A-Za-z0-9._/-]{1,200}(?<!/)")
SHA = re.compile(r"[0-9a-f]{40}")
MAX_BODY = 25 << 20  # GitHub caps payloads at 25 MB
SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}")
NOT_SIGNED = "missing or wrong X-Hub-Signature-256 for this webhook's secret"


@dataclass(frozen=True)
class WebhookReply:
    status: int
    body: dict


# -- linking ------------------------------------------------------------------------------------

def link(platform: Platform, user: str, project: str, repo: str, branch: str = "main", clone_url: str = "",
         token: str = "", force_mirror: bool = False) -> dict:
    """Link a project to a GitHub repo; returns what to paste into GitHub's webhook form."""
    if platform.store.get_project(project) is None:
        raise Refused(f"no project named {project!r}", "not_found")
    if project == "app":
        raise Refused("a project named 'app' cannot take webhooks at /webhooks/github/app: that is the GitHub "
                      "App's; link it through the App (disco projects:create --github) or rename it", "conflict")
    if not REPO_NAME.fullmatch(repo):
        raise Refused(f"repo must look like OWNER/NAME, got {repo[:100]!r}")
    if not BRANCH_NAME.fullmatch(branch):
        raise Refused(f"invalid branch name {branch[:100]!r}")
    clone_url = clone_url or f"https://github.com/{repo}.git"
    _check_clone_url(clone_url)
    previous = platform.store.github_link(project) or {}
    # A stored token only ever goes to the host it was given for.
    kept_token = previous.get("token", "") if previous.get("clone_url") == clone_url else ""
    row = {
        "project": project, "repo": repo, "branch": branch, "clone_url": clone_url,
        "secret": secrets.token_hex(32), "token": token or kept_token,
        "deploy_key": previous.get("deploy_key", ""), "force_mirror": int(force_mirror), "created_at": now(),
    }
    platform.store.set_github_link(row)
    platform.store.audit(user, "github:link", project, f"{repo} {branch}" + (" (token set)" if token else ""))
    return webhook_form(platform, row)


def _check_clone_url(url: str) -> None:
    """https, ssh, or http to this machine only (a local mirror): tokens never travel in clear."""
    if not re.fullmatch(r"(https://|ssh://|git@|http://(127\.0\.0\.1|localhost)[:/])[^\s]{3,500}", url):
        raise Refused("clone_url must be an https://, ssh:// or git@host: URL")
    if re.match(r"https?://[^/]*@", url):
        raise Refused("clone_url must not carry credentials: give a token with --token instead")


def server_base_url(platform: Platform) -> str:
    """This server as GitHub and browsers reach it: https on its own domain when it has one."""
    host = platform.router.api_host or platform.settings.public_host
    scheme = "https" if platform.settings.tls and platform.router.api_host else "http"
    return f"{scheme}://{host}"


def webhook_form(platform: Platform, row: dict) -> dict:
    return {
        "payload_url": f"{server_base_url(platform)}/webhooks/github/{row['project']}",
        "content_type": "application/json",
        "secret": row["secret"],
        "events": "Just the push event",
        "repo": row["repo"], "branch": row["branch"], "clone_url": row["clone_url"],
        "force_mirror": bool(row["force_mirror"]),
    }


def unlink(platform: Platform, user: str, project: str) -> None:
    _require_link(platform, project)
    platform.store.delete_github_link(project)
    platform.store.audit(user, "github:unlink", project)


def rotate_secret(platform: Platform, user: str, project: str) -> dict:
    row = {**_require_webhook_link(platform, project), "secret": secrets.token_hex(32)}
    platform.store.set_github_link(row)
    platform.store.audit(user, "github:secret-rotate", project)
    return webhook_form(platform, row)


def deploy_key(platform: Platform, user: str, project: str) -> str:
    """The public half of the project's deploy key (made on first ask); the private half stays here."""
    row = _require_webhook_link(platform, project)
    if not row["deploy_key"]:
        private, _public = generate_key_pair(f"disco-{project}")
        row = {**row, "deploy_key": private}
        platform.store.set_github_link(row)
        platform.store.audit(user, "github:deploy-key", project)
    return public_of(row["deploy_key"], project)


def public_of(private_key: str, project: str) -> str:
    return public_key_of(private_key, f"disco-{project}")


def _require_webhook_link(platform: Platform, project: str) -> dict:
    row = _require_link(platform, project)
    if row["installation_id"]:
        raise Refused(f"{project} is linked through the GitHub App, which needs no webhook secret or deploy key",
                      "conflict")
    return row


def _require_link(platform: Platform, project: str) -> dict:
    if platform.store.get_project(project) is None:
        raise Refused(f"no project named {project!r}", "not_found")
    row = platform.store.github_link(project)
    if row is None:
        raise Refused(f"{project} is not linked to GitHub: run disco github:link OWNER/REPO", "not_found")
    return row


# -- deliveries ---------------------------------------------------------------------------------

def check_headers(platform: Platform, project: str, headers: dict[str, str]) -> dict | WebhookReply:
    """What can be refused before the body is read: the project's link (one store read), and
    the presence and shape of the signature, event and delivery headers. Returns the link, or
    the refusal. Headers' names are lower case."""
    row = platform.store.github_link(project)  # deleting a project deletes its link
    # An App link has no secret of its own (its hook is the App's); nor has a link whose secret
    # was lost: with an empty key anyone could sign.
    if row is None or row["installation_id"] or not row["secret"]:
        return WebhookReply(404, {"error": {"code": "not_found", "message": f"no project {project!r} linked to GitHub "
                                            "by a webhook (the GitHub App's deliveries go to /webhooks/github/app)"}})
    refused = check_delivery_headers(headers)
    return refused if refused is not None else row


def check_delivery_headers(headers: dict[str, str]) -> WebhookReply | None:
    """The presence and shape of the signature, event and delivery headers (None: fine)."""
    if not SIGNATURE.fullmatch(headers.get("x-hub-signature-256", "").strip()):
        return WebhookReply(401, {"error": {"code": "unauthorized", "message": NOT_SIGNED}})
    event = headers.get("x-github-event", "")
    if not event or len(event) > 100:
        return _bad("the X-GitHub-Event header is missing or too long")
    delivery = headers.get("x-github-delivery", "")
    if not delivery or len(delivery) > 100:
        return _bad("the X-GitHub-Delivery header is missing or too long")
    return None


def signer(secret: str) -> hmac.HMAC:
    """An HMAC to feed the body to as it arrives; `signed(mac, headers)` then says if it matches."""
    if not secret:
        raise ValueError("an empty webhook secret would let anyone sign")
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def signed(mac: hmac.HMAC, headers: dict[str, str]) -> bool:
    expected = "sha256=" + mac.hexdigest()
    return hmac.compare_digest(expected.encode(), headers.get("x-hub-signature-256", "").strip().encode())


def unsigned() -> WebhookReply:
    return WebhookReply(401, {"error": {"code": "unauthorized", "message": NOT_SIGNED}})


def handle_delivery(platform: Platform, project: str, headers: dict[str, str], body: bytes) -> WebhookReply:
    """Answer one webhook delivery. Headers' names are lower case."""
    checked = check_headers(platform, project, headers)
    if isinstance(checked, WebhookReply):
        return checked
    row = checked
    if not signature_ok(row["secret"], body, headers.get("x-hub-signature-256", "")):
        return unsigned()
    event = headers["x-github-event"]
    delivery = headers["x-github-delivery"]
    payload = parse_payload(body)
    if isinstance(payload, WebhookReply):
        return payload
    if event == "ping":
        return _once(platform, delivery, project, event, 200, {"ok": True, "message": f"pong: {project} is linked"})
    if event != "push":
        return _once(platform, delivery, project, event, 202, {"ignored": f"event {event!r} does not deploy"})
    return push(platform, project, row, delivery, payload)


def parse_payload(body: bytes) -> dict | WebhookReply:
    """A proven body as a JSON object, or the 400 that says why it is not one."""
    try:
        payload = json.loads(body)
    except RecursionError:
        return _bad("the body is nested too deeply to be a webhook payload")
    except ValueError as err:  # bad JSON, bad UTF-8, or an integer of more digits than Python parses
        return _bad(f"the body is not valid JSON: {err}")
    if not isinstance(payload, dict):
        return _bad("the body must be a JSON object")
    if not is_text(payload):
        return _bad("the body holds a lone UTF-16 surrogate (like \\ud800), which is not text")
    return payload


def is_text(value: object) -> bool:
    """Whether every string in a parsed JSON value is text that can be stored: JSON's \\ud800
    escapes parse to lone surrogates, which no UTF-8 store (SQLite, logs) can hold."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def signature_ok(secret: str, body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().encode())


def push(platform: Platform, project: str, row: dict, delivery: str, payload: dict) -> WebhookReply:
    """Deploy a push event's commit to the linked branch (the fetch is the deployment's first step)."""
    problem = push_fields_problem(payload)
    if problem:
        return _bad(problem)
    ref, after = payload["ref"], payload["after"]
    if not platform.store.record_delivery(delivery, project, "push", "received"):
        return WebhookReply(200, {"duplicate": f"delivery {delivery} was already handled"})
    if payload.get("deleted"):
        return _result(platform, delivery, 202, {"ignored": f"{ref} was deleted; nothing to deploy"})
    if not ref.startswith("refs/heads/"):
        return _result(platform, delivery, 202, {"ignored": f"{ref} is not a branch"})
    if ref != f"refs/heads/{row['branch']}":
        return _result(platform, delivery, 202, {"ignored": f"{ref} is not the linked branch {row['branch']}"})
    live = platform.store.live_deployment(project)
    if live and live.commit_sha == after:
        return _result(platform, delivery, 200, {"ignored": f"{after[:7]} is already live as #{live.number}"})
    pusher = str((payload.get("pusher") or {}).get("name") or "unknown")[:60]
    ticket = platform.deployer.enqueue(project, after, row["branch"], f"github:{pusher}", "webhook", delivery=delivery,
                              prepare=lambda out: mirror(platform, project, after, out))
    number = ticket.deployment.number
    return _result(platform, delivery, 202, {"deployment": number, "commit": after}, number)


def push_fields_problem(payload: dict) -> str | None:
    if not isinstance(payload.get("ref"), str):
        return "push payload: ref must be a string like refs/heads/main"
    if not isinstance(payload.get("after"), str) or not SHA.fullmatch(payload["after"]):
        return "push payload: after must be a 40-character commit id"
    if "deleted" in payload and not isinstance(payload["deleted"], bool):
        return "push payload: deleted must be true or false"
    if "pusher" in payload and not isinstance(payload["pusher"], dict):
        return "push payload: pusher must be an object"
    return None


def _once(platform: Platform, delivery: str, project: str, event: str, status: int, body: dict) -> WebhookReply:
    if not platform.store.record_delivery(delivery, project, event, json.dumps(body)[:300]):
        return WebhookReply(200, {"duplicate": f"delivery {delivery} was already handled"})
    return WebhookReply(status, body)


def _result(platform: Platform, delivery: str, status: int, body: dict, deployment: int | None = None) -> WebhookReply:
    platform.store.set_delivery_result(delivery, json.dumps(body)[:300], deployment)
    return WebhookReply(status, body)


def _bad(message: str) -> WebhookReply:
    return WebhookReply(400, {"error": {"code": "bad_request", "message": message}})


# -- mirroring ----------------------------------------------------------------------------------

def mirror(platform: Platform, project: str, commit: str, out: DeployOutput) -> None:
    """Fetch the linked branch into the project's bare repo and move the branch to `commit`.

    The branch moves only forward, unless the link says GitHub is authoritative (force_mirror):
    a commit pushed over SSH meanwhile is never silently dropped.
    """
    row = platform.store.github_link(project)
    if row is None:
        raise DeployFailed(f"{project} is no longer linked to GitHub")
    repo = platform.repo_path(project)
    out.line(f"fetching {row['branch']} from {row['clone_url']}")
    _fetch(platform, row)
    if not gitrepo.has_commit(repo, commit):
        raise DeployFailed(f"commit {commit[:7]} is not on {row['branch']} at {row['clone_url']}")
    current = gitrepo.branch_head(repo, row["branch"])
    if current and current != commit and not row["force_mirror"] and not gitrepo.is_ancestor(repo, current, commit):
        raise DeployFailed(
            f"{row['branch']} here is at {current[:7]}, which {commit[:7]} from GitHub does not contain "
            "(someone pushed over SSH?); push it to GitHub first, or link with --force-mirror")
    gitrepo.set_branch(repo, row["branch"], commit, current)
    out.line(f"{row['branch']} -> {commit[:7]} mirrored from GitHub")


def fetch_head(platform: Platform, project: str) -> str:
    """Fetch the linked branch and return its head commit (the branch itself does not move)."""
    row = _require_link(platform, project)
    head = gitrepo.resolve_commit(platform.repo_path(project), _fetch(platform, row))
    if head is None:
        raise DeployFailed(f"{row['branch']} of {row['repo']} has no commit")
    return head


def _fetch(platform: Platform, row: dict) -> str:
    """Fetch the linked branch into refs/disco/github/<branch>; returns that ref. Through the
    App, a token refused (expired early, revoked) is replaced once before giving up."""
    repo = platform.repo_path(row["project"])
    if not repo.exists():
        gitrepo.init_bare(repo)
    tracking = f"refs/disco/github/{row['branch']}"
    for _ in range(2):  # a kept token that GitHub refuses is replaced once
        installation = _installation(platform, row)
        cached = installation is not None and platform.github_tokens.has(installation, row["repo"])
        token = _token(platform, row, installation)
        with _credentials(platform, row, token) as (git_config, env):
            try:
                result = subprocess.run(
                    ["git", *git_config, "--git-dir", str(repo), "fetch", "--no-tags", "--quiet", row["clone_url"],
                     f"+refs/heads/{row['branch']}:{tracking}"],
                    check=False, capture_output=True, text=True, env=env, timeout=600,
                )
            except subprocess.TimeoutExpired:
                raise DeployFailed(f"fetch from {row['clone_url']} took longer than 10 minutes") from None
        if result.returncode == 0:
            return tracking
        if installation is None or not cached:
            break
        platform.github_tokens.forget(installation)  # GitHub refused a kept token early: ask anew once
    raise DeployFailed(f"fetch from {row['clone_url']} failed: {_scrub(result.stderr, token)}")


def _installation(platform: Platform, row: dict) -> int | None:
    """The App's installation that reaches the link's repo now (a reinstall makes a new one);
    None for a webhook link. DeployFailed when the App lost the repo."""
    if not row["installation_id"]:
        return None
    found = platform.store.installation_of_repo(row["repo"])
    if found is None or found["suspended"]:
        raise DeployFailed(f"the GitHub App cannot reach {row['repo']} (uninstalled, suspended, or the repo was "
                           "removed from it)")
    return int(found["id"])


def _token(platform: Platform, row: dict, installation: int | None) -> str:
    """The link's own token, or, through the App, an installation token for this repo only."""
    if installation is None:
        return str(row["token"])
    try:
        return platform.github_tokens.token_for(installation, row["repo"])
    except GitHubError as err:
        raise DeployFailed(f"no GitHub token for {row['repo']}: {err}") from None


class _credentials:
    """A token as an HTTP header, or the deploy key as an SSH identity, never in a URL or a log."""

    def __init__(self, platform: Platform, row: dict, token: str) -> None:
        self.platform, self.row, self.token = platform, row, token
        self._dir: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        # A host that accepts and then stalls must fail the deployment, not hold the queue.
        config: list[str] = ["-c", "http.lowSpeedLimit=1", "-c", "http.lowSpeedTime=60"]
        if self.token:
            # Through the environment, not the command line, which any local user can read.
            basic = base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
            env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"})
        if self.row["deploy_key"]:
            self._dir = tempfile.TemporaryDirectory(prefix="disco-key-")
            key = Path(self._dir.name) / "id"
            key.touch(0o600)
            key.write_text(self.row["deploy_key"])
            known_hosts = self.platform.settings.data_dir / "github_known_hosts"
            env["GIT_SSH_COMMAND"] = (
                f"ssh -i {key} -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=30 "
                f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=accept-new"
            )
        return config, env

    def __exit__(self, *exc: object) -> None:
        if self._dir is not None:
            self._dir.cleanup()


def _scrub(text: str, token: str) -> str:
    """git's error, one line, with no credential in it."""
    line = " ".join(text.strip().split())[:300] or "no output"
    if token:
        line = line.replace(token, "*****")
    return line
