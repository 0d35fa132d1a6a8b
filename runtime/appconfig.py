"""Reading a repo's optional `disco.toml` (see disco.toml.example).

Every error names the key and, where the file has one, its line, so a push can be refused
with a message that says exactly what to fix.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from collections.abc import Callable, Mapping
from typing import Any

from runtime.cron import CronError, parse_schedule
from runtime.procfile import Procfile, ProcfileError, parse_procfile

SERVICE_NAME = re.compile(r"[a-z][a-z0-9-]{0,29}")
IMAGE_NAME = SERVICE_NAME
VOLUME_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
PUBLISHED = re.compile(r"(\d{1,5}):(\d{1,5})(?:/(tcp|udp))?")
WEB = "web"
DEFAULT_IMAGE = "default"  # built from [build] (the root Dockerfile unless it says otherwise)
LOWEST_PUBLISHED_PORT = 1024  # below it are the system's ports (and 80/443, Caddy's)
DEFAULT_PORT = 8000
DEFAULT_HEALTH_TIMEOUT = 60
DEFAULT_RELEASE_TIMEOUT = 600  # Heroku's release phase may take an hour; ten minutes catches a hang
DEFAULT_CRON_TIMEOUT = 3600


class AppConfigError(ValueError):
    """disco.toml is malformed; the message says where and what."""


@dataclass(frozen=True)
class Volume:
    name: str
    mount: str


@dataclass(frozen=True)
class Limits:
    """What one task (or one-off container) of a service may use; None: the server's default."""

    memory: str | None = None  # as written, like "256M"; memory_bytes() reads it
    cpus: float | None = None
    pids: int | None = None


@dataclass(frozen=True)
class PublishedPort:
    """A port of the service's tasks published on the host (swarm's host mode)."""

    published: int  # on the host
    target: int  # in the task
    protocol: str = "tcp"  # or "udp"

    def __str__(self) -> str:
        return f"{self.published}:{self.target}/{self.protocol}"


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    port: int | None = None  # None: web takes the image's EXPOSEd port, else DEFAULT_PORT
    command: str | None = None
    replicas: int = 1
    health: str | None = None  # HTTP path; None: TCP connect to the port
    health_timeout: int = DEFAULT_HEALTH_TIMEOUT
    volumes: tuple[Volume, ...] = ()
    limits: Limits = Limits()
    shell: bool = False  # the command is a Procfile line, run by the image's shell (else split into words)
    schedule: str | None = None  # five-field cron (UTC): a scheduled service, runs one container per time
    timeout: int = DEFAULT_CRON_TIMEOUT  # seconds a scheduled run may take before it is stopped
    image: str = DEFAULT_IMAGE  # which of the app's images it runs
    # A static site: this folder is served by Caddy itself, no container runs. From the image
    # (a path in it, relative to its WORKDIR) or, with static_source "repo", from the commit.
    static: str | None = None
    static_source: str = "image"  # or "repo"
    health_command: str | None = None  # run inside the task (Docker's HEALTHCHECK CMD), split into words
    publish: tuple[PublishedPort, ...] = ()
    internal: bool = False  # reachable from other projects' containers as <project>-<service>
    oneoff: bool = False  # only for `disco run --service NAME` (disco.json's "command" type): never runs by itself

    @property
    def is_web(self) -> bool:
        return self.name == WEB

    @property
    def is_scheduled(self) -> bool:
        return self.schedule is not None

    @property
    def is_static(self) -> bool:
        return self.static is not None


@dataclass(frozen=True)
class ReleaseConfig:
    """The release command: run once per deployment, in the new image, before it starts."""

    command: str
    shell: bool = False  # from the Procfile: run by the image's shell
    timeout: int = DEFAULT_RELEASE_TIMEOUT


