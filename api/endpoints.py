"""Every endpoint of the REST API, grouped by capability. Each one is a thin layer over hooks/."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from api.auth import still_allowed
from api.context import Caller, Context
from api.serializers import api_key_json, session_json, ssh_key_json, user_json
from api.spec import (
    BOOLEAN,
    OBJECT,
    STRING,
    VERSION,
    ApiError,
    EndpointList,
    array,
    forbidden,
    integer,
    not_found,
    nullable,
    obj,
)
from api.streams import OpenStream, UserStreams
from hooks import apikeys, certificates, github, github_app, nodes, operations, projects, sessions, team
from hooks.policy import NAME_RULE, PROJECT_NAME, Access, authorize, check_project_name, visible_projects
from hooks.output import as_a_terminal_shows
from hooks.projects import deployment_json
from hooks.errors import Refused
from hooks.queue import Ticket
from runtime.docker_engine import DockerError, OneOffRun
from runtime.appconfig import SERVICE_NAME
from runtime.store import ACTIVE_STATUSES, CronRun, DeploymentStatus, Store, User
from runtime.swarm_nodes import SwarmNode

NAME = {"type": "string", "minLength": 1, "maxLength": 100}
PROJECT_NAME_SCHEMA = {"type": "string", "pattern": PROJECT_NAME.pattern, "description": NAME_RULE}
USER_NAME_SCHEMA = {"type": "string", "pattern": team.USER_NAME.pattern,
                    "description": "1 to 39 characters of a-z, 0-9, '.', '_' and '-', starting with a letter"}
ENDPOINTS = EndpointList(path_params={
    "project": PROJECT_NAME_SCHEMA,
    "number": integer(1),
    "id": integer(1),
    "service": {"type": "string", "pattern": SERVICE_NAME.pattern, "maxLength": 30,
                "description": "a service name: a-z, 0-9 and '-', starting with a letter"},
    "node": {"type": "string", "pattern": r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}",
             "description": "a swarm node's hostname or ID"},
})
endpoint = ENDPOINTS.declare
DEPLOYMENT = obj(None, number=integer(), project=STRING, commit=STRING, branch=STRING, user=STRING, source=STRING,
                 status=STRING, reason=STRING, image=STRING, rollback_of=nullable(integer()), timings=OBJECT,
                 created_at=STRING, finished_at=STRING)
QUEUED = obj(None, number=integer(), status=STRING, output=STRING)
USER = obj(None, name=STRING, role=STRING, projects=array(STRING), created_at=STRING)
SSH_KEY = obj(None, user=STRING, type=STRING, fingerprint=STRING, comment=STRING, added_at=STRING)
API_KEY = obj(None, id=integer(), user=STRING, label=STRING, prefix=STRING, created_at=STRING,
              last_used_at=STRING, expires_at=STRING, revoked_at=STRING)
PROJECT = {"type": "object", "properties": {"name": STRING, "created_at": STRING, "created_by": STRING,
                                            "deploy_branch": STRING}}
SSE = "text/event-stream"


def ok(data: object, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


def project_of(ctx: Context, access: Access = Access.READ) -> str:
    """The project named in the path, after checking the caller may read or change it."""
    name = check_project_name(ctx.param("project"))
    if not authorize(ctx.store, ctx.user, name, access):
        raise not_found(f"no project named {name!r}")
    return name


async def open_stream(ctx: Context, start: Callable[[], Awaitable[AsyncIterator[str]]], media_type: str,
                      headers: dict[str, str] | None = None,
                      cleanup: Callable[[], Awaitable[None]] | None = None, pool: str = "streams") -> Response:
    """A long response, counted against the caller's max_streams (a 429 beyond it) before any
    work is done, and given back the moment it ends, however it ends."""
    streams: UserStreams = getattr(ctx.request.app.state, pool)
    give_back = streams.take(ctx.user.name)
    try:
        content = await start()
    except BaseException:
        give_back()
        raise
    return OpenStream(content, give_back, media_type, headers, cleanup)


def queued(ticket: Ticket) -> JSONResponse:
    d = ticket.deployment
    return ok({"number": d.number, "status": d.status,
               "output": f"/api/v1/projects/{d.project}/deployments/{d.number}/output"}, 202)


# -- meta -----------------------------------------------------------------------------------

@endpoint("GET", "/meta", "Server version, ports, instance, Docker and swarm state, disk use (warnings above 90%)",
          tag="meta", responses={200: OBJECT})
async def meta(ctx: Context) -> Response:
    s = ctx.platform.settings
    state = await _server_state(ctx)
    return ok({"version": VERSION, "instance": s.instance, "apps_domain": s.apps_domain, "tls": s.tls,
               "ports": {"ssh": s.ssh_port, "api": s.api_port, "http": s.http_port, "https": s.https_port},
               **state, "user": {"name": ctx.user.name, "role": ctx.user.role}})


META_FRESH = 1.0  # seconds Docker's and the proxy's state is reused for


async def _server_state(ctx: Context) -> dict:
    """Docker's and the proxy's state, asked at most once a second: each ask is a Docker round
    trip (20 to 60 ms here), which no caller should be able to multiply."""
    app_state = ctx.request.app.state
    cached: tuple[float, dict] | None = getattr(app_state, "server_state", None)
    if cached is not None and time.monotonic() - cached[0] < META_FRESH:
        return cached[1]
    state = await run_in_threadpool(operations.server_state, ctx.platform)
    app_state.server_state = (time.monotonic(), state)
    return state


# -- projects -------------------------------------------------------------------------------

@endpoint("GET", "/projects", "List the projects you can see", tag="projects", responses={200: array(PROJECT)})
async def list_projects(ctx: Context) -> Response:
    visible = set(visible_projects(ctx.store, ctx.user))
    return ok([p for p in ctx.store.list_projects() if p["name"] in visible])


EVENTS_EVERY = 0.5  # seconds between looks at the store (one counter read when nothing changed)
EVENTS_KEEPALIVE = 15.0  # a comment this often, so proxies and browsers keep the stream open


@endpoint("GET", "/events", "The state of each project you can see, then every change of it, as it happens "
          "(Server-Sent Events `project`: status, newest and live deployment)", tag="projects",
          responses={200: SSE})
async def project_events(ctx: Context) -> Response:
    async def events() -> AsyncIterator[str]:
        return _project_events(ctx.store, ctx.caller)

    # A pool of their own: every open dashboard tab holds one, and they must not use up the
    # streams `disco logs --follow` and `disco run` need.
    return await open_stream(ctx, events, SSE, {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                             pool="event_streams")


async def _project_events(store: Store, caller: Caller) -> AsyncIterator[str]:
    sent: dict[str, dict] = {}
    seen_access, seen_projects, quiet_since = -1, -1, time.monotonic()
    user: User | None = caller.user
    while True:
        access, changed = store.version("access"), store.version("projects")
        if access != seen_access:  # a key revoked, a session ended, a grant taken: asked again
            user = still_allowed(store, caller)
            if user is None:
                yield f"event: end\ndata: {json.dumps({'reason': 'signed out, or the key was revoked'})}\n\n"
                return
        if (access, changed) != (seen_access, seen_projects):
            seen_access, seen_projects = access, changed
            assert user is not None
            for name in visible_projects(store, user):
                state = projects.glance_json(store, name)
                if sent.get(name) != state:
                    sent[name] = state
                    quiet_since = time.monotonic()
                    yield f"event: project\ndata: {json.dumps(state)}\n\n"
        if time.monotonic() - quiet_since > EVENTS_KEEPALIVE:
            quiet_since = time.monotonic()
            yield ": still here\n\n"
        await asyncio.sleep(EVENTS_EVERY)


@endpoint("POST", "/projects", "Create a project (admins); with github=OWNER/REPO, linked through the GitHub App "
          "and deploying the branch's head", tag="projects", admin_only=True,
          body=obj(["name"], name=PROJECT_NAME_SCHEMA, github={"type": "string", "pattern": github.REPO_NAME.pattern},
                   branch={"type": "string", "minLength": 1, "maxLength": 200}),
          responses={201: PROJECT})
async def create_project(ctx: Context) -> Response:
    if "github" not in ctx.body:
        return ok(projects.create_project(ctx.platform, ctx.user.name, ctx.body["name"]), 201)
    row, ticket = await run_in_threadpool(github_app.create_project, ctx.platform, ctx.user.name, ctx.body["name"],
                                          ctx.body["github"], ctx.body.get("branch", "main"))
    return ok({**row, "deployment": ticket.deployment.number}, 201)


@endpoint("GET", "/projects/{project}", "A project with its live deployment and domains", tag="projects",
          responses={200: PROJECT})
async def show_project(ctx: Context) -> Response:
    return ok(projects.describe(ctx.platform, project_of(ctx)))


@endpoint("GET", "/projects/{project}/placement", "Where each service of the project runs: running tasks per node, "
          "the nodes its volumes keep it to, and why it waits if it cannot run", tag="projects",
          responses={200: array(obj(None, service=STRING, running={"type": "object",
                                                                    "additionalProperties": integer()},
                                    kept_to=array(STRING), waiting=nullable(STRING)))})
async def show_placement(ctx: Context) -> Response:
    name = project_of(ctx)
    placements = await run_in_threadpool(projects.placements, ctx.platform, name)
    return ok([placement.as_json() for placement in placements])


@endpoint("GET", "/projects/{project}/config", "The app's configuration as disco.toml, whether the commit has a "
          "disco.toml or a disco.json: the live commit's, else the deploy branch head's, or that of ref",
          tag="projects", query={"ref": {"type": "string", "minLength": 1, "maxLength": 200}},
          responses={200: obj(None, commit=STRING, source=nullable(STRING), notes=array(STRING), procfile=BOOLEAN,
                              toml=STRING)})
async def show_config(ctx: Context) -> Response:
    name = project_of(ctx)
    return ok(await run_in_threadpool(operations.show_config, ctx.platform, name, ctx.query.get("ref")))


@endpoint("DELETE", "/projects/{project}", "Delete a project: services, images, repo (volumes with volumes=true)",
          tag="projects", admin_only=True, query={"volumes": BOOLEAN},
          responses={200: obj(None, removed=array(STRING))})
async def delete_project(ctx: Context) -> Response:
    name = project_of(ctx, Access.WRITE)
    removed = await run_in_threadpool(projects.delete_project, ctx.platform, ctx.user.name, name,
                                      ctx.query.get("volumes", False))
    return ok({"removed": removed})


# -- deployments ----------------------------------------------------------------------------

@endpoint("GET", "/projects/{project}/deployments", "Deployments, newest first", tag="deployments",
          query={"limit": integer(1, 1000)}, responses={200: array(DEPLOYMENT)})
async def list_deployments(ctx: Context) -> Response:
    name = project_of(ctx)
    return ok([deployment_json(d) for d in ctx.store.list_deployments(name, ctx.query.get("limit", 50))])


@endpoint("GET", "/projects/{project}/deployments/{number}", "One deployment", tag="deployments",
          responses={200: DEPLOYMENT})
async def show_deployment(ctx: Context) -> Response:
    name, number = project_of(ctx), ctx.number("number")
    found = ctx.store.get_deployment(name, number)
    if found is None:
        raise not_found(f"{name} has no deployment #{number}")
    return ok(deployment_json(found))


@endpoint("POST", "/projects/{project}/deployments", "Deploy a branch (default: the deploy branch) or a commit",
          tag="deployments", body=obj(None, branch={"type": "string", "minLength": 1, "maxLength": 200},
                                      commit={"type": "string", "minLength": 4, "maxLength": 40}),
          responses={202: QUEUED})
async def trigger_deployment(ctx: Context) -> Response:
    name = project_of(ctx, Access.WRITE)
    ticket = await run_in_threadpool(operations.deploy_ref, ctx.platform, ctx.user.name, name,
                                     ctx.body.get("branch"), ctx.body.get("commit"))
    return queued(ticket)


@endpoint("POST", "/projects/{project}/deployments/{number}/cancel", "Cancel a queued or running deployment",
          tag="deployments", responses={202: OBJECT})
async def cancel_deployment(ctx: Context) -> Response:
    name, number = project_of(ctx, Access.WRITE), ctx.number("number")
    ctx.platform.deployer.cancel(name, number, ctx.user.name)
    return ok({"number": number, "cancel": "requested"}, 202)


@endpoint("POST", "/projects/{project}/rollback", "Put a kept earlier deployment live again, without rebuilding",
          tag="deployments", body=obj(None, number=integer(1)), responses={202: QUEUED})
async def rollback(ctx: Context) -> Response:
    name = project_of(ctx, Access.WRITE)
    ticket = await run_in_threadpool(operations.rollback, ctx.platform, name, ctx.user.name, ctx.body.get("number"))
    return queued(ticket)


@endpoint("GET", "/projects/{project}/deployments/{number}/output",
          "Follow a deployment's output (Server-Sent Events; resume with Last-Event-ID)", tag="deployments",
          responses={200: SSE})
async def deployment_output(ctx: Context) -> Response:
    name, number = project_of(ctx), ctx.number("number")
    if ctx.store.get_deployment(name, number) is None:
        raise not_found(f"{name} has no deployment #{number}")
    start = _last_event_id(ctx)

    async def events() -> AsyncIterator[str]:
        return _output_events(ctx.store, name, number, start)

    return await open_stream(ctx, events, SSE, {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _last_event_id(ctx: Context) -> int:
    """The line a client that reconnects saw last (0: from the start)."""
    last = ctx.request.headers.get("last-event-id", "0")
    if last.isdecimal() and len(last) > 18:
        raise ApiError(400, "bad_request", "Last-Event-ID is larger than any line number")
    return int(last) if last.isdecimal() else 0


def _output_events(store: Store, project: str, number: int, after: int) -> AsyncIterator[str]:
    """Tail the deployment's log file: every line an event numbered by its line, then `end`."""

    def state() -> tuple[Path, dict | None]:
        deployment = store.get_deployment(project, number)
        if deployment is None:  # the project was deleted while someone followed it
            return Path(), {"status": "deleted", "reason": "project deleted", "number": number}
        finished = DeploymentStatus(deployment.status) not in ACTIVE_STATUSES
        final = {"status": deployment.status, "reason": deployment.reason, "number": number}
        return Path(deployment.log_path), final if finished else None

    return _log_events(state, after)


