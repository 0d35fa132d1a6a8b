"""A GitHub App that lives on this server: created from a manifest in one click, installed on
the repos a team chooses, sending its webhooks here, and fetching private repos with
installation tokens scoped to one repo (hooks/github_tokens.py), so no deploy key is needed.

The manifest flow (GitHub's "registering a GitHub App from a manifest"):
1. an admin asks (`start_creation`): a one-time link to this server, valid 10 minutes;
2. their browser opens it (`creation_page`): the link is used up, a `state` for GitHub and a
   cookie binding that state to this browser are made, and a form posts the manifest to GitHub;
3. GitHub sends the browser back with a code (`finish_creation`): the state must be unused,
   under 10 minutes old and bound to that browser's cookie, so no one else holding a link can
   attach their own App to this server; the code becomes the App (its secrets sealed in the
   store), and the browser goes on to install it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import time
from dataclasses import dataclass, field

from hooks import github, projects
from hooks.errors import Refused
from hooks.github import WebhookReply
from hooks.platform import Platform
from hooks.policy import check_project_name
from hooks.queue import Ticket
from runtime import gitrepo
from runtime.github_api import GitHubApi, GitHubError, NewApp, app_manifest, manifest_form_action
from runtime.store import StoreError, User, now

FLOW_SECONDS = 600  # the link, and then GitHub's round trip, each have 10 minutes
COOKIE = "disco_github_app"
APP_NAME_MAX = 34  # GitHub's limit for an App's name
MAX_ID = 2**63 - 1  # SQLite's INTEGER: a larger id fails any store call that is given it
ORG_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")


@dataclass(frozen=True)
class Page:
    """An HTML answer (or a redirect) of the manifest flow."""

    status: int
    body: str = ""
    location: str = ""
    headers: dict[str, str] = field(default_factory=dict)


# -- creating the App -------------------------------------------------------------------------

def start_creation(platform: Platform, user: str, org: str = "") -> dict:
    """A one-time link for the admin's browser that starts the App's creation on GitHub."""
    if org and not ORG_NAME.fullmatch(org):
        raise Refused(f"invalid GitHub organization name {org[:60]!r}")
    _refuse_a_second_app(platform)
    if not platform.router.api_host:
        raise Refused("the GitHub App needs this server's own domain for GitHub to send it webhooks: start the "
                      "daemon with --host deploy.example.com (a name whose DNS points here)", "conflict")
    flow_id, start = secrets.token_urlsafe(12), secrets.token_urlsafe(32)
    started = time.time()
    platform.store.add_app_flow({"id": flow_id, "user": user, "org": org, "start_digest": _digest(start),
                                 "state_digest": "", "binding_digest": "", "created_at": now(),
                                 "expires_at": started + FLOW_SECONDS, "started": 0, "finished": 0,
                                 "created_epoch": started})
    platform.store.audit(user, "github:app:create", org or "(personal account)", "link made")
    return {"url": f"{github.server_base_url(platform)}/github/app/new?flow={flow_id}&token={start}",
            "expires_in": FLOW_SECONDS}


def _refuse_a_second_app(platform: Platform) -> None:
    app = platform.store.github_app()
    if app is not None:
        raise Refused(f"this server already has the GitHub App {app['slug']}; remove it first with "
                      "disco github:app:remove", "conflict")


def creation_page(platform: Platform, flow_id: str, start: str, secure: bool) -> Page:
    """The page the link opens: uses the link up, binds the flow to this browser, and posts the
    manifest to GitHub (by itself, with a button for browsers without JavaScript)."""
    if platform.store.github_app() is not None:
        return _problem(409, "This server has a GitHub App already (see disco github:app).")
    flow = platform.store.app_flow(flow_id) if flow_id else None
    if flow is None or not hmac.compare_digest(flow["start_digest"], _digest(start)):
        return _problem(404, "This link is not known here. Ask for a new one with disco github:app:create.")
    if time.time() > flow["expires_at"]:
        return _problem(410, "This link has expired (it lasts 10 minutes). Ask for a new one with "
                             "disco github:app:create.")
    state, binding = f"{flow_id}.{secrets.token_urlsafe(24)}", secrets.token_urlsafe(32)
    if not platform.store.claim_app_flow(flow_id, "started", 0, state_digest=_digest(state),
                                         binding_digest=_digest(binding), expires_at=time.time() + FLOW_SECONDS):
        return _problem(409, "This link was used already: each one works once. Ask for a new one with "
                             "disco github:app:create.")
    base = github.server_base_url(platform)
    manifest = app_manifest(_app_name(platform), base)
    action = manifest_form_action(platform.settings.github_url, flow["org"], state)
    script = "document.forms[0].submit();"
    body = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Create the GitHub App</title></head>"
        f"<body><form method=\"post\" action=\"{html.escape(action)}\">"
        f"<input type=\"hidden\" name=\"manifest\" value=\"{html.escape(json.dumps(manifest))}\">"
        f"<p>Sending the manifest of <b>{html.escape(manifest['name'])}</b> to GitHub&hellip;</p>"
        "<button type=\"submit\">Create the GitHub App on GitHub</button></form>"
        f"<script>{script}</script></body></html>"
    )
    cookie = (f"{COOKIE}={binding}; Path=/github/app; Max-Age={FLOW_SECONDS}; HttpOnly; SameSite=Lax"
              + ("; Secure" if secure else ""))
    return Page(200, body, headers={**_page_headers(platform, script), "Set-Cookie": cookie})


def finish_creation(platform: Platform, code: str, state: str, binding: str) -> Page:
    """GitHub's redirect back: turn the code into the App, then send the browser to install it."""
    flow_id = state.split(".", 1)[0]
    flow = platform.store.app_flow(flow_id) if code and state and flow_id else None
    if flow is None or not flow["state_digest"] or not hmac.compare_digest(flow["state_digest"], _digest(state)):
        return _problem(400, "GitHub sent back a state this server did not make. Start again with "
                             "disco github:app:create.")
    if flow["finished"]:
        return _problem(409, "This App creation was finished already; each one works once. See disco github:app.")
    if time.time() > flow["expires_at"]:
        return _problem(410, "This App creation took longer than 10 minutes and has expired. Start again with "
                             "disco github:app:create.")
    if not binding or not hmac.compare_digest(flow["binding_digest"], _digest(binding)):
        return _problem(403, "This browser did not start this App creation, so it cannot finish it. Open the "
                             "link from disco github:app:create in the browser that will create the App.")
    if not platform.store.claim_app_flow(flow_id, "finished", 0):
        return _problem(409, "This App creation was finished already; each one works once. See disco github:app.")
    if platform.store.github_app() is not None:  # another flow finished first
        return _problem(409, "This server has a GitHub App already (see disco github:app).")
    try:
        made = GitHubApi(platform.settings.github_api_url).convert_manifest(code)
    except GitHubError as err:
        return _problem(502, f"GitHub did not make the App: {err}. Start again with disco github:app:create.")
    try:
        _store_app(platform, made, flow["user"])
    except StoreError:
        return _problem(409, f"This server got another GitHub App meanwhile; delete {made.slug} on GitHub.")
    return Page(303, location=f"{platform.settings.github_url.rstrip('/')}/apps/{made.slug}/installations/new",
                headers={"Set-Cookie": f"{COOKIE}=; Path=/github/app; Max-Age=0; HttpOnly; SameSite=Lax"})


