"""The `disco` command: `serve` runs the daemon; the team commands work on a local data dir.

Every server setting is a flag and a `DISCO_<NAME>` environment variable (see runtime/settings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import getpass
import os
import json
import logging
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import uvicorn

from api import cli_remote as remote
from api.app import build_app
from api.client import ClientError
from gitserver.repos import RepoRegistry
from gitserver.server import GitServer
from hooks import apikeys, deploy, team
from hooks.deploy import Platform
from hooks.errors import Refused
from runtime.caddy import API_SOCKET_NAME, CaddyAdmin
from runtime.docker_engine import Engine
from runtime.settings import Settings, ensure_layout, resolve_settings, write_default_config
from runtime.sshkeys import load_or_create_host_key
from runtime.store import Store


class CLIError(Exception):
    """Printed as one line on stderr, exit status 1."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except (CLIError, ClientError, Refused, ValueError) as err:
        print(f"disco: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="disco", description="Deploy apps with git push. Team commands act on --data-dir when given "
        "(on the server), and through the API of the logged-in server otherwise.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="server data directory (env DISCO_DATA_DIR): act on it directly")
    common.add_argument("--server", help="which stored login to use (default: the last one)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("-p", "--project", help="project name (default: from the `disco` git remote)")

    def command(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    serve = command("serve", cmd_serve, "run the daemon (git over SSH, the API, deploys)")
    serve.add_argument("--ssh-port", type=int, help="SSH port (env DISCO_SSH_PORT, default 2222)")
    serve.add_argument("--api-port", type=int, help="API port on 127.0.0.1 (env DISCO_API_PORT, default 8800)")
    serve.add_argument("--instance", help="prefix of Docker object names (env DISCO_INSTANCE, default disco)")
    serve.add_argument("--max-push-size", type=int, help="largest push in bytes (env DISCO_MAX_PUSH_SIZE, default 1 GiB)")
    serve.add_argument("--host", help="host name shown in push hints (env DISCO_HOST)")
    serve.add_argument("--http-port", type=int, help="host port for HTTP (env DISCO_HTTP_PORT, default 80)")
    serve.add_argument("--https-port", type=int, help="host port for HTTPS (env DISCO_HTTPS_PORT, default 443)")
    serve.add_argument("--caddy-image", help="Caddy image (env DISCO_CADDY_IMAGE, default caddy:2)")
    serve.add_argument("--apps-domain", help="serve projects at <project>.<apps-domain> (env DISCO_APPS_DOMAIN)")
    serve.add_argument("--tls", action=argparse.BooleanOptionalAction, default=None,
                       help="automatic HTTPS for real domains (env DISCO_TLS, default on)")
    serve.add_argument("--keep-images", type=int, help="images kept per project for rollback (default 5)")
    serve.add_argument("--listen", default="", help="address to listen on for SSH (default: all)")

    init = command("init", cmd_init, "create the data dir and config, the first admin and their API key")
    init.add_argument("--admin", default="admin", help="name of the first admin (default: admin)")
    init.add_argument("--key", metavar="FILE|-", help="the admin's SSH public key file, or - for stdin")

    login = command("login", remote.cmd_login, "store a server's URL and API key in ~/.config/disco/config.toml")
    login.add_argument("url", help="like http://127.0.0.1:8800 or https://api.example.com")
    login.add_argument("--key", help="API key (asked for when not given)")
    login.add_argument("--name", default="default", help="name to store this server under (default: default)")

    users_add = command("users:add", cmd_users_add, "add a team member")
    users_add.add_argument("name")
    users_add.add_argument("--role", choices=["admin", "deployer"], required=True)
    for name in ("users", "users:list"):
        command(name, cmd_users_list, "list team members, roles and grants")
    command("users:remove", cmd_users_remove, "remove a team member, their keys and grants").add_argument("name")
    for verb, handler, help in (
        ("grant", cmd_users_grant, "let a deployer push to and read a project"),
        ("revoke", cmd_users_revoke, "take a project grant away"),
    ):
        sub = command(f"users:{verb}", handler, help)
        sub.add_argument("name")
        sub.add_argument("project", metavar="PROJECT_NAME")

    keys_add = command("keys:add", cmd_keys_add, "register an SSH public key for a user")
    keys_add.add_argument("name", help="the user the key belongs to")
    keys_add.add_argument("file", metavar="FILE|-", help="public key file (like ~/.ssh/id_ed25519.pub), or - for stdin")
    for name in ("keys", "keys:list"):
        command(name, cmd_keys_list, "list registered SSH keys").add_argument("--user", help="only this user's keys")
    command("keys:remove", cmd_keys_remove, "remove an SSH key").add_argument("fingerprint")

    command("apikeys", remote.cmd_apikeys, "list API keys (never their secrets)").add_argument(
        "--all", action="store_true", help="everyone's (admins)")
    create = command("apikeys:create", remote.cmd_apikeys_create, "create an API key; its secret is shown once")
    create.add_argument("label", help="what or where the key is for, like 'laptop' or 'ci'")
    create.add_argument("--expires-in-days", type=int, help="the key stops working after this many days")
    create.add_argument("--user", help="for another user (admins)")
    command("apikeys:revoke", remote.cmd_apikeys_revoke, "revoke an API key at once").add_argument("id", type=int)

    command("projects", remote.cmd_projects, "list projects")
    command("projects:create", remote.cmd_projects_create, "create a project").add_argument("name")
    command("projects:info", remote.cmd_projects_info, "live deployment, domains and scale of a project")
    remove = command("projects:remove", remote.cmd_projects_remove, "delete a project with its services and images")
    remove.add_argument("--volumes", action="store_true", help="also delete its named volumes (data!)")
    remove.add_argument("--confirm", metavar="NAME", help="the project's name, to confirm")

    deploy_cmd = command("deploy", remote.cmd_deploy, "deploy the deploy branch (or --branch/--commit) now")
    deploy_cmd.add_argument("--commit", help="a commit id in the project's repo")
    deploy_cmd.add_argument("--branch", help="a branch of the project's repo")
    deploy_cmd.add_argument("--no-follow", action="store_true", help="return once queued")
    listing = command("deployments", remote.cmd_deployments, "deployments, newest first")
    listing.add_argument("--limit", type=int, default=20)
    output = command("deployments:output", remote.cmd_deployments_output, "a deployment's output, live while it runs")
    output.add_argument("number", type=int, nargs="?", help="default: the newest")
    output.add_argument("--follow", action="store_true", help="(always on: follows until the deployment ends)")
    cancel = command("deployments:cancel", remote.cmd_deployments_cancel, "cancel a queued or running deployment")
    cancel.add_argument("number", type=int, nargs="?", help="default: the newest")
    back = command("rollback", remote.cmd_rollback, "put an earlier deployment's image live again")
    back.add_argument("number", type=int, nargs="?", help="default: the one live before the current one")
    back.add_argument("--no-follow", action="store_true", help="return once queued")

    command("env", remote.cmd_env, "env var names (values with --values, admins)").add_argument(
        "--values", action="store_true", help="show values too (admins)")
    env_set = command("env:set", remote.cmd_env_set, "set env vars and redeploy")
    env_set.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    env_set.add_argument("--no-deploy", action="store_true", help="store only; the next deploy uses them")
    env_unset = command("env:unset", remote.cmd_env_unset, "unset env vars and redeploy")
    env_unset.add_argument("names", nargs="+", metavar="KEY")
    env_unset.add_argument("--no-deploy", action="store_true", help="store only; the next deploy uses them")

    command("domains", remote.cmd_domains, "domains routed to the project")
    command("domains:add", remote.cmd_domains_add, "route a domain to the project").add_argument("domain")
    command("domains:remove", remote.cmd_domains_remove, "stop routing a domain").add_argument("domain")

    command("scale", remote.cmd_scale, "replicas of each service")
    command("scale:set", remote.cmd_scale_set, "set replicas, like web=3 worker=1").add_argument(
        "counts", nargs="+", metavar="SERVICE=COUNT")

    logs = command("logs", remote.cmd_logs, "recent log lines of a service")
    logs.add_argument("--follow", "-f", action="store_true", help="keep streaming new lines")
    logs.add_argument("--service", default="web")
    logs.add_argument("--tail", type=int, default=100)

    link = command("github:link", remote.cmd_github_link, "deploy on pushes to a GitHub repo (prints the webhook form)")
    link.add_argument("repo", metavar="OWNER/REPO")
    link.add_argument("--branch", default="main", help="the branch that deploys (default: main)")
    link.add_argument("--clone-url", help="fetch from here instead (GitHub Enterprise, any git host)")
    link.add_argument("--token", help="a fine-grained token for a private repo (never shown again)")
    link.add_argument("--force-mirror", action="store_true", help="GitHub wins over pushes made over SSH")
    command("github:unlink", remote.cmd_github_unlink, "stop deploying from GitHub")
    command("github:secret", remote.cmd_github_secret, "make a new webhook secret").add_argument(
        "--rotate", action="store_true", help="make a new secret (the old one stops working)")
    command("github:deploy-key", remote.cmd_github_deploy_key, "the public deploy key to add to a private repo")
    command("github:deliveries", remote.cmd_github_deliveries, "webhook deliveries received")

    run = command("run", remote.cmd_run, "run a one-off command in a new container of the live image")
    run.add_argument("--service", default="web", help="whose volumes to mount (default: web)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    return parser


# -- serve -----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    settings = resolve_settings(
        {
            "data_dir": args.data_dir,
            "ssh_port": args.ssh_port,
            "api_port": args.api_port,
            "instance": args.instance,
            "max_push_size": args.max_push_size,
            "host": args.host,
            "http_port": args.http_port,
            "https_port": args.https_port,
            "caddy_image": args.caddy_image,
            "apps_domain": args.apps_domain,
            "tls": args.tls,
            "keep_images": args.keep_images,
        }
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    # Their per-packet chatter would drown our one line per connection and push.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    logging.getLogger("dulwich").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ensure_layout(settings)
    write_default_config(settings)
    store = Store(settings.db_path)
    try:
        asyncio.run(_serve(settings, store, args.listen))
    finally:
        store.close()
    return 0


async def _serve(settings: Settings, store: Store, listen: str) -> None:
    log = logging.getLogger("disco")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    platform = Platform(settings, store, Engine(settings.instance), CaddyAdmin(settings.run_dir))
    for settled in deploy.recover(platform):
        log.info("deployment #%d of %s left unfinished: now %s", settled.number, settled.project, settled.status)
    workers = ThreadPoolExecutor(max_workers=64, thread_name_prefix="git")
    # Not awaited, and a daemon thread: SIGTERM stops the daemon at once even while Caddy is
    # still starting (or never will, with an image that cannot run); the next start goes on.
    threading.Thread(target=_start_proxy, args=(platform, settings), name="proxy", daemon=True).start()
    git = GitServer(platform, RepoRegistry(settings.repos_dir), workers)
    await git.start(listen)
    api = EmbeddedServer(uvicorn.Config(build_app(platform), log_level="warning", lifespan="off",
                                        timeout_graceful_shutdown=10))
    api_task = asyncio.create_task(api.serve(sockets=api_sockets(settings)))
    log.info("ready (data dir %s, instance %s)", settings.data_dir, settings.instance)
    await stop.wait()
    log.info("shutting down")
    api.should_exit = True
    await git.stop()
    await api_task
    # A deploy still running is left to swarm; the next start settles its record.
    workers.shutdown(wait=False, cancel_futures=True)


def _start_proxy(platform: Platform, settings: Settings) -> None:
    platform.start_proxy()
    log = logging.getLogger("disco")
    if platform.proxy_error:
        log.error("%s", platform.proxy_error)
    else:
        log.info("proxy up on ports %d/%d", settings.http_port, settings.https_port)


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside our event loop: the daemon, not uvicorn, owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def api_sockets(settings: Settings) -> list[socket.socket]:
    """The API on 127.0.0.1:<api-port> for this machine, and on run/api.sock for Caddy."""
    # proto must say TCP: asyncio only sets TCP_NODELAY on such sockets, and without it small
    # responses wait ~40 ms for the client's delayed ACK (Nagle).
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", settings.api_port))
    path = settings.run_dir / API_SOCKET_NAME
    path.unlink(missing_ok=True)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(path))
    os.chmod(path, 0o660)
    for sock in (tcp, unix):
        sock.listen(512)
        sock.set_inheritable(True)
    return [tcp, unix]


# -- init ------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    settings = resolve_settings({"data_dir": args.data_dir})
    ensure_layout(settings)
    if write_default_config(settings):
        print(f"wrote {settings.config_path}")
    load_or_create_host_key(settings.host_key_path)
    store = Store(settings.db_path)
    try:
        key_line = _read_key(args.key) if args.key else None
        if not store.list_users():
            # The first admin, and the only time their first API key is shown.
            team.add_user(store, _actor(), args.admin, "admin")
            _, secret = apikeys.create(store, _actor(), args.admin, "created by disco init")
            print(f"added admin {args.admin}")
            print(f"API key for {args.admin} (shown once, store it now): {secret}")
        elif store.get_user(args.admin) is None and key_line:
            raise CLIError(f"no user named {args.admin!r}; add them with: disco users:add {args.admin} --role admin")
        if key_line:
            key = team.add_ssh_key(store, _actor(), args.admin, key_line)
            print(f"added key {key.fingerprint} for {args.admin}")
    finally:
        store.close()
    print(f"data dir ready: {settings.data_dir}")
    return 0


def or_remote(remote_handler: Any) -> Any:
    """Team commands act on the local store when given a data dir, and through the API otherwise."""
    def wrap(local_handler: Any) -> Any:
        @functools.wraps(local_handler)
        def handler(args: argparse.Namespace) -> int:
            return local_handler(args) if _local(args) else remote_handler(args)
        return handler
    return wrap


# -- team ------------------------------------------------------------------------------------


@or_remote(remote.remote_users_add)
def cmd_users_add(args: argparse.Namespace) -> int:
    with _local_store(args) as store:
        user = team.add_user(store, _actor(), args.name, args.role)
    print(f"added {user.role} {user.name}")
    return 0


@or_remote(remote.remote_users_list)
def cmd_users_list(args: argparse.Namespace) -> int:
    with _local_store(args) as store:
        rows = [
            {"name": u.name, "role": u.role, "projects": store.grants_of(u.name), "created_at": u.created_at}
            for u in store.list_users()
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(
            ["NAME", "ROLE", "PROJECTS", "CREATED"],
            [[r["name"], r["role"], "(all)" if r["role"] == "admin" else ",".join(r["projects"]) or "-", r["created_at"]] for r in rows],
        )
    return 0


@or_remote(remote.remote_users_remove)
def cmd_users_remove(args: argparse.Namespace) -> int:
    with _local_store(args) as store:
        team.remove_user(store, _actor(), args.name)
    print(f"removed {args.name} with their keys and grants")
    return 0


@or_remote(remote.remote_users_grant)
def cmd_users_grant(args: argparse.Namespace) -> int:
    with _local_store(args) as store:
        team.grant(store, _actor(), args.name, args.project)
    print(f"{args.name} may now push to and read {args.project}")
    return 0


@or_remote(remote.remote_users_revoke)
def cmd_users_revoke(args: argparse.Namespace) -> int:
    with _local_store(args) as store:
        team.revoke(store, _actor(), args.name, args.project)
    print(f"{args.name} no longer has access to {args.project}")
    return 0


def cmd_keys_add(args: argparse.Namespace) -> int:
    key_line = _read_key(args.file)
    if not _local(args):
        return remote.remote_keys_add(args, key_line)
    with _local_store(args) as store:
        key = team.add_ssh_key(store, _actor(), args.name, key_line)
    print(f"added {key.key_type} key {key.fingerprint} for {key.user}")
    return 0


@or_remote(remote.remote_keys_list)
def cmd_keys_list(args: argparse.Namespace) -> int:
    with _local_store(args) as store:
        keys = store.list_ssh_keys(args.user)
    rows = [
        {"user": k.user, "type": k.key_type, "fingerprint": k.fingerprint, "comment": k.comment, "added_at": k.added_at}
        for k in keys
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(
            ["USER", "TYPE", "FINGERPRINT", "COMMENT", "ADDED"],
            [[r["user"], r["type"], r["fingerprint"], r["comment"] or "-", r["added_at"]] for r in rows],
        )
    return 0


@or_remote(remote.remote_keys_remove)
def cmd_keys_remove(args: argparse.Namespace) -> int:
    with _local_store(args) as store:
        key = team.remove_ssh_key(store, _actor(), args.fingerprint)
    print(f"removed key {key.fingerprint} of {key.user}")
    return 0


# -- helpers ---------------------------------------------------------------------------------


def _local(args: argparse.Namespace) -> bool:
    """On the server with a data dir: act on it. Anywhere else: go through the API."""
    return bool(args.data_dir or os.environ.get("DISCO_DATA_DIR"))


class _local_store:
    """Open the store of the data dir named by --data-dir or DISCO_DATA_DIR."""

    def __init__(self, args: argparse.Namespace) -> None:
        settings = resolve_settings({"data_dir": args.data_dir})
        if not settings.db_path.exists():
            raise CLIError(f"{settings.data_dir} is not a Disco data dir (run: disco init --data-dir {settings.data_dir})")
        self._store = Store(settings.db_path)

    def __enter__(self) -> Store:
        return self._store

    def __exit__(self, *exc: object) -> None:
        self._store.close()


def _read_key(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text()
    except OSError as err:
        raise CLIError(f"cannot read key file {source}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise CLIError(f"{source} is not a text file: expected an OpenSSH public key (.pub)") from None


def _actor() -> str:
    return f"shell:{getpass.getuser()}"


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