async def _log_events(state: Callable[[], tuple[Path, dict | None]], after: int) -> AsyncIterator[str]:
    """Tail a log file while `state` says it is not finished (its second item None): every line
    an event numbered by its line (lines up to `after` were sent before), then `end` with what
    `state` said at the end."""
    sent = 0
    pending = ""
    position = 0
    while True:
        log_path, final = state()
        chunk = _appended(log_path, position) if log_path != Path() else None
        if chunk is not None:
            position += len(chunk)
            pending += chunk.decode(errors="replace")
            *lines, pending = pending.split("\n")
            for line in lines:
                sent += 1
                if sent > after:
                    yield f"id: {sent}\nevent: line\ndata: {as_a_terminal_shows(line)}\n\n"
        if final is not None:
            if chunk is not None and len(chunk) == 8 << 20:
                continue  # more of the log to send before the end
            yield f"event: end\ndata: {json.dumps(final)}\n\n"
            return
        await asyncio.sleep(0.2)


def _appended(path: Path, position: int) -> bytes | None:
    """What was appended to a local log since `position` (None if it is not there yet).

    Read in the event loop on purpose: a few new lines of a local file take microseconds, and a
    worker thread per follower per tick is what would starve the API."""
    if not path.exists():
        return None
    with path.open("rb") as handle:
        handle.seek(position)
        return handle.read(8 << 20)