def _store_app(platform: Platform, made: NewApp, user: str) -> None:
    platform.store.add_github_app({
        "app_id": made.app_id, "slug": made.slug, "name": made.name, "owner": made.owner, "html_url": made.html_url,
        "client_id": made.client_id, "client_secret": made.client_secret, "webhook_secret": made.webhook_secret,
        "pem": made.pem, "created_by": user, "created_at": now(),
    })
    platform.github_tokens.forget()
    platform.store.audit(user, "github:app:created", made.slug, f"app id {made.app_id}")


def _app_name(platform: Platform) -> str:
    """`disco <host> <4 hex>`, within GitHub's limit: App names are unique on all of GitHub, and
    an App removed here still exists there until deleted, so each creation gets a new name."""
    host = platform.router.api_host or platform.settings.public_host
    return f"{f'disco {host}'[:APP_NAME_MAX - 5].strip()} {secrets.token_hex(2)}"


def _page_headers(platform: Platform, script: str = "") -> dict[str, str]:
    """No framing, no referrer (the link's token stays here), and only this page's own script."""
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    scripts = f"script-src 'sha256-{digest}'; " if script else ""
    return {
        "Content-Security-Policy": f"default-src 'none'; {scripts}style-src 'unsafe-inline'; "
                                   f"form-action {platform.settings.github_url.rstrip('/')}; base-uri 'none'; "
                                   "frame-ancestors 'none'",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "Content-Type": "text/html; charset=utf-8",
    }


