"""An app's configuration written out as `disco.toml` (what `disco config:show` prints).

Pure: a config in, TOML text out, such that reading the text back gives the same config
(`parse_app_config(render_toml(config)) == config`, tests/test_configtoml.py checks it for
generated configs). Only what differs from disco.toml's defaults is written, so a config read
from disco.json comes out as the few lines that say what it means here.
"""

from __future__ import annotations

from typing import Any

import tomlkit
from tomlkit.items import InlineTable, Table

from runtime.appconfig import (
    DEFAULT_CRON_TIMEOUT,
    DEFAULT_HEALTH_TIMEOUT,
    DEFAULT_IMAGE,
    DEFAULT_RELEASE_TIMEOUT,
    WEB,
    AppConfig,
    BuildConfig,
    ServiceConfig,
)


def render_toml(config: AppConfig, header: tuple[str, ...] = ()) -> str:
    """disco.toml's text for the config, after `header` as comment lines.

    ValueError for what only a Procfile can say (a command run by the image's shell): render the
    config of the file (runtime.appsource.file_config_at), which the Procfile is merged into.
    """
    doc = tomlkit.document()
    for line in header:
        doc.add(tomlkit.comment(line))
    if header:
        doc.add(tomlkit.nl())
    if config.build != BuildConfig():
        doc["build"] = _build(config.build)
    if config.images:
        images = tomlkit.table(is_super_table=True)
        for name, image in sorted(config.images.items()):
            images[name] = _build(image)
        doc["images"] = images
    if config.declared:
        services = tomlkit.table(is_super_table=True)
        for name in sorted(config.services, key=lambda n: (n != WEB, n)):  # web first
            services[name] = _service(config.services[name])
        doc["services"] = services
    elif config.services != {WEB: ServiceConfig(WEB)}:
        raise ValueError("the services come from a Procfile, not from disco.toml; render the file's config")
    if config.release is not None:
        if config.release.shell:
            raise ValueError("the release command comes from a Procfile, not from disco.toml")
        release = tomlkit.table()
        if config.release.command:
            release["command"] = config.release.command
        if config.release.timeout != DEFAULT_RELEASE_TIMEOUT:
            release["timeout"] = config.release.timeout
        doc["release"] = release
    return tomlkit.dumps(doc)


def _build(build: BuildConfig) -> Table:
    table = tomlkit.table()
    defaults = BuildConfig()
    if build.dockerfile != defaults.dockerfile:
        table["dockerfile"] = build.dockerfile
    if build.context != defaults.context:
        table["context"] = build.context
    if build.args:
        table["args"] = _inline(build.args)
    return table


def _inline(values: dict[str, Any]) -> InlineTable:
    inline = tomlkit.inline_table()
    inline.update(values)
    return inline


def _service(service: ServiceConfig) -> Table:
    if service.shell:
        raise ValueError(f"services.{service.name}.command comes from a Procfile, not from disco.toml")
    table = tomlkit.table()
    put = table.__setitem__
    if service.image != DEFAULT_IMAGE:
        put("image", service.image)
    if service.static is not None:
        put("static", service.static)
        if service.static_source != "image":
            put("static_source", service.static_source)
    if service.port is not None:
        put("port", service.port)
    if service.command is not None:
        put("command", service.command)
    if service.replicas != 1:
        put("replicas", service.replicas)
    if service.health_command is not None:
        put("health", _inline({"command": service.health_command}))
    elif service.health is not None:
        put("health", service.health)
    if service.health_timeout != DEFAULT_HEALTH_TIMEOUT:
        put("health_timeout", service.health_timeout)
    if service.volumes:
        put("volumes", [f"{v.name}:{v.mount}" for v in service.volumes])
    if service.limits.memory is not None:
        put("memory", service.limits.memory)
    if service.limits.cpus is not None:
        put("cpus", service.limits.cpus)
    if service.limits.pids is not None:
        put("pids", service.limits.pids)
    if service.schedule is not None:
        put("schedule", service.schedule)
        if service.timeout != DEFAULT_CRON_TIMEOUT:
            put("timeout", service.timeout)
    if service.publish:
        put("publish", [str(p) for p in service.publish])
    if service.internal:
        put("internal", True)
    if service.oneoff:
        put("oneoff", True)
    return table
