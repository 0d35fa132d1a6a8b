"""Reading a repo's `disco.json`, the file of the system Disco is modelled on, into our own model.

Read with the rigour of disco.toml: every error names the key's path in the file (like
`services.web.publishedPorts[0].publishedAs`), an unknown key is refused, and so is a key Disco
has that this server cannot honour, saying so: nothing in the file is silently ignored. Where
the file leaves a value out, Disco's default is taken (port 8000 for web, a timeout of 300 s for
a cron run or the deploy hook), so a repo made for Disco behaves as it did there.

| disco.json | our model |
| --- | --- |
| `images.default` / `images.NAME` | `[build]` / `[images.NAME]` |
| `type: "container"` (default) | a running service (`command`, `port`, `volumes`, `image`) |
| `type: "static"`, `publicPath` | web as a static site served from the repo's folder (`static_source = "repo"`) |
| `type: "generator"`, `publicPath` | web as a static site copied out of the built image |
| `type: "command"` | a one-off service, only for `disco run --service NAME` (`oneoff = true`) |
| `type: "cron"`, `schedule`, `timeout` | a scheduled service |
| `health.command`, `publishedPorts`, `exposedInternally` | `health = { command }`, `publish`, `internal` |
| service `hook:deploy:start:before` | `[release]` (command, timeout) |
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

from runtime.appconfig import (
    DEFAULT_IMAGE,
    IMAGE_NAME,
    LOWEST_PUBLISHED_PORT,
    MAX_TEXT,
    SERVICE_NAME,
    VOLUME_NAME,
    WEB,
    AppConfig,
    AppConfigError,
    BuildConfig,
    PublishedPort,
    ReleaseConfig,
    ServiceConfig,
    Volume,
    check_app,
    command_problem,
    inside_repo,
    static_folder_problem,
)
from runtime.cron import CronError, parse_schedule

FILE = "disco.json"
VERSIONS = ("1", "1.0")
DISCO_WEB_PORT = 8000  # Disco routes to 8000 unless the file says otherwise, whatever the image EXPOSEs
DISCO_TIMEOUT = 300  # Disco's default timeout of a cron run and of the deploy hook
DISCO_SCHEDULE = "* * * * *"  # Disco's default schedule of a cron service: every minute
DEFAULT_PUBLIC_PATH = "dist"
RELEASE_HOOK = "hook:deploy:start:before"  # Disco runs it before the new version starts: our release command
MAX_DIGITS = 18  # an integer of more digits is no port or timeout; int() of a huge one is slow
TYPES = ("container", "static", "generator", "command", "cron")
TOP_KEYS = ("version", "services", "images")
IMAGE_KEYS = ("dockerfile", "context")
# The keys each type of service may have; any other key of SERVICE_KEYS does not apply to it.
KEYS_OF_TYPE = {
    "container": ("type", "port", "command", "image", "volumes", "publishedPorts", "exposedInternally", "health"),
    "static": ("type", "publicPath"),
    "generator": ("type", "publicPath", "image"),
    "command": ("type", "command", "image", "volumes"),
    "cron": ("type", "command", "image", "volumes", "schedule", "timeout"),
}
SERVICE_KEYS = ("type", "port", "command", "image", "volumes", "schedule", "publicPath", "publishedPorts",
                "exposedInternally", "health", "timeout")
WHY_NOT = {
    "container": "it runs all the time (schedule and timeout are for type cron, publicPath for static and generator)",
    "static": "Caddy serves the repo's folder publicPath; no image is built and no container runs",
    "generator": "the folder publicPath is copied out of the built image and served by Caddy; no container runs",
    "command": "it runs only when asked, with `disco run --service NAME`, until it exits",
    "cron": "it runs one container at each time of its schedule and serves no traffic",
}
# Keys Disco has that this server cannot honour: refused with the reason, never ignored.
UNSUPPORTED = {
    "extraSwarmParams": "this server makes its swarm services itself and passes no extra `docker service create` "
                        "flags; limits are memory, cpus and pids in disco.toml",
    "build": "the build command of Disco's image-less services is not supported: build the app in a Dockerfile "
             "(images.default) and give the service a command",
}
UNSUPPORTED_TYPES = {
    "cgi": "run the app as a container service that listens on its port (Disco's cgi starts a program per "
           "request)",
}
HOOK_AFTER = "hook:deploy:start:after"
UNSUPPORTED_SERVICES = {
    HOOK_AFTER: "the hook after the new version starts is not supported (the release command, "
                f"{RELEASE_HOOK}, runs before it starts)",
}


def parse_disco_json(text: str) -> AppConfig:
    """disco.json's text as our model; AppConfigError names the key path and what is wrong."""
    if len(text) > MAX_TEXT:
        raise AppConfigError(f"{FILE} is larger than {MAX_TEXT >> 10} KiB")
    try:
        data = json.loads(text, object_pairs_hook=_Object.of, parse_constant=_no_constant, parse_int=_integer,
                          parse_float=_number)
    except json.JSONDecodeError as err:
        raise AppConfigError(f"{FILE} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    except RecursionError:
        raise AppConfigError(f"{FILE} nests arrays or objects too deeply to read") from None
    if not isinstance(data, dict):
        raise AppConfigError(f'{FILE} must be a JSON object like {{"version": "1.0", "services": {{"web": {{}}}}}}, '
                             f"got {_kind(data)}")
    top = _object(data, "", TOP_KEYS)
    _version(top)
    build, images = _images(top.get("images", _Object()))
    if "services" not in top:
        raise AppConfigError(f'{FILE}: "services" is missing; Disco would deploy nothing. '
                             'Add "services": {"web": {}} for one web service built from the root Dockerfile')
    services_table = _object(top["services"], "services", None)
    if not services_table:
        raise AppConfigError(f'{FILE}: "services" is empty; Disco would deploy nothing. '
                             'Add "web": {} for one web service built from the root Dockerfile')
    services: dict[str, ServiceConfig] = {}
    for name, raw in services_table.items():
        if name in UNSUPPORTED_SERVICES:
            raise AppConfigError(f"{FILE}: services.{name} is not supported here: {UNSUPPORTED_SERVICES[name]}")
        if name != RELEASE_HOOK:
            services[name] = _service(name, raw)
    release = _release(services_table[RELEASE_HOOK], services.get(WEB)) if RELEASE_HOOK in services_table else None
    if not services:
        raise AppConfigError(f"{FILE}: services holds only {RELEASE_HOOK}; add the services it deploys, "
                             'like "web": {}')
    _check_across(services, images)
    config = AppConfig(build=build, services=services, release=release, declared=frozenset(services), images=images,
                       source=FILE)
    check_app(config)  # what disco.toml's reader checks across services too; the checks above name disco.json's keys
    return config


# -- JSON, strictly ----------------------------------------------------------------------------

class _Object(dict):
    """A JSON object that remembers a key it saw twice (json keeps the last one silently)."""

    twice: str | None = None

    @classmethod
    def of(cls, pairs: list[tuple[str, Any]]) -> _Object:
        made = cls()
        for key, value in pairs:
            if key in made and made.twice is None:
                made.twice = key
            made[key] = value
        return made


def _no_constant(name: str) -> Any:
    raise AppConfigError(f"{FILE}: {name} is not a number JSON allows")


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise AppConfigError(f"{FILE}: the number {text[:24]}... is too large for any key of {FILE}")
    return int(text)


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise AppConfigError(f"{FILE}: the number {text[:24]} is too large for any key of {FILE}")
    return value


_JSON_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
               list: "an array", type(None): "null"}


