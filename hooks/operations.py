"""What users ask of a project's running app: deploy a ref, redeploy, roll back, env vars, scale,
cancel, logs and one-off commands. Every front door (the REST API, the CLI through it) calls
these; each checks its input, audits, and goes through the project's deploy queue.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from hooks import disks
from hooks.errors import DeployFailed, Refused
from hooks.platform import Platform
from hooks.ports import replicas_problem
from hooks.projects import require_project
from hooks.queue import Ticket
from runtime import gitrepo
from runtime.appconfig import SERVICE_NAME, AppConfigError, ServiceConfig, check_caps
from runtime.appsource import config_at, file_config_at
from runtime.docker_engine import DockerError, OneOffRun, ServiceUsage
from runtime.docker_specs import task_limits
from runtime.store import Deployment, DeploymentStatus

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
RESERVED_ENV = ("PORT",)


def server_state(platform: Platform) -> dict:
    """Docker's and the proxy's state, for the server's meta."""
    try:
        info = platform.engine.info()
    except DockerError as err:
        docker: dict[str, object] = {"reachable": False, "error": str(err)}
        root = ""
    else:
        docker = {"reachable": True, "version": info.version, "swarm": info.swarm}
        root = info.root_dir
    router = platform.router
    return {"docker": docker, "proxy": {"up": router.is_up, "error": router.proxy_error},
            "disk": disks.check(platform, root).as_json()}


def replicas(platform: Platform, project: str) -> dict[str, int]:
    """Replicas per service as swarm runs them now."""
    return {s.service: s.replicas for s in platform.engine.project_services(project)}  # by project label


def usage(platform: Platform, project: str) -> list[ServiceUsage]:
    """CPU and memory of each of the project's services now, by name, for the dashboard's
    picture: Docker's stats of those running on this node, and its other swarm services (scaled
    to 0, or with no task here) as using nothing. Blocks for up to about 2 s, Docker sampling
    once a second (see Engine.project_usage): keep it off a page's own answer. Raises
    DockerError when Docker does not answer."""
    require_project(platform, project)
    running = {u.service: u for u in platform.engine.project_usage(project)}
    idle = [ServiceUsage(s.service, containers=0, cpu_percent=None, cpu_seconds=0.0, cpus=0, memory_used=0,
                         memory_limit=0)
            for s in platform.engine.project_services(project) if s.service not in running]
    return sorted([*running.values(), *idle], key=lambda u: u.service)


def deploy_ref(platform: Platform, user: str, project: str, branch: str | None, commit: str | None) -> Ticket:
    """Deploy the head of a branch (default: the deploy branch) or a given commit."""
    row = require_project(platform, project)
    repo = platform.repo_path(project)
    if not repo.exists():
        raise Refused(f"{project} has no code yet: git push to it first", "conflict")
    branch = branch or row["deploy_branch"]
    if commit:
        if not re.fullmatch(r"[0-9a-f]{4,40}", commit):
            raise Refused(f"commit must be a hex commit id, got {commit[:60]!r}", "bad_request")
        sha = gitrepo.resolve_commit(repo, commit)
        if sha is None:
            raise Refused(f"no commit {commit} in {project}", "not_found")
    else:
        sha = gitrepo.branch_head(repo, branch)
        if sha is None:
            raise Refused(f"{project} has no branch {branch!r}", "not_found")
    try:
        check_caps(config_at(repo, sha), platform.settings.caps)
    except AppConfigError as err:
        raise Refused(f"{sha[:7]} cannot deploy: {err}", "invalid_config") from None
    return platform.deployer.enqueue(project, sha, branch, user, "api")


def logs(platform: Platform, project: str, service: str, tail: int, follow: bool) -> AsyncIterator[str]:
    """A service's lines: checked and found here (blocking, briefly), then read asynchronously,
    so a follower holds no thread; closing the iterator closes Docker's stream."""
    require_project(platform, project)
    running = platform.engine.project_service(project, check_service_name(service))
    if running is None:  # found by its labels: a service made before runtime/names.py has its old name
        raise Refused(f"{project} has no running service {service!r}", "not_found")
    return platform.engine.service_logs(running.name, tail, follow)