# -- env vars -------------------------------------------------------------------------------

@endpoint("GET", "/projects/{project}/env",
          "Env var names; values too (values=true) for whoever may deploy the project, audited", tag="env",
          query={"values": BOOLEAN}, responses={200: obj(None, names=array(STRING), values=OBJECT)})
async def list_env(ctx: Context) -> Response:
    # One rule, Heroku's: who may deploy a project (and so `disco run -- env` in it) may read
    # its values. Reading them is audited; the values never go to a log.
    name = project_of(ctx, Access.WRITE if ctx.query.get("values") else Access.READ)
    env = ctx.store.env(name)
    if ctx.query.get("values"):
        ctx.store.audit(ctx.user.name, "env:read-values", name)
        return ok({"names": sorted(env), "values": env})
    return ok({"names": sorted(env)})


ENV_VALUES = {"type": "object", "additionalProperties": {"type": "string", "maxLength": 65536},
              "minProperties": 1, "maxProperties": 200}


@endpoint("POST", "/projects/{project}/env", "Set env vars; redeploys the live commit unless deploy=false",
          tag="env", body=obj(["values"], values=ENV_VALUES, deploy=BOOLEAN),
          responses={200: obj(None, deployment=nullable(integer()))})
async def set_env(ctx: Context) -> Response:
    name = project_of(ctx, Access.WRITE)
    # The store write here, like every store-only change: one short commit. A worker thread for
    # it cost more than the write (the thread waited for the GIL while the loop served others).
    operations.set_env(ctx.platform, name, ctx.user.name, ctx.body["values"], deploy=False)
    return await _redeployed_for_env(ctx, name)