def _kind(value: Any) -> str:
    for kind, said in _JSON_KINDS.items():
        if type(value) is kind or (kind is dict and isinstance(value, dict)):
            return said
    return type(value).__name__


def _shown(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _object(value: Any, path: str, known: tuple[str, ...] | None) -> dict[str, Any]:
    """An object whose keys are all known (None: any key); a key seen twice is named."""
    if not isinstance(value, dict):
        raise AppConfigError(f"{FILE}: {path} must be an object, got {_got(value)}")
    if isinstance(value, _Object) and value.twice is not None:
        raise AppConfigError(f"{FILE}: key {value.twice!r} appears twice in {path or 'the top object'}; keep one")
    if known is not None:
        for key in value:
            if key not in known:
                raise AppConfigError(f"{FILE}: unknown key {_shown(path, key)!r}; known keys here: "
                                     f"{', '.join(known)}")
    return value


def _get(table: dict[str, Any], key: str, kind: type, path: str, default: Any = None) -> Any:
    """table[key] of that JSON kind (true is no integer here), default when it is absent."""
    if key not in table:
        return default
    value = table[key]
    wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
    if wrong:
        raise AppConfigError(f"{FILE}: {path}.{key} must be {_JSON_KINDS[kind]}, got {_got(value)}")
    if kind is str:
        _check_text(value, f"{path}.{key}")
    return value


def _got(value: Any) -> str:
    return _kind(value) if isinstance(value, (dict, list)) else _excerpt(value)


def _excerpt(value: Any) -> str:
    shown = json.dumps(value) if not isinstance(value, dict) else "{...}"
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _check_text(value: str, path: str) -> None:
    """Text that Docker, TOML and a terminal can carry: no NUL, no lone UTF-16 surrogate."""
    if "\0" in value:
        raise AppConfigError(f"{FILE}: {path} holds a NUL character")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise AppConfigError(f"{FILE}: {path} holds a lone UTF-16 surrogate (like \\ud800), which is no text") from None


def _in_range(value: int, low: int, high: int, path: str, what: str = "") -> int:
    if not low <= value <= high:
        raise AppConfigError(f"{FILE}: {path} must be from {low} to {high}{what}, got {value}")
    return value


def _words(command: str, path: str) -> str:
    """A command split into words as Disco splits it (shlex, no shell)."""
    if problem := command_problem(command):
        raise AppConfigError(f"{FILE}: {path} {problem}")
    return command


# -- the file's parts --------------------------------------------------------------------------

def _version(top: dict[str, Any]) -> None:
    if "version" not in top:
        raise AppConfigError(f'{FILE}: "version" is missing; this server reads "version": "1.0"')
    version = top["version"]
    if isinstance(version, bool) or not isinstance(version, (str, int, float)):
        raise AppConfigError(f'{FILE}: version must be a string like "1.0", got {_got(version)}')
    if str(version).strip() not in VERSIONS:
        raise AppConfigError(f'{FILE}: version {_excerpt(version)} is not one this server reads ("1.0")')


def _relative(value: str, path: str) -> str:
    if not inside_repo(value):
        raise AppConfigError(f"{FILE}: {path} must be a relative path inside the repo, got {_excerpt(value)}")
    return value


def _images(raw: Any) -> tuple[BuildConfig, dict[str, BuildConfig]]:
    """images.default (the root Dockerfile unless it says otherwise) and the others."""
    table = _object(raw, "images", None)
    build, images = BuildConfig(), {}
    for name, image in table.items():
        path = f"images.{name}"
        if name != DEFAULT_IMAGE and not IMAGE_NAME.fullmatch(name):
            raise AppConfigError(f"{FILE}: image name {name!r} is invalid: use up to 30 characters of a-z, 0-9 "
                                 "and '-', starting with a letter")
        fields = _object(image, path, IMAGE_KEYS)
        made = BuildConfig(dockerfile=_relative(_get(fields, "dockerfile", str, path, "Dockerfile"),
                                                f"{path}.dockerfile"),
                           context=_relative(_get(fields, "context", str, path, "."), f"{path}.context"))
        if name == DEFAULT_IMAGE:
            build = made
        else:
            images[name] = made
    return build, images


def _service(name: str, raw: Any) -> ServiceConfig:
    path = f"services.{name}"
    if not SERVICE_NAME.fullmatch(name):
        raise AppConfigError(f"{FILE}: service name {name!r} is invalid here: use up to 30 characters of a-z, "
                             "0-9 and '-', starting with a letter (it names the swarm service)")
    table = _object(raw, path, None)
    for key in table:
        if key in UNSUPPORTED:
            raise AppConfigError(f"{FILE}: {path}.{key} is not supported here: {UNSUPPORTED[key]}")
        if key not in SERVICE_KEYS:
            raise AppConfigError(f"{FILE}: unknown key {path + '.' + key!r}; known keys here: "
                                 f"{', '.join(SERVICE_KEYS)}")
    kind = _get(table, "type", str, path, "container")
    if kind in UNSUPPORTED_TYPES:
        raise AppConfigError(f"{FILE}: {path}.type {kind!r} is not supported here: {UNSUPPORTED_TYPES[kind]}")
    if kind not in TYPES:
        raise AppConfigError(f"{FILE}: {path}.type must be one of {', '.join(TYPES)}, got {_excerpt(kind)}")
    for key in table:
        if key not in KEYS_OF_TYPE[kind]:
            raise AppConfigError(f"{FILE}: {path}.{key} does not apply to a {kind} service: {WHY_NOT[kind]}")
    if kind in ("static", "generator"):
        return _static_site(name, kind, table, path)
    if name == WEB and kind in ("command", "cron"):
        raise AppConfigError(f"{FILE}: {path}.type {kind!r}: web gets the project's HTTP traffic, so it runs all "
                             "the time; give this service another name")
    command = _get(table, "command", str, path)
    base = ServiceConfig(
        name=name,
        command=_words(command, f"{path}.command") if command is not None else None,
        image=_image_name(table, path),
        volumes=_volumes(table, path),
    )
    if kind == "command":
        return replace(base, oneoff=True)
    if kind == "cron":
        return replace(base, schedule=_schedule(table, path), timeout=_timeout(table, path))
    port = _get(table, "port", int, path)
    health = _object(table["health"], f"{path}.health", ("command",)) if "health" in table else None
    if health is not None and "command" not in health:
        raise AppConfigError(f'{FILE}: {path}.health needs a command, like {{"command": "pg_isready"}}')
    internal = _get(table, "exposedInternally", bool, path, False)
    if port is not None:
        _in_range(port, 1, 65535, f"{path}.port")
    elif name == WEB:
        port = DISCO_WEB_PORT
    health_command = None
    if health is not None:
        health_command = _words(_get(health, "command", str, f"{path}.health"), f"{path}.health.command")
    return replace(base, port=port, health_command=health_command, publish=_published_ports(table, path),
                   internal=internal)


def _image_name(table: dict[str, Any], path: str) -> str:
    image = _get(table, "image", str, path, DEFAULT_IMAGE)
    if image != DEFAULT_IMAGE and not IMAGE_NAME.fullmatch(image):
        raise AppConfigError(f"{FILE}: {path}.image {image!r} is not an image name (images: {DEFAULT_IMAGE} "
                             "and the names under images)")
    return image


def _static_site(name: str, kind: str, table: dict[str, Any], path: str) -> ServiceConfig:
    if name != WEB:
        raise AppConfigError(f"{FILE}: {path}.type {kind!r}: only the web service can be a static site "
                             "(it gets the project's domains)")
    folder = _get(table, "publicPath", str, path, DEFAULT_PUBLIC_PATH)
    from_repo = kind == "static"
    if problem := static_folder_problem(folder, from_repo):
        raise AppConfigError(f"{FILE}: {path}.publicPath {problem}, got {_excerpt(folder)}")
    return ServiceConfig(name=name, static=folder, static_source="repo" if from_repo else "image",
                         image=_image_name(table, path))


def _volumes(table: dict[str, Any], path: str) -> tuple[Volume, ...]:
    items = _get(table, "volumes", list, path, [])
    volumes: list[Volume] = []
    for number, item in enumerate(items):
        where = f"{path}.volumes[{number}]"
        fields = _object(item, where, ("name", "destinationPath"))
        for key in ("name", "destinationPath"):
            if key not in fields:
                raise AppConfigError(f'{FILE}: {where} needs "{key}", like {{"name": "data", '
                                     '"destinationPath": "/data"}')
        name, mount = _get(fields, "name", str, where), _get(fields, "destinationPath", str, where)
        if not VOLUME_NAME.fullmatch(name):
            raise AppConfigError(f"{FILE}: {where}.name {_excerpt(name)} must be up to 63 characters of a-z, 0-9, "
                                 "'_', '.' and '-', starting with a letter or digit")
        if not mount.startswith("/") or ".." in PurePosixPath(mount).parts or not mount.strip("/"):
            raise AppConfigError(f"{FILE}: {where}.destinationPath must be an absolute path below /, "
                                 f"got {_excerpt(mount)}")
        if any(v.mount == mount for v in volumes):
            raise AppConfigError(f"{FILE}: {where}.destinationPath {mount!r} is already the mount of another volume")
        volumes.append(Volume(name, mount))
    return tuple(volumes)


def _published_ports(table: dict[str, Any], path: str) -> tuple[PublishedPort, ...]:
    items = _get(table, "publishedPorts", list, path, [])
    ports: list[PublishedPort] = []
    for number, item in enumerate(items):
        where = f"{path}.publishedPorts[{number}]"
        fields = _object(item, where, ("publishedAs", "fromContainerPort", "protocol"))
        for key in ("publishedAs", "fromContainerPort"):
            if key not in fields:
                raise AppConfigError(f'{FILE}: {where} needs "{key}", like {{"publishedAs": 5432, '
                                     '"fromContainerPort": 5432, "protocol": "tcp"}')
        published = _in_range(_get(fields, "publishedAs", int, where), LOWEST_PUBLISHED_PORT, 65535,
                              f"{where}.publishedAs", " (lower ports are the system's and this server's)")
        target = _in_range(_get(fields, "fromContainerPort", int, where), 1, 65535, f"{where}.fromContainerPort")
        protocol = _get(fields, "protocol", str, where, "tcp")
        if protocol not in ("tcp", "udp"):
            raise AppConfigError(f'{FILE}: {where}.protocol must be "tcp" or "udp", got {_excerpt(protocol)}')
        ports.append(PublishedPort(published, target, protocol))
    return tuple(ports)


def _schedule(table: dict[str, Any], path: str) -> str:
    schedule = _get(table, "schedule", str, path, DISCO_SCHEDULE)
    try:
        parse_schedule(schedule)
    except CronError as err:
        raise AppConfigError(f"{FILE}: {path}.schedule: {err}") from None
    return schedule


def _timeout(table: dict[str, Any], path: str) -> int:
    timeout = _get(table, "timeout", int, path, DISCO_TIMEOUT)
    return _in_range(timeout, 1, 86400, f"{path}.timeout", " seconds")


def _release(raw: Any, web: ServiceConfig | None) -> ReleaseConfig:
    """Disco's hook before the new version starts: our release command, run in the default image
    with the web service's volumes (its own volumes may only be some of those)."""
    path = f"services.{RELEASE_HOOK}"
    table = _object(raw, path, None)
    for key in table:
        if key in UNSUPPORTED:
            raise AppConfigError(f"{FILE}: {path}.{key} is not supported here: {UNSUPPORTED[key]}")
        if key not in ("type", "command", "timeout", "image", "volumes"):
            raise AppConfigError(f"{FILE}: {path}.{key} does not apply to the deploy hook, our release command "
                                 "(it has type, command, timeout, image and volumes)")
    if _get(table, "type", str, path) != "command":
        raise AppConfigError(f'{FILE}: {path} is the hook run before each deployment starts: its type must be '
                             '"command"')
    command = _get(table, "command", str, path)
    if command is None:
        raise AppConfigError(f"{FILE}: {path} needs a command (run before the new version starts)")
    if _get(table, "image", str, path, DEFAULT_IMAGE) != DEFAULT_IMAGE:
        raise AppConfigError(f"{FILE}: {path}.image: the release command runs in the default image here")
    web_volumes = web.volumes if web is not None else ()
    for number, volume in enumerate(_volumes(table, path)):
        if volume not in web_volumes:
            raise AppConfigError(f"{FILE}: {path}.volumes[{number}]: the release command gets the web service's "
                                 f"volumes here; {volume.name}:{volume.mount} is not one of them")
    return ReleaseConfig(command=_words(command, f"{path}.command"), timeout=_timeout(table, path))


def _check_across(services: dict[str, ServiceConfig], images: dict[str, BuildConfig]) -> None:
    """The images services name exist; no port is published twice. Named by disco.json's keys."""
    published: dict[tuple[int, str], str] = {}
    for service in services.values():
        path = f"services.{service.name}"
        if service.image != DEFAULT_IMAGE and service.image not in images:
            known = ", ".join([DEFAULT_IMAGE, *sorted(images)])
            raise AppConfigError(f"{FILE}: {path}.image {service.image!r} is not under images ({known})")
        for number, port in enumerate(service.publish):
            other = published.setdefault((port.published, port.protocol), service.name)
            if other != service.name:
                raise AppConfigError(f"{FILE}: {path}.publishedPorts[{number}]: port {port.published}/"
                                     f"{port.protocol} is already published by services.{other}")
