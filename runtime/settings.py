"""Server settings and the data directory layout (docs/architecture.md, "Data directory").

A setting comes from, in order: the command-line flag, the `DISCO_<NAME>` environment
variable, `config.toml` in the data dir, then the default below.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from runtime.appconfig import Caps, memory_bytes

CONFIG_NAME = "config.toml"
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
# The instance prefixes Docker names (service names must stay DNS labels of 63 at most).
INSTANCE_NAME = re.compile(r"[a-z][a-z0-9-]{0,19}")
MAX_HEALTH_INTERVAL = 30  # past this, each deploy would wait minutes for its first check


def setting(default: object, help: str, shown: str = "") -> Any:
    """One server setting, declared once: the flag, the env var, config.toml's comment and the
    README's table are all made from this (`shown` is the default as people read it)."""
    return field(default=default, metadata={"help": help, "shown": shown or f"`{default}`"})


@dataclass(frozen=True)
class Settings:
    data_dir: Path = setting(Path("/var/lib/disco"), "where state, repos and logs live")
    ssh_port: int = setting(2222, "port of the git-over-SSH server")
    api_port: int = setting(8800, "port of the REST API, bound to 127.0.0.1 (also run/api.sock for Caddy)")
    instance: str = setting("disco", "name prefix of every Docker object this server makes")
    max_push_size: int = setting(1 << 30, "largest pack accepted in one push, in bytes", "1 GiB")
    host: str = setting("", "the server's name, shown in push hints; when it is a domain, Caddy serves the API "
                        "there", "machine name")
    http_port: int = setting(80, "host port Caddy serves HTTP on")
    https_port: int = setting(443, "host port Caddy serves HTTPS on")
    caddy_image: str = setting("caddy:2", "Docker image of the Caddy proxy (setup.sh sets DISCO_CADDY_IMAGE)")
    apps_domain: str = setting("", "serve each project at PROJECT.APPS_DOMAIN (empty: only added domains)",
                               "none")
    tls: bool = setting(True, "automatic HTTPS for real domains, from the ACME CA of acme_ca", "on")
    acme_email: str = setting("", "contact of the ACME account (Let's Encrypt mails expiry warnings there)", "none")
    acme_ca: str = setting(LETS_ENCRYPT, "ACME directory URL of the CA that issues certificates (Let's Encrypt "
                           "staging, ZeroSSL, step-ca, a company CA...)", "Let's Encrypt")
    acme_ca_root: str = setting("", "PEM file of a root to trust for that CA's own HTTPS (private CAs)", "none")
    backup_dir: str = setting("", "where the daemon writes a backup of the data dir each day (empty: none)", "none")
    backup_keep: int = setting(7, "daily backups kept in backup_dir")
    github_url: str = setting("https://github.com", "GitHub's web address (GitHub Enterprise Server: its own)")
    github_api_url: str = setting("https://api.github.com", "GitHub's REST API (GitHub Enterprise Server: "
                                  "https://HOST/api/v3)")
    keep_images: int = setting(5, "images kept per project for rollback (the live one included)")
    listen: str = setting("", "address the SSH server binds (empty: all)", "all")
    # More than one node (issue 14): the registry that carries images to the others.
    registry: str = setting("", "HOST:PORT of an external image registry for a swarm of several nodes (empty: the "
                            "daemon runs its own on this node when a second node is added)", "the daemon's own")
    registry_user: str = setting("", "user name on that external registry", "none")
    registry_password_file: str = setting("", "file holding the password of that user (kept out of the command "
                                          "line and the environment)", "none")
    registry_port: int = setting(5000, "host port of the daemon's own registry (the other nodes pull from it)")
    overlay_encryption: str = setting("auto", "encrypt the overlay networks' traffic between nodes with IPsec ESP: "
                                      "auto (when this kernel has ESP), on, or off")
    registry_image: str = setting("disco-registry:debian", "Docker image of the daemon's own registry (setup.sh "
                                  "builds it from Debian's docker-registry)")
    docker_socket: str = setting("/var/run/docker.sock", "where each node's Docker socket is (the job that prunes "
                                 "images on the other nodes mounts it)")
    docker_cli_image: str = setting("disco-docker-cli:debian", "Docker image with the docker client, which prunes "
                                    "images on the other nodes (setup.sh builds it from Debian's docker.io)")
    # What one user or project may cost the server (issue: one project cannot hurt another).
    max_object_size: int = setting(512 << 20, "largest git object a push may hold, inflated, in bytes", "512 MiB")
    max_push_inflated_size: int = setting(2 << 30, "largest total of a push's objects, inflated, in bytes", "2 GiB")
    max_ssh_sessions: int = setting(8, "git sessions one user may have open at once")
    ssh_idle_timeout: int = setting(120, "seconds a git session may wait for its client before it is closed")
    max_streams: int = setting(10, "API streams (logs, deployment output, run) one user may hold open at once")
    max_services: int = setting(20, "services one project may run")
    max_replicas: int = setting(20, "replicas one service may run")
    default_memory: str = setting("1G", "memory a task or one-off container may use, unless disco.toml says")
    default_cpus: str = setting("", "CPUs a task may use, like 0.5 or 2, unless disco.toml says (empty: no limit)",
                                "no limit")
    default_pids: int = setting(4096, "processes a task may run, unless disco.toml says")
    max_memory: str = setting("8G", "the most memory disco.toml may give a task")
    max_pids: int = setting(32768, "the most processes disco.toml may give a task")
    # Each check is a process Docker starts in the task: on a 2-core VM ten idle apps checked
    # every second kept 0.7 of its cores busy in Docker (0.15 every 5 s). Docker 20.10 has no
    # quicker interval for a starting task (start_interval is Docker 25), so a deploy's first
    # check also waits this long: the admin chooses between the two.
    health_interval: int = setting(1, "seconds between the health checks of a running task, 1 to "
                                   f"{MAX_HEALTH_INTERVAL} (more: less CPU for many idle apps, but each deploy "
                                   "waits up to that long for its first check)")

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
    def caps(self) -> Caps:
        return Caps(self.max_services, self.max_replicas, memory_bytes(self.max_memory), self.max_pids)

    @property
    def cache_key_path(self) -> Path:
        """The key that makes each project's build cache ids its own (runtime/dockerfile.py)."""
        return self.data_dir / "build_cache_key"

    @property
    def repos_dir(self) -> Path:
        return self.data_dir / "repos"

    @property
    def deployments_dir(self) -> Path:
        return self.data_dir / "deployments"

    @property
    def cron_dir(self) -> Path:
        """The output of scheduled runs: cron/<project>/<service>/<run id>.log."""
        return self.data_dir / "cron"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def public_host(self) -> str:
        return self.host or os.uname().nodename