async def _redeployed_for_env(ctx: Context, name: str) -> Response:
    """The answer to an env change: the redeploy it started (in a thread: it writes a log and
    queues), unless deploy=false or nothing is live."""
    ticket = None
    if ctx.body.get("deploy", True):
        ticket = await run_in_threadpool(operations.redeploy_for_env, ctx.platform, name, ctx.user.name)
    return ok({"deployment": ticket.deployment.number if ticket else None})


@endpoint("POST", "/projects/{project}/env/unset", "Unset env vars; redeploys unless deploy=false", tag="env",
          body=obj(["names"], names={**array({"type": "string", "maxLength": 128}), "minItems": 1,
                                     "maxItems": 200}, deploy=BOOLEAN),
          responses={200: obj(None, deployment=nullable(integer()))})
async def unset_env(ctx: Context) -> Response:
    name = project_of(ctx, Access.WRITE)
    operations.unset_env(ctx.platform, name, ctx.user.name, ctx.body["names"], deploy=False)
    return await _redeployed_for_env(ctx, name)


# -- domains --------------------------------------------------------------------------------

CERTIFICATE = obj(None, state={"type": "string", "enum": ["issued", "pending", "failed", "none"]}, issuer=STRING,
                  expires_at=STRING, reason=STRING)


@endpoint("GET", "/projects/{project}/domains", "Domains routed to the project, each with its certificate's "
          "state (issued, pending, failed, none), issuer, expiry and reason", tag="domains",
          responses={200: array(obj(None, domain=STRING, certificate=CERTIFICATE))})
async def list_domains(ctx: Context) -> Response:
    statuses = await run_in_threadpool(certificates.domain_statuses, ctx.platform, project_of(ctx))
    return ok([{"domain": domain, "certificate": status.as_json()} for domain, status in statuses])


@endpoint("POST", "/projects/{project}/domains", "Route a domain to the project; warns when its DNS does not "
          "point at this server", tag="domains", body=obj(["domain"], domain={"type": "string", "maxLength": 253}),
          responses={201: obj(None, domain=STRING, project=STRING, warning=STRING)})
async def add_domain(ctx: Context) -> Response:
    name = project_of(ctx, Access.WRITE)
    domain = await run_in_threadpool(projects.add_domain, ctx.platform, ctx.user.name, name, ctx.body["domain"])
    warning = await run_in_threadpool(certificates.dns_warning, ctx.platform, domain)
    return ok({"domain": domain, "project": name, "warning": warning}, 201)


@endpoint("DELETE", "/projects/{project}/domains/{domain}", "Stop routing a domain to the project",
          tag="domains", responses={200: OBJECT})
async def remove_domain(ctx: Context) -> Response:
    name = project_of(ctx, Access.WRITE)
    await run_in_threadpool(projects.remove_domain, ctx.platform, ctx.user.name, name, ctx.param("domain"))
    return ok({"removed": ctx.param("domain")})


# -- scale ----------------------------------------------------------------------------------

@endpoint("GET", "/projects/{project}/scale", "Replica count of each service", tag="scale",
          responses={200: {"type": "object", "additionalProperties": integer()}})
async def get_scale(ctx: Context) -> Response:
    name = project_of(ctx)
    counts = await run_in_threadpool(operations.replicas, ctx.platform, name)
    return ok(counts)


@endpoint("POST", "/projects/{project}/scale", "Set replica counts, kept across deploys; while a deployment of "
          "the project runs, swarm gets them as soon as it ends", tag="scale",
          body={"type": "object", "additionalProperties": integer(0, 100), "minProperties": 1, "maxProperties": 50},
          responses={200: {"type": "object", "additionalProperties": integer()}})
async def set_scale(ctx: Context) -> Response:
    name = project_of(ctx, Access.WRITE)
    await run_in_threadpool(operations.scale, ctx.platform, name, ctx.user.name, ctx.body)
    # The counts asked for, even when swarm gets them only after the running deployment.
    return ok({**await run_in_threadpool(operations.replicas, ctx.platform, name), **ctx.body})


# -- logs and one-off commands ---------------------------------------------------------------

@endpoint("GET", "/projects/{project}/logs", "Recent log lines of a service; follow=true streams new ones",
          tag="logs", query={"service": {"type": "string", "maxLength": 30}, "tail": integer(0, 10000),
                             "follow": BOOLEAN}, responses={200: "text/plain"})
async def logs(ctx: Context) -> Response:
    name = project_of(ctx)

    async def lines() -> AsyncIterator[str]:
        found = await run_in_threadpool(operations.logs, ctx.platform, name, ctx.query.get("service", "web"),
                                        ctx.query.get("tail", 100), ctx.query.get("follow", False))
        return _with_newlines(found)

    return await open_stream(ctx, lines, "text/plain")