def run_command(platform: Platform, user: str, project: str, command: list[str], service: str = "web") -> OneOffRun:
    """Start a one-off container of the live image with the project's env and volumes.

    The caller reads its output, then its exit code, and removes it.
    """
    check_service_name(service)
    live = platform.store.live_deployment(project)
    if live is None:
        raise Refused(f"{project} has no live deployment to run a command in", "conflict")
    platform.store.audit(user, "run", project, f"{len(command)} argument(s)")  # commands may hold secrets
    chosen = _service_config(platform, live, service)
    try:
        image = live.image_of(chosen.image)
        if not image:
            raise Refused(f"{service} of {project} runs no image (a static site); name a service that does",
                          "bad_request")
        return platform.engine.run_oneoff(
            image=image,
            command=command,
            env={**platform.store.env(project), "DISCO_PROJECT": project, "DISCO_SERVICE": service,
                 "DISCO_DEPLOYMENT": str(live.number), "DISCO_COMMIT": live.commit_sha},
            mounts=[(platform.engine.volume_name(project, v.name), v.mount) for v in chosen.volumes],
            labels=platform.engine.labels(project=project, role="run"),
            limits=task_limits(chosen.limits, platform.settings),  # the service's own, like its tasks
        )
    except DockerError as err:
        raise DeployFailed(str(err)) from None


def _service_config(platform: Platform, live: Deployment, service: str) -> ServiceConfig:
    """The live commit's config of that service (its volumes, its limits); a bare one if it has none."""
    try:
        config = config_at(platform.repo_path(live.project), live.commit_sha)
    except (AppConfigError, gitrepo.GitRepoError) as err:
        raise Refused(f"the live commit {live.commit_sha[:7]} cannot be read: {err}", "invalid_config") from None
    return config.services.get(service) or ServiceConfig(service)


def redeploy(platform: Platform, project: str, user: str, source: str = "redeploy") -> Ticket:
    """Deploy the live commit again with the live image (after an env change, say)."""
    live = _require_live(platform, project)
    return platform.deployer.enqueue(project, live.commit_sha, live.branch, user, source, image=live.image,
                                     images=live.images)


def rollback(platform: Platform, project: str, user: str, number: int | None = None) -> Ticket:
    """Put a kept earlier deployment's image live again, without rebuilding."""
    live = _require_live(platform, project)
    candidates = [d for d in platform.store.list_deployments(project, limit=1000)
                  if d.status in (DeploymentStatus.REPLACED, DeploymentStatus.ROLLED_BACK) and d.number != live.number]
    if number is not None:
        candidates = [d for d in candidates if d.number == number]
        if not candidates:
            raise DeployFailed(f"deployment #{number} of {project} never ran or is the live one; "
                               "roll back to one that was live before", "not_found")
    kept = [d for d in candidates
            if all(platform.engine.image_exists(tag) for tag in (d.image, *d.image_tags.values()) if tag)]
    if not kept:
        raise DeployFailed(f"no earlier image of {project} is kept to roll back to", "conflict")
    target = kept[0]
    platform.store.audit(user, "rollback", project, f"to #{target.number}")
    return platform.deployer.enqueue(project, target.commit_sha, target.branch, user, "rollback",
                            image=target.image, images=target.images, rollback_of=target.number)


def set_env(platform: Platform, project: str, user: str, values: dict[str, str], deploy: bool = True) -> Ticket | None:
    """Store env vars (a quick store write), then redeploy the live commit with them if `deploy`."""
    for name in values:
        _check_env_name(name)
    with platform.store.transaction():  # one commit: the change and its audit record
        platform.store.set_env(project, values)
        platform.store.audit(user, "env:set", project, ", ".join(sorted(values)))  # names only, never values
    return redeploy_for_env(platform, project, user) if deploy else None


def unset_env(platform: Platform, project: str, user: str, names: list[str], deploy: bool = True) -> Ticket | None:
    current = platform.store.env(project)
    missing = [n for n in names if n not in current]
    if missing:
        raise DeployFailed(f"{project} has no env var {missing[0]}", "not_found")
    with platform.store.transaction():
        platform.store.unset_env(project, names)
        platform.store.audit(user, "env:unset", project, ", ".join(sorted(names)))
    return redeploy_for_env(platform, project, user) if deploy else None


def redeploy_for_env(platform: Platform, project: str, user: str) -> Ticket | None:
    """After an env change: the live commit again with the new env; None if nothing is live."""
    return redeploy(platform, project, user, "env") if platform.store.live_deployment(project) else None


