"""Server settings and the data directory layout (ARCHITECTURE.md, "Data directory").

A setting comes from, in order: the command-line flag, the `DISCO_<NAME>` environment
variable, `config.toml` in the data dir, then the default below.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import tomlkit

CONFIG_NAME = "config.toml"


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
}


def _coerce(name: str, value: object) -> object:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if kind == "int":
            return int(value)  # type: ignore[arg-type]
        if kind == "Path":
            return Path(str(value))
        return str(value)
    except ValueError:
        raise ValueError(f"setting {name} must be a whole number, got {value!r}") from None


def resolve_settings(flags: dict[str, object], environ: dict[str, str] | None = None) -> Settings:
    """Merge flags, environment, config.toml and defaults into one Settings."""
    environ = dict(os.environ) if environ is None else environ
    chosen: dict[str, object] = {}
    for f in fields(Settings):
        env_value = environ.get(f"DISCO_{f.name.upper()}")
        if flags.get(f.name) is not None:
            chosen[f.name] = _coerce(f.name, flags[f.name])
        elif env_value:
            chosen[f.name] = _coerce(f.name, env_value)
    data_dir = Path(chosen.get("data_dir", Settings.data_dir))  # type: ignore[arg-type]
    for name, value in read_config_file(data_dir / CONFIG_NAME).items():
        chosen.setdefault(name, _coerce(name, value))
    return Settings(**chosen)  # type: ignore[arg-type]


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
    return {name: document[name].unwrap() for name in document}


def write_default_config(settings: Settings) -> bool:
    """Write a commented config.toml once; an existing one (maybe hand-edited) is kept."""
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
        document.add(f.name, getattr(settings, f.name))
    path.write_text(tomlkit.dumps(document))
    return True


def ensure_layout(settings: Settings) -> None:
    """Create the data dir layout; safe to run on every start."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)
    for folder in (settings.repos_dir, settings.deployments_dir, settings.run_dir):
        folder.mkdir(exist_ok=True)