async def _with_newlines(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    async for line in lines:
        yield line + "\n"


@endpoint("POST", "/projects/{project}/run",
          "Run a one-off command in a new container of the live image (Server-Sent Events; last event: exit)",
          tag="run", body=obj(["command"], command={**array({"type": "string", "maxLength": 4096}), "minItems": 1,
                                                   "maxItems": 100},
                              service={"type": "string", "maxLength": 30}),
          responses={200: SSE})
async def run_command(ctx: Context) -> Response:
    name = project_of(ctx, Access.WRITE)
    started: list[OneOffRun] = []

    async def events() -> AsyncIterator[str]:
        run = await run_in_threadpool(operations.run_command, ctx.platform, ctx.user.name, name,
                                      ctx.body["command"], ctx.body.get("service", "web"))
        started.append(run)
        return _run_events(run)

    async def remove() -> None:
        # Run however the response ends (shielded), even if the client went before the first
        # line: the container, with the project's env and volumes, must not outlive the request.
        for run in started:
            await run_in_threadpool(run.remove)

    return await open_stream(ctx, events, SSE, {"Cache-Control": "no-cache"}, cleanup=remove)


async def _run_events(run: OneOffRun) -> AsyncIterator[str]:
    """The command's output as it comes (no thread waits on it), then its exit code; the
    container is gone before the response ends."""
    try:
        async for line in run.output():
            yield f"event: output\ndata: {line}\n\n"
        exit_code = await run_in_threadpool(run.exit_code)  # the output ended: the command has, too
        yield f"event: exit\ndata: {json.dumps({'exit_code': exit_code})}\n\n"
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(run.remove)


# -- scheduled services ------------------------------------------------------------------------

CRON_RUN = obj(None, id=integer(), service=STRING, status=STRING, trigger=STRING, user=STRING, due_at=STRING,
               started_at=STRING, finished_at=STRING, exit_code=nullable(integer()), reason=STRING,
               deployment=integer())


def cron_run_json(run: CronRun) -> dict:
    return {"id": run.id, "service": run.service, "status": run.status, "trigger": run.trigger, "user": run.user,
            "due_at": run.due_at, "started_at": run.started_at, "finished_at": run.finished_at,
            "exit_code": run.exit_code, "reason": run.reason, "deployment": run.deployment}


@endpoint("GET", "/projects/{project}/cron", "Scheduled services of the live deployment, with their next and last run",
          tag="cron", responses={200: array(obj(None, service=STRING, schedule=STRING, command=STRING,
                                                 next_at=STRING, last_run=nullable(CRON_RUN)))})
async def list_cron(ctx: Context) -> Response:
    name = project_of(ctx)
    listed = await run_in_threadpool(ctx.platform.scheduler.scheduled, name)
    return ok([{"service": s.service, "schedule": s.schedule, "command": s.command, "next_at": s.next_at,
                "last_run": cron_run_json(s.last_run) if s.last_run else None} for s in listed])


@endpoint("GET", "/projects/{project}/cron/{service}/runs", "Runs of a scheduled service, newest first",
          tag="cron", query={"limit": integer(1, 1000)}, responses={200: array(CRON_RUN)})
async def list_cron_runs(ctx: Context) -> Response:
    name = project_of(ctx)
    runs = ctx.platform.scheduler.runs(name, ctx.param("service"), ctx.query.get("limit", 50))
    return ok([cron_run_json(run) for run in runs])


@endpoint("POST", "/projects/{project}/cron/{service}/runs", "Run a scheduled service now, out of its schedule",
          tag="cron", responses={202: CRON_RUN})
async def run_cron_now(ctx: Context) -> Response:
    name = project_of(ctx, Access.WRITE)
    run = await run_in_threadpool(ctx.platform.scheduler.run_now, name, ctx.param("service"), ctx.user.name)
    return ok(cron_run_json(run), 202)


@endpoint("GET", "/projects/{project}/cron/{service}/runs/{id}/output",
          "Follow a scheduled run's output (Server-Sent Events; resume with Last-Event-ID)", tag="cron",
          responses={200: SSE})
async def cron_run_output(ctx: Context) -> Response:
    name, run_id = project_of(ctx), ctx.number("id")
    found = ctx.store.get_cron_run(run_id)
    if found is None or found.project != name or found.service != ctx.param("service"):
        raise not_found(f"{name} has no run #{run_id} of {ctx.param('service')}")
    store = ctx.store

    def state() -> tuple[Path, dict | None]:
        run = store.get_cron_run(run_id)
        if run is None:
            return Path(), {"status": "deleted", "reason": "project deleted", "id": run_id, "exit_code": None}
        final = {"status": run.status, "reason": run.reason, "id": run_id, "exit_code": run.exit_code}
        return Path(run.log_path) if run.log_path else Path(), final if run.status != "running" else None

    async def events() -> AsyncIterator[str]:
        return _log_events(state, _last_event_id(ctx))

    return await open_stream(ctx, events, SSE, {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- nodes of the swarm -----------------------------------------------------------------------

NODE = obj(None, id=STRING, name=STRING, address=STRING, role=STRING, availability=STRING, state=STRING,
           labels={"type": "object", "additionalProperties": STRING}, manager=nullable(STRING), leader=BOOLEAN,
           tasks=integer(), here=BOOLEAN, engine=STRING)
LABEL_KEY_SCHEMA = {"type": "string", "pattern": nodes.LABEL_KEY.pattern,
                    "description": "1 to 100 characters of letters, digits, '.', '_' and '-'"}


@endpoint("GET", "/nodes", "The swarm's nodes: name, address, role, availability, state, labels, and how many "
          "tasks of this server's apps run on each (this server's node first)", tag="nodes",
          responses={200: array(NODE)})
async def list_nodes(ctx: Context) -> Response:
    return ok([node.as_json() for node in await run_in_threadpool(nodes.listing, ctx.platform)])


@endpoint("POST", "/nodes/join", "The command that joins a new machine to the swarm as a worker, with the join "
          "token (admins; audited); refused while the manager is on a loopback address. The registry the new node "
          "pulls images from must answer first: the daemon's own is made the first time, unless --registry names "
          "one (registry_ca: its certificate, base64 DER, which the command has the new node trust)", tag="nodes",
          admin_only=True, responses={200: obj(None, command=STRING, manager=STRING, token=STRING, registry=STRING,
                                               registry_ca=STRING)})
async def join_node(ctx: Context) -> Response:
    made = await run_in_threadpool(nodes.join_command, ctx.platform, ctx.user.name)
    return ok({"command": made.command, "manager": made.manager, "token": made.token, "registry": made.registry,
               "registry_ca": made.registry_ca})


@endpoint("POST", "/nodes/{node}/labels", "Set and remove labels of a node (admins)", tag="nodes", admin_only=True,
          body={**obj(None, set={"type": "object", "additionalProperties": {"type": "string", "maxLength": 200},
                                 "maxProperties": 50},
                      remove={**array(LABEL_KEY_SCHEMA), "maxItems": 50}), "minProperties": 1},
          responses={200: NODE})
async def label_node(ctx: Context) -> Response:
    node = await run_in_threadpool(nodes.label, ctx.platform, ctx.user.name, ctx.param("node"),
                                   ctx.body.get("set", {}), ctx.body.get("remove", []))
    return ok(node.as_json())


@endpoint("DELETE", "/nodes/{node}", "Remove a node: drain it, wait until this server's tasks there run elsewhere "
          "(force=true: do not wait), then remove it from the swarm (admins). Server-Sent Events: `progress` lines, "
          "then `removed` (the node, and whether it was still up) or `error`", tag="nodes", admin_only=True,
          query={"force": BOOLEAN}, responses={200: SSE})
async def remove_node(ctx: Context) -> Response:
    force = bool(ctx.query.get("force", False))
    node = await run_in_threadpool(nodes.removable, ctx.platform, ctx.param("node"), force)  # 404/409 before any change
    user = ctx.user.name

    async def events() -> AsyncIterator[str]:
        return _removal_events(ctx, node, force, user)

    return await open_stream(ctx, events, SSE, {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _removal_events(ctx: Context, node: SwarmNode, force: bool, user: str) -> AsyncIterator[str]:
    """The removal runs in a worker thread (it waits on swarm); its progress lines come here
    through a queue as they are said. A client that goes stops the wait: the node stays drained."""
    loop = asyncio.get_running_loop()
    said: asyncio.Queue[str] = asyncio.Queue()
    gone = threading.Event()

    def progress(line: str) -> None:
        loop.call_soon_threadsafe(said.put_nowait, line)

    removal = asyncio.ensure_future(run_in_threadpool(nodes.remove, ctx.platform, user, node, force, progress,
                                                      gone.is_set))
    # Its outcome is read below, unless the client went first: then nobody else will.
    removal.add_done_callback(lambda done: done.cancelled() or done.exception())
    try:
        while not removal.done() or not said.empty():
            getting = asyncio.ensure_future(said.get())
            await asyncio.wait({getting, removal}, return_when=asyncio.FIRST_COMPLETED)
            if getting.done():
                yield f"event: progress\ndata: {getting.result()}\n\n"
            else:
                getting.cancel()
        try:
            removed = removal.result()
        except (Refused, DockerError) as err:
            yield f"event: error\ndata: {json.dumps({'message': str(err)})}\n\n"
            return
        yield f"event: removed\ndata: {json.dumps({'node': removed.node.as_json(), 'was_up': removed.was_up})}\n\n"
    finally:
        gone.set()  # the client went (or all is said): a wait still going ends at its next look


# -- users, SSH keys, API keys -----------------------------------------------------------------

@endpoint("GET", "/users", "Team members (admins)", tag="users", admin_only=True, responses={200: array(USER)})
async def list_users(ctx: Context) -> Response:
    return ok([user_json(ctx.store, u) for u in ctx.store.list_users()])


@endpoint("POST", "/users", "Add a team member (admins)", tag="users", admin_only=True,
          body=obj(["name", "role"], name=USER_NAME_SCHEMA, role={"type": "string", "enum": ["admin", "deployer"]}),
          responses={201: USER})
async def add_user(ctx: Context) -> Response:
    user = team.add_user(ctx.store, ctx.user.name, ctx.body["name"], ctx.body["role"])
    return ok(user_json(ctx.store, user), 201)


@endpoint("DELETE", "/users/{name}", "Remove a team member with their keys and grants (admins)", tag="users",
          admin_only=True, responses={200: OBJECT})
async def remove_user(ctx: Context) -> Response:
    team.remove_user(ctx.store, ctx.user.name, ctx.param("name"))
    return ok({"removed": ctx.param("name")})


@endpoint("POST", "/users/{name}/grants", "Let a deployer push to and read a project (admins)", tag="users",
          admin_only=True, body=obj(["project"], project=PROJECT_NAME_SCHEMA), responses={201: USER})
async def grant(ctx: Context) -> Response:
    team.grant(ctx.store, ctx.user.name, ctx.param("name"), ctx.body["project"])
    return ok(_user(ctx, ctx.param("name")), 201)


@endpoint("DELETE", "/users/{name}/grants/{project}", "Take a project grant away (admins)", tag="users",
          admin_only=True, responses={200: USER})
async def revoke(ctx: Context) -> Response:
    team.revoke(ctx.store, ctx.user.name, ctx.param("name"), ctx.param("project"))
    return ok(_user(ctx, ctx.param("name")))


def _user(ctx: Context, name: str) -> dict:
    user = ctx.store.get_user(name)
    if user is None:  # removed by someone else in between
        raise not_found(f"no user named {name!r}")
    return user_json(ctx.store, user)


def _owner(ctx: Context, requested: str | None) -> str:
    """Whose keys: your own, or anyone's for an admin."""
    if requested and requested != ctx.user.name:
        if not ctx.user.is_admin:
            raise forbidden("only admins may manage other users' keys")
        return requested
    return ctx.user.name


@endpoint("GET", "/ssh-keys", "SSH keys: your own; an admin may ask for a user's or all (all=true)", tag="keys",
          query={"user": STRING, "all": BOOLEAN}, responses={200: array(SSH_KEY)})
async def list_ssh_keys(ctx: Context) -> Response:
    if ctx.query.get("all"):
        if not ctx.user.is_admin:
            raise forbidden("only admins may list everyone's keys")
        return ok([ssh_key_json(k) for k in ctx.store.list_ssh_keys()])
    return ok([ssh_key_json(k) for k in ctx.store.list_ssh_keys(_owner(ctx, ctx.query.get("user")))])


@endpoint("POST", "/ssh-keys", "Register an SSH public key (yours, or any user's for an admin)", tag="keys",
          body=obj(["public_key"], public_key={"type": "string", "maxLength": 16384}, user=STRING),
          responses={201: SSH_KEY})
async def add_ssh_key(ctx: Context) -> Response:
    key = team.add_ssh_key(ctx.store, ctx.user.name, _owner(ctx, ctx.body.get("user")), ctx.body["public_key"])
    return ok(ssh_key_json(key), 201)


@endpoint("DELETE", "/ssh-keys", "Remove an SSH key by its fingerprint", tag="keys",
          query={"fingerprint": STRING}, responses={200: SSH_KEY})
async def remove_ssh_key(ctx: Context) -> Response:
    fingerprint = ctx.query.get("fingerprint", "")
    if not fingerprint:
        raise ApiError(400, "bad_request", "query parameter fingerprint is required")
    keys = {k.fingerprint: k for k in ctx.store.list_ssh_keys()}
    if fingerprint not in keys or (keys[fingerprint].user != ctx.user.name and not ctx.user.is_admin):
        raise not_found(f"no SSH key with fingerprint {fingerprint}")
    return ok(ssh_key_json(team.remove_ssh_key(ctx.store, ctx.user.name, fingerprint)))


@endpoint("GET", "/api-keys", "API keys (never their secrets): yours; an admin may ask for all (all=true)",
          tag="keys", query={"user": STRING, "all": BOOLEAN}, responses={200: array(API_KEY)})
async def list_api_keys(ctx: Context) -> Response:
    if ctx.query.get("all"):
        if not ctx.user.is_admin:
            raise forbidden("only admins may list everyone's keys")
        return ok([api_key_json(k) for k in ctx.store.list_api_keys()])
    return ok([api_key_json(k) for k in ctx.store.list_api_keys(_owner(ctx, ctx.query.get("user")))])


@endpoint("POST", "/api-keys", "Create an API key; its secret is in this response only", tag="keys",
          body=obj(["label"], label=NAME, expires_in_days=integer(1, 3650), user=STRING),
          responses={201: {**API_KEY, "properties": {**API_KEY["properties"], "key": STRING}}})
async def create_api_key(ctx: Context) -> Response:
    key, secret = apikeys.create(ctx.store, ctx.user.name, _owner(ctx, ctx.body.get("user")), ctx.body["label"],
                                 ctx.body.get("expires_in_days"))
    return ok({**api_key_json(key), "key": secret}, 201)


@endpoint("DELETE", "/api-keys/{id}", "Revoke an API key, with immediate effect", tag="keys",
          responses={200: API_KEY})
async def revoke_api_key(ctx: Context) -> Response:
    key_id = ctx.number("id")
    apikeys.revoke(ctx.store, ctx.user, key_id)
    key = ctx.store.get_api_key(key_id)
    if key is None:
        raise not_found(f"no API key {key_id}")
    return ok(api_key_json(key))


SESSION = obj(None, id=integer(), user=STRING, api_key_id=integer(), created_at=STRING, expires_at=STRING,
              last_seen_at=STRING, address=STRING, agent=STRING, current=BOOLEAN)


@endpoint("GET", "/sessions", "Dashboard sessions still live: yours; an admin may ask for all (all=true)",
          tag="keys", query={"all": BOOLEAN}, responses={200: array(SESSION)})
async def list_sessions(ctx: Context) -> Response:
    if ctx.query.get("all") and not ctx.user.is_admin:
        raise forbidden("only admins may list everyone's sessions")
    found = sessions.live_sessions(ctx.store, None if ctx.query.get("all") else ctx.user.name)
    current = ctx.caller.session.id if ctx.caller.session else None
    return ok([session_json(s, current) for s in found])


@endpoint("DELETE", "/sessions/{id}", "End a dashboard session (yours, or anyone's for an admin)", tag="keys",
          responses={200: SESSION})
async def end_session(ctx: Context) -> Response:
    ended = sessions.end(ctx.store, ctx.user, ctx.number("id"))
    return ok(session_json(ended, None))


@endpoint("POST", "/dashboard/links", "A one-time dashboard sign-in link for you (usable once, for 5 minutes)",
          tag="keys", responses={201: obj(None, url=STRING, expires_in=integer())})
async def dashboard_link(ctx: Context) -> Response:
    token = sessions.make_link(ctx.store, ctx.user, ctx.caller.key)
    # In the fragment: browsers never send it to a server, so the token stays out of every
    # access log and Referer; the page's script posts it and clears it from the address bar.
    return ok({"url": f"{_dashboard_base(ctx)}/sign-in/link#{token}", "expires_in": sessions.LINK_MINUTES * 60}, 201)


def _dashboard_base(ctx: Context) -> str:
    """Where the dashboard is for whoever asked: the server's own domain when it has one (served
    by Caddy, over HTTPS when on), else the address this request came to."""
    host = ctx.platform.router.api_host
    if host:
        return f"{'https' if ctx.platform.settings.tls else 'http'}://{host}"
    return str(ctx.request.base_url).rstrip("/")


@endpoint("GET", "/audit", "Who did what, newest first (admins); filtered by who (user), what was changed "
          "(target) and action: exactly, or a whole group named without ':' (apikeys = apikeys:create, ...)",
          tag="meta", admin_only=True,
          query={"limit": integer(1, 1000), "target": STRING, "user": STRING, "action": STRING},
          responses={200: array(OBJECT)})
async def audit_log(ctx: Context) -> Response:
    q = ctx.query
    return ok(ctx.store.audit_log(q.get("limit", 100), q.get("target"), user=q.get("user"), action=q.get("action")))


# -- GitHub -----------------------------------------------------------------------------------

WEBHOOK_FORM = obj(None, payload_url=STRING, content_type=STRING, secret=STRING, events=STRING, repo=STRING,
                   branch=STRING, clone_url=STRING, force_mirror=BOOLEAN)


@endpoint("POST", "/projects/{project}/github", "Link the project to a GitHub repo; returns the webhook form to fill",
          tag="github", body=obj(["repo"], repo={"type": "string", "pattern": github.REPO_NAME.pattern},
                                 branch={"type": "string", "minLength": 1, "maxLength": 200},
                                 clone_url={"type": "string", "maxLength": 500},
                                 token={"type": "string", "maxLength": 500}, force_mirror=BOOLEAN),
          responses={201: WEBHOOK_FORM})
async def github_link(ctx: Context) -> Response:
    name = project_of(ctx, Access.WRITE)
    b = ctx.body
    form = github.link(ctx.platform, ctx.user.name, name, b["repo"], b.get("branch", "main"), b.get("clone_url", ""),
                       b.get("token", ""), b.get("force_mirror", False))
    return ok(form, 201)


@endpoint("GET", "/projects/{project}/github", "The project's GitHub link (never its secret or token)",
          tag="github", responses={200: OBJECT})
async def github_show(ctx: Context) -> Response:
    return ok(await run_in_threadpool(github_app.shown_link, ctx.platform, project_of(ctx)))


# -- the GitHub App --------------------------------------------------------------------------

@endpoint("POST", "/github/app", "Start creating this server's GitHub App: a one-time link (10 minutes) for the "
          "admin's browser (admins)", tag="github", admin_only=True,
          body=obj(None, org={"type": "string", "maxLength": 39}), responses={201: obj(None, url=STRING,
                                                                                     expires_in=integer())})
async def github_app_create(ctx: Context) -> Response:
    body = ctx.body or {}
    return ok(await run_in_threadpool(github_app.start_creation, ctx.platform, ctx.user.name, body.get("org", "")),
              201)


@endpoint("GET", "/github/app", "The GitHub App, its installations and the repos they reach (a deployer sees the "
          "repos of their projects)", tag="github", responses={200: OBJECT})
async def github_app_show(ctx: Context) -> Response:
    return ok(await run_in_threadpool(github_app.summary, ctx.platform, ctx.user))


@endpoint("DELETE", "/github/app", "Forget the GitHub App and the links made through it (admins)", tag="github",
          admin_only=True, responses={200: obj(None, unlinked=array(STRING))})
async def github_app_remove(ctx: Context) -> Response:
    return ok({"unlinked": await run_in_threadpool(github_app.remove, ctx.platform, ctx.user.name)})


@endpoint("GET", "/github/repos", "The repos the GitHub App can reach, asked of GitHub (a deployer sees the repos of "
          "their projects)", tag="github",
          responses={200: array(obj(None, repo=STRING, private=BOOLEAN, default_branch=STRING, installation=integer(),
                                    project=nullable(STRING)))})
async def github_repos(ctx: Context) -> Response:
    return ok(await run_in_threadpool(github_app.reachable_repos, ctx.platform, ctx.user))


@endpoint("DELETE", "/projects/{project}/github", "Unlink the project from GitHub", tag="github",
          responses={200: OBJECT})
async def github_unlink(ctx: Context) -> Response:
    name = project_of(ctx, Access.WRITE)
    github.unlink(ctx.platform, ctx.user.name, name)
    return ok({"unlinked": name})


@endpoint("POST", "/projects/{project}/github/secret", "Rotate the webhook secret; returns the new form",
          tag="github", responses={200: WEBHOOK_FORM})
async def github_rotate(ctx: Context) -> Response:
    return ok(github.rotate_secret(ctx.platform, ctx.user.name, project_of(ctx, Access.WRITE)))


@endpoint("POST", "/projects/{project}/github/deploy-key",
          "The public half of the project's deploy key, for a private repo (made on first ask)", tag="github",
          responses={200: obj(None, public_key=STRING)})
async def github_deploy_key(ctx: Context) -> Response:
    return ok({"public_key": github.deploy_key(ctx.platform, ctx.user.name, project_of(ctx, Access.WRITE))})


@endpoint("GET", "/projects/{project}/github/deliveries", "Webhook deliveries received, newest first",
          tag="github", query={"limit": integer(1, 1000)}, responses={200: array(OBJECT)})
async def github_deliveries(ctx: Context) -> Response:
    name = project_of(ctx)
    return ok(ctx.store.deliveries(name, ctx.query.get("limit", 50)))