def scale(platform: Platform, project: str, user: str, counts: dict[str, int]) -> bool:
    """Set replica counts: recorded at once, kept by later deploys, and given to swarm now, or
    right after the project's running deployment if one runs (True if it was now).

    Swarm is changed in the project's turn of the deploy queue, never during a deployment: one
    planned before the change would write the old count back, and a scale in its rollout made
    it wait out its health timeout and fail, or failed itself ("update out of sequence").
    """
    for service, replicas in counts.items():
        check_service_name(service)
        if not 0 <= replicas <= platform.settings.max_replicas:
            raise DeployFailed(f"replicas of {service} must be from 0 to {platform.settings.max_replicas} "
                               f"(this server's max_replicas), got {replicas}")
        if platform.engine.project_service(project, service) is None:
            raise DeployFailed(f"{project} has no running service {service!r}", "not_found")
    live = platform.store.live_deployment(project)
    for service, replicas in counts.items():
        if live is not None and (problem := replicas_problem(service, _service_config(platform, live, service),
                                                             replicas, project)):
            raise DeployFailed(problem, "conflict")
    with platform.store.transaction():
        for service, replicas in counts.items():
            platform.store.set_scale(project, service, replicas)
        platform.store.audit(user, "scale", project, ", ".join(f"{s}={n}" for s, n in sorted(counts.items())))
    return platform.deployer.queue.between(project, lambda: apply_scale(platform, project))


def apply_scale(platform: Platform, project: str) -> None:
    """Make swarm run the recorded replica counts. It reads the store when it runs, so a change
    that waited for a deployment applies the last count written, whichever call queued it."""
    recorded = platform.store.scale(project)
    for running in platform.engine.project_services(project):
        wanted = recorded.get(running.service)
        if wanted is not None and wanted != running.replicas:  # gone meanwhile: the next deploy has it
            platform.engine.scale(running.name, wanted)


def check_service_name(service: str) -> str:
    """A service name as disco.toml allows it; anything else (like `x/../other`) is refused."""
    if not SERVICE_NAME.fullmatch(service):
        raise DeployFailed(f"invalid service name {service[:40]!r}: a-z, 0-9 and '-', starting with a letter")
    return service


def _require_live(platform: Platform, project: str) -> Deployment:
    live = platform.store.live_deployment(project)
    if live is None:
        raise DeployFailed(f"{project} has no live deployment yet: push to deploy it first", "conflict")
    return live


def _check_env_name(name: str) -> None:
    if not ENV_NAME.fullmatch(name):
        raise DeployFailed(f"invalid env var name {name[:60]!r}: use letters, digits and '_', not starting with a digit")
    if name in RESERVED_ENV or name.startswith("DISCO_"):
        raise DeployFailed(f"{name} is set by Disco and cannot be changed")


REF = re.compile(r"(?!-)[A-Za-z0-9._/-]{1,200}")


def show_config(platform: Platform, project: str, ref: str | None) -> dict:
    """The configuration of a commit written as disco.toml, whichever file it came from (disco.toml,
    disco.json or none): the live commit's, else the deploy branch head's, or that of `ref` (a
    branch, a tag or a commit)."""
    from runtime import configtoml  # here: it needs tomlkit, which nothing else the daemon does loads

    row = require_project(platform, project)
    repo = platform.repo_path(project)
    if not repo.exists():
        raise Refused(f"{project} has no code yet: git push to it first", "conflict")
    if ref is not None:
        if not REF.fullmatch(ref) or ".." in ref:
            raise Refused(f"ref must be a branch, a tag or a commit id, got {ref[:60]!r}", "bad_request")
        sha = gitrepo.resolve_commit(repo, ref)
        if sha is None:
            raise Refused(f"{project} has no branch, tag or commit {ref!r}", "not_found")
    else:
        live = platform.store.live_deployment(project)
        sha = live.commit_sha if live else gitrepo.branch_head(repo, row["deploy_branch"])
        if sha is None:
            raise Refused(f"{project} has no deployment and no branch {row['deploy_branch']!r} yet", "not_found")
    try:
        config = file_config_at(repo, sha)
    except AppConfigError as err:
        raise Refused(f"{sha[:7]} cannot deploy: {err}", "invalid_config") from None
    header = {"disco.toml": f"disco.toml of {project} at {sha[:7]}",
              "disco.json": f"disco.toml for {project}, made from disco.json at {sha[:7]}: save it as disco.toml "
                            "and delete disco.json, the next deploy reads the same configuration",
              "": f"{project} has no disco.toml at {sha[:7]}: the defaults"}[config.source]
    procfile = gitrepo.read_file(repo, sha, config.procfile_path) is not None
    lines = (header, *(config.notes if config.source == "disco.toml" else ()),  # "disco.json ignored"
             *((f"the Procfile at {config.procfile_path} is read beside it",) if procfile else ()))
    return {"commit": sha, "source": config.source or None, "notes": list(config.notes), "procfile": procfile,
            "toml": configtoml.render_toml(config, lines)}
