"""Server settings and the data directory layout (ARCHITECTURE.md, "Data directory").

A setting comes from, in order: the command-line flag, the `DISCO_<NAME>` environment
variable, `config.toml` in the data dir, then the default below.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

import tomlkit

CONFIG_NAME = "config.toml"
# The instance prefixes Docker names (service names must stay DNS labels of 63 at most).
INSTANCE_NAME = re.compile(r"[a-z][a-z0-9-]{0,19}")


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("/var/lib/disco")
    ssh_port: int = 2222
    api_port: int = 8800
    instance: str = "disco"
    # Largest pack accepted in one push, in bytes.
    max_push_size: int = 1 << 30
    # Host name shown in "how to push" hints; defaults to this machine's name.
    host: str = ""
    http_port: int = 80
    https_port: int = 443
    caddy_image: str = "caddy:2"
    # When set, each project is served at <project>.<apps_domain>.
    apps_domain: str = ""
    tls: bool = True
    # Images kept per project for instant rollback (the live one included).
    keep_images: int = 5

    @property
    def db_path(self) -> Path:
        return self.data_dir / "disco.sqlite3"

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_NAME

    @property
    def host_key_path(self) -> Path:
        return self.data_dir / "ssh_host_ed25519_key"

    @property
    def repos_dir(self) -> Path:
        return self.data_dir / "repos"

    @property
    def deployments_dir(self) -> Path:
        return self.data_dir / "deployments"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def public_host(self) -> str:
        return self.host or os.uname().nodename


SETTING_HELP = {
    "data_dir": "where state, repos and logs live",
    "ssh_port": "port of the git-over-SSH server",
    "api_port": "port of the REST API, bound to 127.0.0.1",
    "instance": "name prefix of every Docker object this server makes",
    "max_push_size": "largest pack accepted in one push, in bytes",
    "host": "host name shown in push hints (default: this machine's name)",
    "http_port": "host port Caddy serves HTTP on",
    "https_port": "host port Caddy serves HTTPS on",
    "caddy_image": "Docker image of the Caddy proxy",
    "apps_domain": "serve each project at <project>.<apps_domain> (empty: only added domains)",
    "tls": "automatic HTTPS with Let's Encrypt for real domains",
    "keep_images": "images kept per project for rollback",
}


def _coerce(name: str, value: object) -> object:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "int":
            return int(value)  # type: ignore[arg-type]
        if kind == "Path":
            return Path(str(value))
        return str(value)
    except ValueError:
        wanted = "true or false" if kind == "bool" else "a whole number"
        raise ValueError(f"setting {name} must be {wanted}, got {value!r}") from None


def resolve_settings(flags: dict[str, object], environ: dict[str, str] | None = None) -> Settings:
    """Merge flags, environment, config.toml and defaults into one Settings."""
    environ = dict(os.environ) if environ is None else environ
    chosen: dict[str, object] = {}
    for f in fields(Settings):
        env_value = environ.get(f"DISCO_{f.name.upper()}")
        if flags.get(f.name) is not None:
            chosen[f.name] = _coerce(f.name, flags[f.name])
        elif env_value is not None and (env_value or f.type == "str"):
            chosen[f.name] = _coerce(f.name, env_value)
    data_dir = Path(chosen.get("data_dir", Settings.data_dir))  # type: ignore[arg-type]
    for name, value in read_config_file(data_dir / CONFIG_NAME).items():
        chosen.setdefault(name, _coerce(name, value))
    settings = Settings(**chosen)  # type: ignore[arg-type]
    if not INSTANCE_NAME.fullmatch(settings.instance):
        raise ValueError(f"instance {settings.instance!r} must be 1 to 20 characters of a-z, 0-9 and '-', starting with a letter")
    return settings


def read_config_file(path: Path) -> dict[str, object]:
    if not path.exists():
        return {}
    try:
        document = tomlkit.parse(path.read_text())
    except tomlkit.exceptions.ParseError as err:
        raise ValueError(f"{path}: {err}") from None
    known = {f.name for f in fields(Settings)} - {"data_dir"}
    unknown = sorted(set(document) - known)
    if unknown:
        raise ValueError(f"{path}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return document.unwrap()


def write_default_config(settings: Settings) -> bool:
    """Write a commented config.toml with the defaults, once; an existing one is kept.

    Defaults rather than this run's values: a flag given once must not silently stick.
    """
    path = settings.config_path
    if path.exists():
        return False
    document = tomlkit.document()
    document.add(tomlkit.comment("Disco server settings. Flags and DISCO_<NAME> env vars override these."))
    document.add(tomlkit.nl())
    for f in fields(Settings):
        if f.name == "data_dir":
            continue
        document.add(tomlkit.comment(SETTING_HELP[f.name]))
        document.add(f.name, f.default)
    path.write_text(tomlkit.dumps(document))
    return True


def ensure_layout(settings: Settings) -> None:
    """Create the data dir layout; safe to run on every start."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)
    for folder in (settings.repos_dir, settings.deployments_dir, settings.run_dir):
        folder.mkdir(exist_ok=True)