def help_of(name: str) -> str:
    return str(_FIELDS[name].metadata["help"])


def settings_table() -> str:
    """The README's table of `disco serve` settings, made from the declarations above."""
    lines = ["| flag | env | default | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(Settings):
        flag = flag_of(f.name)
        shown_flag = f"`{flag}/--no-{flag[2:]}`" if f.type == "bool" else f"`{flag}`"
        lines.append(f"| {shown_flag} | `DISCO_{f.name.upper()}` | {f.metadata['shown']} | {f.metadata['help']} |")
    return "\n".join(lines) + "\n"


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def _coerce(name: str, value: object) -> object:
    kind = _FIELDS[name].type
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
            if isinstance(value, bool) or not isinstance(value, int | str):  # TOML's true or 2.5
                raise ValueError
            return int(value)
        if kind == "Path":
            return Path(str(value))
        return str(value)
    except ValueError:
        wanted = "true or false" if kind == "bool" else "a whole number"
        raise ValueError(f"setting {name} must be {wanted}, got {value!r}") from None


_FIELDS = {f.name: f for f in fields(Settings)}


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
    _check_limits(settings)
    for name in ("github_url", "github_api_url"):
        # Installation tokens travel to these: never in clear, but to this machine (a test GitHub).
        if not re.fullmatch(r"(https://[^\s/]+|http://(127\.0\.0\.1|localhost)(:\d+)?)(/[^\s]*)?",
                            getattr(settings, name)):
            raise ValueError(f"setting {name} must be an https:// URL, got {getattr(settings, name)!r}")
    if settings.acme_email and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", settings.acme_email):
        raise ValueError(f"setting acme_email must be an email address, got {settings.acme_email!r}")
    if not settings.acme_ca.startswith("https://"):
        raise ValueError(f"setting acme_ca must be an https:// ACME directory URL, got {settings.acme_ca!r}")
    if settings.acme_ca_root and not Path(settings.acme_ca_root).is_file():
        raise ValueError(f"setting acme_ca_root: {settings.acme_ca_root} is not a file (a PEM certificate)")
    if settings.overlay_encryption not in ("auto", "on", "off"):
        raise ValueError(f"setting overlay_encryption must be auto, on or off, got {settings.overlay_encryption!r}")
    if not INSTANCE_NAME.fullmatch(settings.instance):
        raise ValueError(f"instance {settings.instance!r} must be 1 to 20 characters of a-z, 0-9 and '-', starting with a letter")
    return settings


def _check_limits(settings: Settings) -> None:
    for name in ("default_memory", "max_memory"):
        try:
            memory_bytes(getattr(settings, name))
        except ValueError as err:
            raise ValueError(f"setting {name}: {err}") from None
    if memory_bytes(settings.default_memory) > memory_bytes(settings.max_memory):
        raise ValueError(f"setting default_memory ({settings.default_memory}) is above max_memory "
                         f"({settings.max_memory})")
    if settings.default_cpus:
        try:
            if not 0.01 <= float(settings.default_cpus) <= 1024:
                raise ValueError
        except ValueError:
            raise ValueError(f"setting default_cpus must be a number of CPUs like 0.5 or 2, or empty, "
                             f"got {settings.default_cpus!r}") from None
    for name in ("max_services", "max_replicas", "max_streams", "max_ssh_sessions", "ssh_idle_timeout",
                 "default_pids", "max_pids", "max_object_size", "max_push_inflated_size", "backup_keep"):
        if getattr(settings, name) < 1:
            raise ValueError(f"setting {name} must be at least 1")
    if not 1 <= settings.health_interval <= MAX_HEALTH_INTERVAL:
        raise ValueError(f"setting health_interval must be from 1 to {MAX_HEALTH_INTERVAL} seconds, "
                         f"got {settings.health_interval}")


def read_config_file(path: Path) -> dict[str, object]:
    if not path.exists():
        return {}
    try:
        # tomllib, not tomlkit: reading keeps no comments, and the daemon then loads tomlkit
        # only to write the file the first time.
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: {err}") from None
    known = {f.name for f in fields(Settings)} - {"data_dir"}
    unknown = sorted(set(document) - known)
    if unknown:
        raise ValueError(f"{path}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return document


def write_default_config(settings: Settings) -> bool:
    """Write a commented config.toml with the defaults, once; an existing one is kept.

    Defaults rather than this run's values: a flag given once must not silently stick.
    """
    path = settings.config_path
    if path.exists():
        return False
    import tomlkit  # here: it keeps the comments, and is needed for this one write only

    document = tomlkit.document()
    document.add(tomlkit.comment("Disco server settings. Flags and DISCO_<NAME> env vars override these."))
    document.add(tomlkit.nl())
    for f in fields(Settings):
        if f.name == "data_dir":
            continue
        document.add(tomlkit.comment(help_of(f.name)))
        document.add(f.name, f.default)
    path.write_text(tomlkit.dumps(document))
    return True


def load_or_create_secret(path: Path) -> bytes:
    """32 random bytes kept in `path` (0600), made the first time."""
    if path.exists():
        return path.read_bytes()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(32))
    os.replace(tmp, path)  # two first builds at once: both keys are fine, the last one stays
    return path.read_bytes()


def ensure_layout(settings: Settings) -> None:
    """Create the data dir layout; safe to run on every start."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)
    for folder in (settings.repos_dir, settings.deployments_dir, settings.run_dir):
        folder.mkdir(exist_ok=True)