def _problem(status: int, message: str) -> Page:
    body = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Disco: GitHub App</title></head>"
            f"<body><h1>GitHub App</h1><p>{html.escape(message)}</p></body></html>")
    return Page(status, body, headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
                                       "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                                       "Content-Security-Policy": "default-src 'none'"})


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# -- what it is and what it reaches -----------------------------------------------------------

def summary(platform: Platform, user: User) -> dict:
    """The App and its installations; a deployer sees only repos of projects granted to them."""
    app = platform.store.github_app()
    if app is None:
        return {"app": None, "installations": []}
    visible = _visible_repos(platform, user)
    installations = [{"id": i["id"], "account": i["account"], "suspended": bool(i["suspended"]),
                      "repos": [r for r in i["repos"] if visible is None or r.lower() in visible]}
                     for i in platform.store.installations()]
    return {"app": {"id": app["app_id"], "slug": app["slug"], "name": app["name"], "owner": app["owner"],
                    "html_url": app["html_url"], "created_at": app["created_at"], "created_by": app["created_by"],
                    "install_url": f"{platform.settings.github_url.rstrip('/')}/apps/{app['slug']}/installations/new"},
            "installations": installations}


def reachable_repos(platform: Platform, user: User) -> list[dict]:
    """Every repo the App's installations can reach, asked of GitHub now (all pages)."""
    if platform.store.github_app() is None:
        raise Refused("this server has no GitHub App: disco github:app:create makes one", "not_found")
    visible = _visible_repos(platform, user)
    linked = {row["repo"].lower(): row["project"] for row in platform.store.all_github_links()}
    found = []
    for installation_id, repos in _ask_github(platform):
        for repo in repos:
            name = str(repo.get("full_name", ""))
            if visible is None or name.lower() in visible:
                found.append({"repo": name, "private": bool(repo.get("private")),
                              "default_branch": str(repo.get("default_branch", "")),
                              "installation": installation_id, "project": linked.get(name.lower())})
    return found


def _ask_github(platform: Platform) -> list[tuple[int, list[dict]]]:
    """Each installation's repos as GitHub lists them now (every page); what the store knew is
    brought up to date with it, so a delivery GitHub never made here is caught up."""
    app = platform.store.github_app()
    assert app is not None
    api = GitHubApi(platform.settings.github_api_url)
    listed, known = [], []
    try:
        for installation in api.installations(app["app_id"], app["pem"]):
            installation_id = installation.get("id")
            if not isinstance(installation_id, int):
                continue
            account = _login(installation.get("account"), "", 100)
            suspended = bool(installation.get("suspended_at"))
            repos = [] if suspended else api.installation_repositories(
                platform.github_tokens.token_for(installation_id, None))
            names = [str(r.get("full_name")) for r in repos if github.REPO_NAME.fullmatch(str(r.get("full_name")))]
            known.append((installation_id, account, suspended, names))
            listed.append((installation_id, repos))
    except GitHubError as err:
        raise Refused(f"GitHub did not list the App's repos: {err}", "conflict") from None
    platform.store.replace_installations(known)
    return listed


def _visible_repos(platform: Platform, user: User) -> set[str] | None:
    """None for an admin (everything); for a deployer, the repos linked to their projects."""
    if user.is_admin:
        return None
    granted = set(platform.store.grants_of(user.name))
    return {row["repo"].lower() for row in platform.store.all_github_links() if row["project"] in granted}


def remove(platform: Platform, user: str) -> list[str]:
    """Forget the App and what was linked through it (its secrets go from the store; the App
    itself stays on GitHub until deleted there). Returns the projects that lost their link."""
    app = platform.store.github_app()
    if app is None:
        raise Refused("this server has no GitHub App", "not_found")
    unlinked = platform.store.delete_github_app()
    platform.github_tokens.forget()
    platform.store.audit(user, "github:app:remove", app["slug"], ", ".join(unlinked) or "no project was linked")
    return unlinked


def create_project(platform: Platform, user: str, name: str, repo: str, branch: str = "main") -> tuple[dict, Ticket]:
    """A project linked to a repo the App can reach, deploying the branch's head now."""
    if not github.REPO_NAME.fullmatch(repo):
        raise Refused(f"repo must look like OWNER/NAME, got {repo[:100]!r}")
    if not github.BRANCH_NAME.fullmatch(branch):
        raise Refused(f"invalid branch name {branch[:100]!r}")
    check_project_name(name)  # before GitHub is asked anything
    app = platform.store.github_app()
    if app is None:
        raise Refused("this server has no GitHub App: disco github:app:create makes one", "conflict")
    installation = platform.store.installation_of_repo(repo)
    install_url = f"{platform.settings.github_url.rstrip('/')}/apps/{app['slug']}/installations/new"
    if installation is None:
        raise Refused(f"the GitHub App {app['slug']} cannot reach {repo}: install it on that repo at {install_url}",
                      "conflict")
    if installation["suspended"]:
        raise Refused(f"the GitHub App's installation on {installation['account']} is suspended", "conflict")
    row = projects.create_project(platform, user, name)  # refuses a name taken
    platform.store.set_github_link({
        "project": name, "repo": repo, "branch": branch,
        "clone_url": f"{platform.settings.github_url.rstrip('/')}/{repo}.git", "secret": "", "token": "",
        "deploy_key": "", "force_mirror": 0, "installation_id": installation["id"], "created_at": now(),
    })
    try:
        head = github.fetch_head(platform, name)
    except Refused:  # nothing half-made: the same command can be run again
        gitrepo.remove_repo(platform.repo_path(name))
        platform.store.delete_project(name)
        raise
    platform.store.audit(user, "github:link", name, f"{repo} {branch} through the GitHub App")
    ticket = platform.deployer.enqueue(name, head, branch, user, "github",
                                       prepare=lambda out: github.mirror(platform, name, head, out))
    return row, ticket


# -- the App's webhook --------------------------------------------------------------------------

def check_headers(platform: Platform, headers: dict[str, str]) -> dict | WebhookReply:
    """What can be refused before the body is read (see github.check_headers)."""
    app = platform.store.github_app()
    if app is None:
        return WebhookReply(404, {"error": {"code": "not_found", "message": "this server has no GitHub App"}})
    refused = github.check_delivery_headers(headers)
    return refused if refused is not None else app


def handle_delivery(platform: Platform, headers: dict[str, str], body: bytes) -> WebhookReply:
    """One delivery to the App, its signature already proven with the App's webhook secret.
    Recorded by its X-GitHub-Delivery before the answer, so a redelivery does nothing twice."""
    event, delivery = headers["x-github-event"], headers["x-github-delivery"]
    payload = github.parse_payload(body)
    if isinstance(payload, WebhookReply):
        return payload
    if not platform.store.record_delivery(delivery, "", event, "received"):
        return WebhookReply(200, {"duplicate": f"delivery {delivery} was already handled"})
    try:
        reply = _handle(platform, event, delivery, payload)
    except BaseException:
        platform.store.forget_delivery(delivery)  # not handled: a redelivery may try again
        raise
    platform.store.set_delivery_result(delivery, json.dumps(reply.body)[:300], None)
    return reply


def _handle(platform: Platform, event: str, delivery: str, payload: dict) -> WebhookReply:
    action = str(payload.get("action", ""))
    found = payload.get("installation")
    installation: dict = found if isinstance(found, dict) else {}
    installation_id = _installation_id(installation.get("id"))
    if event == "ping":
        return WebhookReply(200, {"ok": True, "message": "pong: the GitHub App reaches this server"})
    if event == "installation" and installation_id:
        return _installation(platform, action, installation_id, installation, payload)
    if event == "installation_repositories" and installation_id:
        added, removed = _repo_names(payload.get("repositories_added")), _repo_names(payload.get("repositories_removed"))
        platform.store.change_installation_repos(installation_id, added, removed)
        platform.github_tokens.forget(installation_id)
        return WebhookReply(200, {"installation": installation_id, "added": added, "removed": removed})
    if event == "github_app_authorization" and action == "revoked":
        sender = _login(payload.get("sender"), "someone", 60)
        platform.store.audit(f"github:{sender}", "github:app:authorization-revoked", "", "")
        return WebhookReply(200, {"recorded": f"{sender} revoked their authorization of the App"})
    if event == "push":
        return _push(platform, delivery, payload)
    return WebhookReply(202, {"ignored": f"event {event!r} ({action or 'no action'}) changes nothing here"})


def _installation(platform: Platform, action: str, installation_id: int, installation: dict,
                  payload: dict) -> WebhookReply:
    account = _login(installation.get("account"), "", 100)
    if action == "deleted":
        platform.store.delete_installation(installation_id)
    elif action in ("created", "new_permissions_accepted"):
        repos = _repo_names(payload.get("repositories")) if "repositories" in payload else None
        platform.store.set_installation(installation_id, account, False, repos)
    elif action in ("suspend", "unsuspend"):
        platform.store.set_installation(installation_id, account, action == "suspend")
    else:
        return WebhookReply(202, {"ignored": f"installation {action!r} changes nothing here"})
    platform.github_tokens.forget(installation_id)
    platform.store.audit(f"github:{account or 'unknown'}", f"github:installation:{action}", str(installation_id))
    return WebhookReply(200, {"installation": installation_id, "action": action})


def shown_link(platform: Platform, project: str) -> dict:
    """The project's GitHub link as whoever may read the project sees it (the API and the
    dashboard): the webhook form without its secret, whether a token is set (never the token),
    whether it goes through the App and what stops the App now, the deploy key's public half."""
    row = github._require_link(platform, project)
    form = github.webhook_form(platform, row)
    del form["secret"]
    return {**form, "token_set": bool(row["token"]), "through_app": bool(row["installation_id"]),
            "app_problem": access_problem(platform, row),
            "deploy_key": github.public_of(row["deploy_key"], project) if row["deploy_key"] else None}


def access_problem(platform: Platform, row: dict) -> str:
    """Why the App cannot fetch an App-linked project's repo now ("" when it can)."""
    if not row["installation_id"]:
        return ""
    reachable = platform.store.installation_of_repo(row["repo"])
    if reachable is None:
        return (f"the GitHub App cannot reach {row['repo']} any more (uninstalled, or the repo was removed from "
                "it); install it on the repo again")
    if reachable["suspended"]:
        return f"the GitHub App's installation on {reachable['account']} is suspended"
    return ""


def _push(platform: Platform, delivery: str, payload: dict) -> WebhookReply:
    """Deploy every project linked through the App to the pushed repo and branch."""
    problem = github.push_fields_problem(payload)
    repo = str((payload.get("repository") or {}).get("full_name", "")) if isinstance(payload.get("repository"),
                                                                                       dict) else ""
    if problem or not github.REPO_NAME.fullmatch(repo):
        return WebhookReply(400, {"error": {"code": "bad_request",
                                            "message": problem or "push payload: repository.full_name is missing"}})
    results = {}
    for row in platform.store.app_links_of_repo(repo):
        if f"refs/heads/{row['branch']}" != payload["ref"]:
            continue
        key = f"{delivery}/{row['project']}"  # one delivery can deploy several projects
        problem = access_problem(platform, row)
        if problem:
            reason = f"ignored: {problem}"
            platform.store.record_delivery(key, row["project"], "push", json.dumps({"ignored": reason}))
            results[row["project"]] = {"ignored": reason}
            continue
        results[row["project"]] = github.push(platform, row["project"], row, key, payload).body
    if not results:
        return WebhookReply(202, {"ignored": f"no project is linked through the App to {repo} {payload['ref']}"})
    return WebhookReply(202, {"projects": results})


def _installation_id(value: object) -> int:
    """An installation's id as GitHub gives it (a positive integer that SQLite can hold), else 0:
    a delivery naming no installation it could be."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID:
        return value
    return 0


def _login(account: object, default: str, limit: int) -> str:
    """The `login` of a payload's account object (sender, installation account), else `default`:
    a delivery may hold anything there, and a name is all that is kept of it."""
    login = account.get("login", default) if isinstance(account, dict) else default
    return str(login)[:limit]


def _repo_names(repos: object) -> list[str]:
    if not isinstance(repos, list):
        return []
    return [str(r["full_name"]) for r in repos
            if isinstance(r, dict) and isinstance(r.get("full_name"), str) and github.REPO_NAME.fullmatch(r["full_name"])]
