"""Reading a repo's optional `disco.toml` (see disco.toml.example).

Every error names the key and, where the file has one, its line, so a push can be refused
with a message that says exactly what to fix.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from collections.abc import Mapping
from typing import Any

from runtime import gitrepo
from runtime.cron import CronError, parse_schedule
from runtime.procfile import Procfile, ProcfileError, parse_procfile

SERVICE_NAME = re.compile(r"[a-z][a-z0-9-]{0,29}")
VOLUME_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
WEB = "web"
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

    @property
    def is_web(self) -> bool:
        return self.name == WEB

    @property
    def is_scheduled(self) -> bool:
        return self.schedule is not None


@dataclass(frozen=True)
class ReleaseConfig:
    """The release command: run once per deployment, in the new image, before it starts."""

    command: str
    shell: bool = False  # from the Procfile: run by the image's shell
    timeout: int = DEFAULT_RELEASE_TIMEOUT


@dataclass(frozen=True)
class BuildConfig:
    dockerfile: str = "Dockerfile"
    context: str = "."
    args: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AppConfig:
    build: BuildConfig = field(default_factory=BuildConfig)
    services: dict[str, ServiceConfig] = field(default_factory=lambda: {WEB: ServiceConfig(WEB)})
    release: ReleaseConfig | None = None
    declared: frozenset[str] = frozenset()  # the services disco.toml itself names (not the default web)

    @property
    def running_services(self) -> dict[str, ServiceConfig]:
        """The services that run as swarm services (scheduled ones run only at their times)."""
        return {name: s for name, s in self.services.items() if not s.is_scheduled}

    @property
    def scheduled_services(self) -> dict[str, ServiceConfig]:
        return {name: s for name, s in self.services.items() if s.is_scheduled}

    @property
    def procfile_path(self) -> str:
        """Where the Procfile is read: the build context's root, as Heroku and Dokku read it."""
        return str(PurePosixPath(self.build.context) / "Procfile")

    @property
    def dockerfile_path(self) -> str:
        """The Dockerfile's path from the repo root (as docs/architecture.md has it, not from context)."""
        return str(PurePosixPath(self.build.dockerfile))


TOP_KEYS = {"build", "services", "release"}
BUILD_KEYS = {"dockerfile": str, "context": str, "args": dict}
RELEASE_KEYS = {"command": str, "timeout": int}
SERVICE_KEYS = {
    "port": int,
    "command": str,
    "replicas": int,
    "health": str,
    "health_timeout": int,
    "volumes": list,
    "memory": str,
    "cpus": float,
    "pids": int,
    "schedule": str,
    "timeout": int,
}
# What a scheduled service has no use for: it serves no traffic and runs one container per time.
NOT_FOR_SCHEDULED = ("port", "replicas", "health", "health_timeout")
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


def config_at(repo: Path, sha: str) -> AppConfig:
    """The app's configuration at that commit of a bare repo: its disco.toml and its Procfile,
    merged (the default, one `web` service, when it has neither)."""
    config = parse_app_config(_text_at(repo, sha, "disco.toml"))
    procfile = _text_at(repo, sha, config.procfile_path)
    if procfile is not None:
        return with_procfile(config, procfile)
    if config.release is not None and not config.release.command:
        raise AppConfigError("disco.toml: [release] has no command (and there is no Procfile with a release line)")
    return config


def _text_at(repo: Path, sha: str, path: str) -> str | None:
    raw = gitrepo.read_file(repo, sha, path)
    try:
        return raw.decode() if raw is not None else None
    except UnicodeDecodeError:
        raise AppConfigError(f"{path} is not UTF-8 text") from None


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
    return AppConfig(build=build, services=services, release=release, declared=frozenset(services_table or ()))


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
            raise AppConfigError(f"{where}: services.{process.name}.command is also set in disco.toml; "
                                 "keep the command in one of them")
        base = declared or ServiceConfig(process.name)
        services[process.name] = replace(base, command=process.command, shell=True)
    for name in sorted(config.declared - set(services)):
        services[name] = config.services[name]  # disco.toml may add services the Procfile lacks
    if not procfile.processes:  # only a release line: what runs is what would run without it
        services = dict(config.services)
    release = config.release
    if procfile.release is not None:
        if release is not None and release.command:
            raise AppConfigError(f"Procfile line {procfile.release.line}: [release] command is also set in "
                                 "disco.toml; keep the release command in one of them")
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


def _check_words(command: str, path: str, where: _Locator) -> None:
    try:
        words = shlex.split(command)
    except ValueError as err:
        raise AppConfigError(f"{where.at(path, 'command')}{path}.command cannot be split into words: {err}") from None
    if not words:
        raise AppConfigError(f"{where.at(path, 'command')}{path}.command is empty")


def _parse_build(table: Any, where: _Locator) -> BuildConfig:
    _check_table(table, BUILD_KEYS, "build", where)
    args = table.get("args", {})
    for name, value in args.items():
        if not isinstance(value, (str, int, float, bool)):
            raise AppConfigError(f"{where.at('build.args', name)}build.args.{name} must be a string")
    context = table.get("context", ".")
    dockerfile = table.get("dockerfile", "Dockerfile")
    for key, value in (("context", context), ("dockerfile", dockerfile)):
        if not _stays_inside_repo(value):
            raise AppConfigError(
                f"{where.at('build', key)}build.{key} must be a relative path inside the repo, got {value!r}"
            )
    return BuildConfig(
        dockerfile=dockerfile,
        context=context,
        args={name: str(value).lower() if isinstance(value, bool) else str(value) for name, value in args.items()},
    )


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
    health = table.get("health")
    if health is not None and (not health.startswith("/") or any(c.isspace() for c in health)):
        raise AppConfigError(f"{where.at(path, 'health')}{path}.health must be a URL path like '/healthz', got {health!r}")
    timeout = table.get("health_timeout", DEFAULT_HEALTH_TIMEOUT)
    if not 1 <= timeout <= 3600:
        raise AppConfigError(f"{where.at(path, 'health_timeout')}{path}.health_timeout must be from 1 to 3600 seconds")
    command = table.get("command")
    if command is not None:
        _check_words(command, path, where)
    schedule = _parse_schedule(name, table, path, where)
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
    )


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
    for key in NOT_FOR_SCHEDULED:
        if key in table:
            raise AppConfigError(f"{where.at(path, key)}{path}.{key} does not apply to a scheduled service "
                                 "(it serves no traffic and runs one container at each time)")
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


def _check_table(table: Any, keys: Mapping[str, type], path: str, where: _Locator) -> None:
    """A table of known keys, each of its type; the first that is not is named."""
    _expect(table, dict, path, where)
    _reject_unknown(table, set(keys), path, where)
    for key, kind in keys.items():
        if key in table:
            _expect(table[key], kind, f"{path}.{key}", where)


def _stays_inside_repo(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return bool(path) and not path.startswith("/") and ".." not in parts


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "a table", list: "an array"}


def _expect(value: Any, kind: type, path: str, where: _Locator) -> None:
    # bool is an int in Python, but `port = true` is a mistake worth naming; a float key takes ints too.
    allowed: tuple[type, ...] = (int, float) if kind is float else (kind,)
    if not isinstance(value, allowed) or (kind in (int, float) and isinstance(value, bool)):
        parent, _, key = path.rpartition(".")
        raise AppConfigError(
            f"{where.at(parent, key)}{path} must be {_TYPE_NAMES[kind]}, got {type(value).__name__} {value!r}"
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