@dataclass(frozen=True)
class BuildConfig:
    """How one image is built: [build] for the default image, [images.NAME] for the others."""

    dockerfile: str = "Dockerfile"
    context: str = "."
    args: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AppConfig:
    build: BuildConfig = field(default_factory=BuildConfig)
    services: dict[str, ServiceConfig] = field(default_factory=lambda: {WEB: ServiceConfig(WEB)})
    release: ReleaseConfig | None = None
    declared: frozenset[str] = frozenset()  # the services disco.toml itself names (not the default web)
    images: dict[str, BuildConfig] = field(default_factory=dict)  # [images.NAME]: the images besides the default
    # Where it was read ("disco.toml", "disco.json"; "" for the default) and what the deployment
    # output should say about it (like "disco.json ignored"); not part of what the config means.
    source: str = field(default="", compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def running_services(self) -> dict[str, ServiceConfig]:
        """The services that run as swarm services (scheduled ones run only at their times, a
        static site runs no container, a one-off command only when asked)."""
        return {name: s for name, s in self.services.items() if not (s.is_scheduled or s.is_static or s.oneoff)}

    @property
    def static_site(self) -> ServiceConfig | None:
        """The web service when it is a static site served by Caddy."""
        web = self.services.get(WEB)
        return web if web is not None and web.is_static else None

    def image(self, name: str) -> BuildConfig:
        return self.build if name == DEFAULT_IMAGE else self.images[name]

    @property
    def images_to_build(self) -> dict[str, BuildConfig]:
        """Each image some service, the release command or a static site from an image needs,
        default first; an app whose only service is a static site from the repo builds none."""
        needed = {s.image for s in self.services.values() if not (s.is_static and s.static_source == "repo")}
        if self.release is not None:
            needed.add(DEFAULT_IMAGE)
        ordered = [DEFAULT_IMAGE, *sorted(self.images)]
        return {name: self.image(name) for name in ordered if name in needed}

    @property
    def scheduled_services(self) -> dict[str, ServiceConfig]:
        return {name: s for name, s in self.services.items() if s.is_scheduled}

    @property
    def procfile_path(self) -> str:
        """Where the Procfile is read: the build context's root, as Heroku and Dokku read it."""
        return str(PurePosixPath(self.build.context) / "Procfile")



TOP_KEYS = {"build", "services", "release", "images"}
BUILD_KEYS = {"dockerfile": str, "context": str, "args": dict}
RELEASE_KEYS = {"command": str, "timeout": int}
SERVICE_KEYS: dict[str, type | tuple[type, ...]] = {
    "port": int,
    "command": str,
    "replicas": int,
    "health": (str, dict),  # a URL path, or { command = "..." }
    "health_timeout": int,
    "volumes": list,
    "memory": str,
    "cpus": float,
    "pids": int,
    "schedule": str,
    "timeout": int,
    "image": str,
    "static": str,
    "static_source": str,
    "publish": list,
    "internal": bool,
    "oneoff": bool,
}
# What a scheduled service has no use for: it serves no traffic and runs one container per time.
NOT_FOR_SCHEDULED = ("port", "replicas", "health", "health_timeout", "publish", "internal")
# What a one-off service (run only by `disco run --service NAME`) has no use for.
NOT_FOR_ONEOFF = ("port", "replicas", "health", "health_timeout", "schedule", "timeout", "static", "static_source",
                  "publish", "internal")
# What a static site has no use for: Caddy serves its files, no container of it runs.
NOT_FOR_STATIC = ("port", "command", "replicas", "health", "health_timeout", "volumes", "memory", "cpus", "pids",
                  "schedule", "timeout", "publish", "internal")
MAX_TEXT = 256 << 10  # a disco.toml is a few lines; a huge one is a mistake or an attack
MEMORY = re.compile(r"(\d{1,12})\s*([kmg]?)(i?b)?", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def memory_bytes(text: str) -> int:
    """`256M`, `1G`, `512m`, `1GiB`, or a number of bytes; ValueError names the forms."""
    match = MEMORY.fullmatch(text.strip())
    if not match:
        raise ValueError(f"memory {text[:40]!r} must look like 256M or 1G")
    amount = int(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()]
    if amount < 6 << 20:  # Docker refuses less than 6 MiB
        raise ValueError(f"memory {text!r} is below Docker's minimum of 6M")
    return amount


@dataclass(frozen=True)
class Caps:
    """The most one project may ask for (the server's max_* settings)."""

    services: int
    replicas: int
    memory_bytes: int
    pids: int


def check_caps(config: AppConfig, caps: Caps) -> None:
    """Refuse a disco.toml that asks for more than this server allows one project."""
    if len(config.services) > caps.services:
        raise AppConfigError(f"the app defines {len(config.services)} services; this server allows "
                             f"{caps.services} per project")
    for service in config.services.values():
        path = f"services.{service.name}"
        if service.replicas > caps.replicas:
            raise AppConfigError(f"{path}.replicas is {service.replicas}; this server allows "
                                 f"{caps.replicas} per service")
        if service.limits.memory and memory_bytes(service.limits.memory) > caps.memory_bytes:
            raise AppConfigError(f"{path}.memory is {service.limits.memory}; this server allows "
                                 f"{caps.memory_bytes >> 20}M per task")
        if service.limits.pids and service.limits.pids > caps.pids:
            raise AppConfigError(f"{path}.pids is {service.limits.pids}; this server allows {caps.pids} per task")


def parse_app_config(text: str | None) -> AppConfig:
    """Parse disco.toml; None (no file) gives the default: one `web` service."""
    if text is None:
        return AppConfig()
    if len(text) > MAX_TEXT:
        raise AppConfigError(f"disco.toml is larger than {MAX_TEXT >> 10} KiB")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise AppConfigError(f"disco.toml is not valid TOML: {err}") from None
    except RecursionError:
        raise AppConfigError("disco.toml nests arrays or tables too deeply to read") from None
    where = _Locator(text)
    _reject_unknown(data, TOP_KEYS, "", where)
    build = _parse_build(data.get("build", {}), where)
    services_table = data.get("services")
    if services_table is None:
        services = {WEB: ServiceConfig(WEB)}
    else:
        _expect(services_table, dict, "services", where)
        if not services_table:
            raise AppConfigError("disco.toml: [services] is empty; define at least [services.web]")
        services = {name: _parse_service(name, table, where) for name, table in services_table.items()}
    release = _parse_release(data["release"], where) if "release" in data else None
    images = _parse_images(data.get("images", {}), where)
    config = AppConfig(build=build, services=services, release=release, declared=frozenset(services_table or ()),
                       images=images, source="disco.toml")
    check_app(config, where.at)
    return config


def check_app(config: AppConfig, at: Callable[[str, str], str] = lambda table, key: "") -> None:
    """What holds across services: the images they name exist, only web is a static site,
    no two services publish the same port. `at` says where a key is (disco.toml's line)."""
    published: dict[tuple[int, str], str] = {}
    for service in config.services.values():
        path = f"services.{service.name}"
        if service.image != DEFAULT_IMAGE and service.image not in config.images:
            known = ", ".join([DEFAULT_IMAGE, *sorted(config.images)])
            raise AppConfigError(f"{at(path, 'image')}{path}.image {service.image!r} is not an image of the app "
                                 f"(images: {known}; declare it as [images.{service.image}])")
        if service.is_static and not service.is_web:
            raise AppConfigError(f"{at(path, 'static')}{path}.static: only the web service can be a static site "
                                 "(it gets the project's domains)")
        for port in service.publish:
            other = published.setdefault((port.published, port.protocol), service.name)
            if other != service.name:
                raise AppConfigError(f"{at(path, 'publish')}{path}.publish: port {port.published}/{port.protocol} "
                                     f"is already published by services.{other}")


def with_procfile(config: AppConfig, text: str) -> AppConfig:
    """disco.toml's config with the Procfile's process types as services (each keeps the keys
    disco.toml sets for its name) and its `release` line as the release command.

    A command written in both places is refused: which one runs would be a guess.
    """
    try:
        procfile: Procfile = parse_procfile(text)
    except ProcfileError as err:
        raise AppConfigError(str(err)) from None
    services: dict[str, ServiceConfig] = {}
    for process in procfile.processes:
        where = f"Procfile line {process.line}"
        if not SERVICE_NAME.fullmatch(process.name):
            raise AppConfigError(f"{where}: process type {process.name!r} must be up to 30 characters of a-z, "
                                 "0-9 and '-', starting with a letter (it becomes a service name)")
        declared = config.services.get(process.name) if process.name in config.declared else None
        if declared is not None and declared.command is not None:
            raise AppConfigError(f"{where}: services.{process.name}.command is also set in "
                                 f"{config.source or 'disco.toml'}; keep the command in one of them")
        base = declared or ServiceConfig(process.name)
        services[process.name] = replace(base, command=process.command, shell=True)
    for name in sorted(config.declared - set(services)):
        services[name] = config.services[name]  # disco.toml may add services the Procfile lacks
    if not procfile.processes:  # only a release line: what runs is what would run without it
        services = dict(config.services)
    release = config.release
    if procfile.release is not None:
        if release is not None and release.command:
            said = "services.hook:deploy:start:before" if config.source == "disco.json" else "[release] command"
            raise AppConfigError(f"Procfile line {procfile.release.line}: {said} is also set in "
                                 f"{config.source or 'disco.toml'}; keep the release command in one of them")
        timeout = release.timeout if release is not None else DEFAULT_RELEASE_TIMEOUT
        release = ReleaseConfig(procfile.release.command, shell=True, timeout=timeout)
    elif release is not None and not release.command:
        raise AppConfigError("disco.toml: [release] has no command (and the Procfile has no release line)")
    return replace(config, services=services, release=release)


def _parse_release(table: Any, where: _Locator) -> ReleaseConfig:
    _check_table(table, RELEASE_KEYS, "release", where)
    timeout = table.get("timeout", DEFAULT_RELEASE_TIMEOUT)
    if not 1 <= timeout <= 86400:
        raise AppConfigError(f"{where.at('release', 'timeout')}release.timeout must be from 1 to 86400 seconds, "
                             f"got {timeout}")
    command = table.get("command", "")  # may come from the Procfile's release line instead
    if command:
        _check_words(command, "release", where)
    return ReleaseConfig(command=command, timeout=timeout)


def command_problem(command: str) -> str | None:
    """Why a command cannot run split into words (shlex, no shell), or None; disco.json's too."""
    try:
        words = shlex.split(command)
    except ValueError as err:
        return f"cannot be split into words: {err}"
    return None if words else "is empty"


def _check_words(command: str, path: str, where: _Locator) -> None:
    if problem := command_problem(command):
        raise AppConfigError(f"{where.at(path, 'command')}{path}.command {problem}")


def _parse_build(table: Any, where: _Locator, path: str = "build") -> BuildConfig:
    _check_table(table, BUILD_KEYS, path, where)
    args = table.get("args", {})
    for name, value in args.items():
        if not isinstance(value, (str, int, float, bool)):
            raise AppConfigError(f"{where.at(path + '.args', name)}{path}.args.{name} must be a string")
    context = table.get("context", ".")
    dockerfile = table.get("dockerfile", "Dockerfile")
    for key, value in (("context", context), ("dockerfile", dockerfile)):
        if not inside_repo(value):
            raise AppConfigError(
                f"{where.at(path, key)}{path}.{key} must be a relative path inside the repo, got {value!r}"
            )
    return BuildConfig(
        dockerfile=dockerfile,
        context=context,
        args={name: str(value).lower() if isinstance(value, bool) else str(value) for name, value in args.items()},
    )


def _parse_images(table: Any, where: _Locator) -> dict[str, BuildConfig]:
    _expect(table, dict, "images", where)
    images = {}
    for name, image in table.items():
        if name == DEFAULT_IMAGE:
            raise AppConfigError(f"{where.at('images', name)}[images.default] is the image [build] describes; "
                                 "set its dockerfile, context and args under [build]")
        if not IMAGE_NAME.fullmatch(name):
            raise AppConfigError(f"{where.at('images', name)}image name {name!r} is invalid: use up to 30 characters "
                                 "of a-z, 0-9 and '-', starting with a letter")
        images[name] = _parse_build(image, where, f"images.{name}")
    return images


def _parse_service(name: str, table: Any, where: _Locator) -> ServiceConfig:
    path = f"services.{name}"
    if not SERVICE_NAME.fullmatch(name):
        raise AppConfigError(
            f"{where.at('services', name)}service name {name!r} is invalid: use up to 30 characters "
            "of a-z, 0-9 and '-', starting with a letter"
        )
    _check_table(table, SERVICE_KEYS, path, where)
    port = table.get("port")
    if port is not None and not 1 <= port <= 65535:
        raise AppConfigError(f"{where.at(path, 'port')}{path}.port must be from 1 to 65535, got {port}")
    replicas = table.get("replicas", 1)
    if not 0 <= replicas <= 100:
        raise AppConfigError(f"{where.at(path, 'replicas')}{path}.replicas must be from 0 to 100, got {replicas}")
    health, health_command = _parse_health(table.get("health"), path, where)
    timeout = table.get("health_timeout", DEFAULT_HEALTH_TIMEOUT)
    if not 1 <= timeout <= 3600:
        raise AppConfigError(f"{where.at(path, 'health_timeout')}{path}.health_timeout must be from 1 to 3600 seconds")
    command = table.get("command")
    if command is not None:
        _check_words(command, path, where)
    oneoff = _parse_oneoff(name, table, path, where)
    schedule = _parse_schedule(name, table, path, where)
    static, static_source = _parse_static(table, path, where)
    return ServiceConfig(
        name=name,
        port=port,
        command=command,
        replicas=replicas,
        health=health,
        health_timeout=timeout,
        volumes=tuple(_parse_volume(item, path, where) for item in table.get("volumes", [])),
        limits=_parse_limits(table, path, where),
        schedule=schedule,
        timeout=table.get("timeout", DEFAULT_CRON_TIMEOUT),
        image=table.get("image", DEFAULT_IMAGE),
        static=static,
        static_source=static_source,
        health_command=health_command,
        publish=tuple(_parse_published(item, path, where) for item in table.get("publish", [])),
        internal=table.get("internal", False),
        oneoff=oneoff,
    )


def _parse_oneoff(name: str, table: dict, path: str, where: _Locator) -> bool:
    """`oneoff = true`: a service that never runs by itself, only with `disco run --service NAME`."""
    if not table.get("oneoff", False):
        return False
    if name == WEB:
        raise AppConfigError(f"{where.at(path, 'oneoff')}services.web gets the project's HTTP traffic and runs all "
                             "the time; give the one-off service another name")
    _refuse_keys(table, NOT_FOR_ONEOFF, path, where,
                 "a one-off service (it runs only when asked, with `disco run --service NAME`)")
    return True


def _parse_health(health: str | dict | None, path: str, where: _Locator) -> tuple[str | None, str | None]:
    """(HTTP path, command): `health = "/healthz"` or `health = { command = "pg_isready" }`."""
    if health is None:
        return None, None
    if isinstance(health, dict):
        _check_table(health, {"command": str}, f"{path}.health", where)
        if "command" not in health:
            raise AppConfigError(f"{where.at(path, 'health')}{path}.health needs a command, like "
                                 "health = {{ command = \"pg_isready\" }}")
        _check_words(health["command"], f"{path}.health", where)
        return None, health["command"]
    if not health.startswith("/") or any(c.isspace() for c in health):
        raise AppConfigError(f"{where.at(path, 'health')}{path}.health must be a URL path like '/healthz' "
                             f"or {{ command = \"...\" }}, got {health!r}")
    return health, None


def static_folder_problem(folder: str, from_repo: bool) -> str | None:
    """Why a static site's folder cannot be served, or None: a folder with no way up (`..`),
    relative to the repo root when it comes from the commit; disco.json's publicPath too."""
    parts = [part for part in PurePosixPath(folder).parts if part != "/"]
    if parts and ".." not in parts and "\0" not in folder and not (from_repo and folder.startswith("/")):
        return None
    return f"must be a folder like \"dist\" (no '..'{', relative to the repo root' if from_repo else ''})"


def inside_repo(path: str) -> bool:
    """A path relative to the repo root with no way up: a Dockerfile's, a build context's."""
    parts = PurePosixPath(path).parts
    return bool(path) and not path.startswith("/") and ".." not in parts


def _parse_static(table: dict, path: str, where: _Locator) -> tuple[str | None, str]:
    static = table.get("static")
    source = table.get("static_source", "image")
    if static is None:
        if "static_source" in table:
            raise AppConfigError(f"{where.at(path, 'static_source')}{path}.static_source needs static = \"folder\"")
        return None, source
    if source not in ("image", "repo"):
        raise AppConfigError(f"{where.at(path, 'static_source')}{path}.static_source must be \"image\" (the folder "
                             f"is copied out of the built image) or \"repo\" (from the pushed commit), got {source!r}")
    if problem := static_folder_problem(static, from_repo=source == "repo"):
        raise AppConfigError(f"{where.at(path, 'static')}{path}.static {problem}, got {static!r}")
    _refuse_keys(table, NOT_FOR_STATIC, path, where, "a static site (Caddy serves its files; no container of it runs)")
    return static, source


def _parse_published(item: Any, path: str, where: _Locator) -> PublishedPort:
    prefix = where.at(path, "publish")
    match = PUBLISHED.fullmatch(item) if isinstance(item, str) else None
    if match is None:
        raise AppConfigError(f"{prefix}{path}.publish entries look like \"5432:5432/tcp\" "
                             f"(host port:container port, /tcp or /udp), got {item!r}")
    published, target = int(match.group(1)), int(match.group(2))
    if not LOWEST_PUBLISHED_PORT <= published <= 65535:
        raise AppConfigError(f"{prefix}{path}.publish: host port {published} must be from "
                             f"{LOWEST_PUBLISHED_PORT} to 65535 (lower ports are the system's)")
    if not 1 <= target <= 65535:
        raise AppConfigError(f"{prefix}{path}.publish: container port {target} must be from 1 to 65535")
    return PublishedPort(published, target, match.group(3) or "tcp")


def _parse_schedule(name: str, table: dict, path: str, where: _Locator) -> str | None:
    """A scheduled service's cron schedule, checked; None for a service that runs all the time."""
    schedule = table.get("schedule")
    if schedule is None:
        if "timeout" in table:
            raise AppConfigError(f"{where.at(path, 'timeout')}{path}.timeout is for scheduled services "
                                 "(with a schedule); a running service has health_timeout")
        return None
    if name == WEB:
        raise AppConfigError(f"{where.at(path, 'schedule')}services.web serves the project's HTTP traffic and "
                             "cannot have a schedule; give the scheduled service another name")
    _refuse_keys(table, NOT_FOR_SCHEDULED, path, where,
                 "a scheduled service (it serves no traffic and runs one container at each time)")
    try:
        parse_schedule(schedule)
    except CronError as err:
        raise AppConfigError(f"{where.at(path, 'schedule')}{path}.schedule: {err}") from None
    timeout = table.get("timeout", DEFAULT_CRON_TIMEOUT)
    if not 1 <= timeout <= 86400:
        raise AppConfigError(f"{where.at(path, 'timeout')}{path}.timeout must be from 1 to 86400 seconds, got {timeout}")
    return schedule


def _parse_limits(table: dict, path: str, where: _Locator) -> Limits:
    memory = table.get("memory")
    if memory is not None:
        try:
            memory_bytes(memory)
        except ValueError as err:
            raise AppConfigError(f"{where.at(path, 'memory')}{path}.{err}") from None
    cpus = table.get("cpus")
    if cpus is not None and not 0.01 <= cpus <= 1024:
        raise AppConfigError(f"{where.at(path, 'cpus')}{path}.cpus must be from 0.01 to 1024, got {cpus}")
    pids = table.get("pids")
    if pids is not None and not 16 <= pids <= 1_000_000:
        raise AppConfigError(f"{where.at(path, 'pids')}{path}.pids must be from 16 to 1000000, got {pids}")
    return Limits(memory=memory, cpus=float(cpus) if cpus is not None else None, pids=pids)


def _parse_volume(item: Any, path: str, where: _Locator) -> Volume:
    prefix = where.at(path, "volumes")
    if not isinstance(item, str) or item.count(":") != 1:
        raise AppConfigError(f"{prefix}{path}.volumes entries look like \"name:/mount/path\", got {item!r}")
    name, mount = item.split(":")
    if not VOLUME_NAME.fullmatch(name):
        raise AppConfigError(f"{prefix}{path}.volumes: volume name {name!r} must be a-z, 0-9, '_', '.', '-'")
    if not mount.startswith("/") or ".." in PurePosixPath(mount).parts or mount == "/":
        raise AppConfigError(f"{prefix}{path}.volumes: mount path {mount!r} must be an absolute path below /")
    return Volume(name, mount)


def _check_table(table: Any, keys: Mapping[str, type | tuple[type, ...]], path: str, where: _Locator) -> None:
    """A table of known keys, each of its type; the first that is not is named."""
    _expect(table, dict, path, where)
    _reject_unknown(table, set(keys), path, where)
    for key, kind in keys.items():
        if key in table:
            _expect(table[key], kind, f"{path}.{key}", where)


def _refuse_keys(table: dict, keys: tuple[str, ...], path: str, where: _Locator, kind: str) -> None:
    """The first of `keys` the table sets, refused: it has no meaning for this kind of service."""
    for key in keys:
        if key in table:
            raise AppConfigError(f"{where.at(path, key)}{path}.{key} does not apply to {kind}")


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "a table", list: "an array",
               bool: "true or false"}


def _expect(value: Any, kind: type | tuple[type, ...], path: str, where: _Locator) -> None:
    # bool is an int in Python, but `port = true` is a mistake worth naming; a float key takes ints too.
    kinds = kind if isinstance(kind, tuple) else (kind,)
    allowed: tuple[type, ...] = tuple(t for k in kinds for t in ((int, float) if k is float else (k,)))
    numeric = any(k in (int, float) for k in kinds)
    if not isinstance(value, allowed) or (numeric and isinstance(value, bool)):
        parent, _, key = path.rpartition(".")
        wanted = " or ".join(_TYPE_NAMES[k] for k in kinds)
        raise AppConfigError(
            f"{where.at(parent, key)}{path} must be {wanted}, got {type(value).__name__} {value!r}"
        )


def _reject_unknown(table: dict, known: set[str], path: str, where: _Locator) -> None:
    for key in table:
        if key not in known:
            shown = f"{path}.{key}" if path else key
            raise AppConfigError(
                f"{where.at(path, key)}unknown key {shown!r}; known keys here: {', '.join(sorted(known))}"
            )


class _Locator:
    """Finds the line of a key for error messages (tomllib keeps no positions)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def at(self, table: str, key: str) -> str:
        line = self._find(table, key)
        return f"disco.toml line {line}: " if line else "disco.toml: "

    def _find(self, table: str, key: str) -> int | None:
        current = ""
        key_pattern = re.compile(rf"^\s*(\"{re.escape(key)}\"|{re.escape(key)})\s*[=.]")
        header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?")
        for number, line in enumerate(self.lines, start=1):
            match = header.match(line)
            if match:
                current = match.group(1).replace('"', "").replace(" ", "")
                if current == f"{table}.{key}".strip("."):
                    return number
                continue
            if current == table and key_pattern.match(line):
                return number
            # Dotted keys and inline tables at a parent level: `web.port = 1` under [services].
            if table.startswith(current) and line.strip().startswith(f"{table[len(current):].strip('.')}.{key}"):
                return number
        return None
