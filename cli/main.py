"""The `disco` command: every verb, its arguments, and which transport carries it.

`serve` runs the daemon (cli/serve.py); `init` and, with a data dir, the team commands act on the
server's store directly; everything else goes through the REST API of the logged-in server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

from cli import remote
from cli.client import ApiClient, ClientError, load_login
from cli.output import SSH_KEYS, USERS, show
from cli.team import LocalTeam, RemoteTeam, TeamBackend
from hooks import apikeys
from hooks.errors import Refused
from runtime.backup import BackupError, restore_backup, write_backup
from runtime.settings import Settings, ensure_layout, flag_of, help_of, resolve_settings, write_default_config
from runtime.sshkeys import load_or_create_host_key
from runtime.store import Store

Handler = Callable[[argparse.Namespace], int]


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

    def command(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    serve = command("serve", cmd_serve, "run the daemon (git over SSH, the API, deploys)")
    add_setting_flags(serve)

    backup = command("backup", cmd_backup, "write a backup of the data dir (--data-dir) to FILE, while the daemon runs")
    backup.add_argument("file", type=Path)
    restore = command("restore", cmd_restore, "make a new data dir (--data-dir, empty) from a backup FILE")
    restore.add_argument("file", type=Path)

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
    command("dashboard", remote.cmd_dashboard, "print a one-time sign-in link to the web dashboard "
            "(and open it where a browser is available)").add_argument(
        "--no-open", action="store_true", help="only print the link")

    command("projects", remote.cmd_projects, "list projects")
    create = command("projects:create", remote.cmd_projects_create,
                     "create a project (with --github, linked through the GitHub App and deployed)")
    create.add_argument("name")
    create.add_argument("--github", metavar="OWNER/REPO", help="a repo the GitHub App can reach")
    create.add_argument("--branch", default="main", help="the branch that deploys (default: main)")
    create.add_argument("--no-follow", action="store_true", help="do not wait for the first deployment")
    command("projects:info", remote.cmd_projects_info,
            "live deployment, domains, scale and internal service names of a project")
    config_show = command("config:show", remote.cmd_config_show,
                          "the app's configuration as disco.toml (from its disco.toml or disco.json)")
    config_show.add_argument("--ref", help="a branch, tag or commit (default: the live commit)")
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
    cancel = command("deployments:cancel", remote.cmd_deployments_cancel, "cancel a queued or running deployment")
    cancel.add_argument("number", type=int, nargs="?", help="default: the newest")
    back = command("rollback", remote.cmd_rollback, "put an earlier deployment's image live again")
    back.add_argument("number", type=int, nargs="?", help="default: the one live before the current one")
    back.add_argument("--no-follow", action="store_true", help="return once queued")

    command("env", remote.cmd_env, "env var names (values too with --values)").add_argument(
        "--values", action="store_true", help="show values too (whoever may deploy the project; audited)")
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
    app_create = command("github:app:create", remote.cmd_github_app_create,
                         "create this server's GitHub App (prints a one-time link to open in your browser)")
    app_create.add_argument("--org", default="", help="create it for this GitHub organization")
    command("github:app", remote.cmd_github_app, "the GitHub App, its installations and the repos they reach")
    command("github:app:remove", remote.cmd_github_app_remove,
            "forget the GitHub App and unlink the projects linked through it").add_argument(
        "--yes", action="store_true", help="confirm")
    command("github:repos", remote.cmd_github_repos, "the repos the GitHub App can reach (asked of GitHub)")

    command("cron", remote.cmd_cron, "scheduled services of the live deployment, with their next and last run")
    cron_runs = command("cron:runs", remote.cmd_cron_runs, "runs of a scheduled service, newest first")
    cron_runs.add_argument("service")
    cron_runs.add_argument("--limit", type=int, default=20)
    cron_run = command("cron:run", remote.cmd_cron_run, "run a scheduled service now and show its output")
    cron_run.add_argument("service")
    cron_run.add_argument("--no-follow", action="store_true", help="start it and return")

    command("nodes", remote.cmd_nodes, "the swarm's nodes: address, role, availability, state, labels, and the "
            "tasks of this server's apps on each")
    add = command("nodes:add", remote.cmd_nodes_add, "print the command that joins a new machine to the swarm as a "
                  "worker (admins); with --ssh, run it there")
    add.add_argument("--ssh", metavar="USER@HOST", help="run it on that machine as root over your own ssh "
                     "(this checkout's setup.sh is sent along)")
    label = command("nodes:label", remote.cmd_nodes_label, "set (KEY=VALUE) and remove (KEY-) labels of a node (admins)")
    label.add_argument("name", help="the node's hostname or ID")
    label.add_argument("changes", nargs="+", metavar="KEY=VALUE|KEY-")
    remove_node = command("nodes:remove", remote.cmd_nodes_remove, "drain a node, wait until this server's tasks there "
                          "run elsewhere, and remove it from the swarm (admins)")
    remove_node.add_argument("name", help="the node's hostname or ID")
    remove_node.add_argument("--force", action="store_true", help="remove it without waiting for its tasks to move")

    run = command("run", remote.cmd_run, "run a one-off command in a new container of the live image")
    run.add_argument("--service", default="web", help="whose volumes to mount (default: web)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    return parser


def add_setting_flags(serve: argparse.ArgumentParser) -> None:
    """A flag per server setting, from its one declaration (runtime/settings.py)."""
    for f in fields(Settings):
        if f.name == "data_dir":  # every command has --data-dir
            continue
        help = f"{help_of(f.name)} (env DISCO_{f.name.upper()}, default {f.metadata['shown'].strip('`')})"
        if f.type == "bool":
            serve.add_argument(flag_of(f.name), action=argparse.BooleanOptionalAction, default=None, help=help)
        else:
            serve.add_argument(flag_of(f.name), type=int if f.type == "int" else str, help=help)


# -- serve and init: on the server ---------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from cli.serve import serve  # the daemon's imports (uvicorn, asyncssh, dulwich) only when serving

    serve(resolve_settings({f.name: getattr(args, f.name, None) for f in fields(Settings)}))
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    settings = resolve_settings({"data_dir": args.data_dir})
    try:
        made = write_backup(settings.data_dir, args.file)
    except BackupError as err:
        raise CLIError(str(err)) from None
    print(f"wrote {made.path} ({made.repos} repos, {made.size} bytes); it holds the server's keys: keep it safe")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    if not args.data_dir:
        raise CLIError("give the new data dir with --data-dir DIR (an empty or missing folder)")
    try:
        manifest = restore_backup(args.file, Path(args.data_dir))
    except BackupError as err:
        raise CLIError(str(err)) from None
    print(f"restored the backup of {manifest['created_at']} ({len(manifest['repos'])} repos) into {args.data_dir}; "
          f"start it with: disco serve --data-dir {args.data_dir}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    settings = resolve_settings({"data_dir": args.data_dir})
    ensure_layout(settings)
    if write_default_config(settings):
        print(f"wrote {settings.config_path}")
    load_or_create_host_key(settings.host_key_path)
    store = Store(settings.db_path)
    try:
        key_line = _read_key(args.key) if args.key else None
        local = LocalTeam(store)
        if not store.list_users():
            # The first admin, and the only time their first API key is shown.
            local.add_user(args.admin, "admin")
            _, secret = apikeys.create(store, local.actor, args.admin, "created by disco init")
            print(f"added admin {args.admin}")
            print(f"API key for {args.admin} (shown once, store it now): {secret}")
        elif store.get_user(args.admin) is None and key_line:
            raise CLIError(f"no user named {args.admin!r}; add them with: disco users:add {args.admin} --role admin")
        if key_line:
            key = local.add_key(args.admin, key_line)
            print(f"added key {key['fingerprint']} for {args.admin}")
    finally:
        store.close()
    print(f"data dir ready: {settings.data_dir}")
    return 0


# -- team: users and SSH keys, on the local store or through the API ------------------------------


@contextlib.contextmanager
def team_backend(args: argparse.Namespace) -> Iterator[TeamBackend]:
    """On the server with a data dir: act on its store. Anywhere else: go through the API."""
    if not (args.data_dir or os.environ.get("DISCO_DATA_DIR")):
        yield RemoteTeam(ApiClient(load_login(args.server)))
        return
    settings = resolve_settings({"data_dir": args.data_dir})
    if not settings.db_path.exists():
        raise CLIError(f"{settings.data_dir} is not a Disco data dir (run: disco init --data-dir {settings.data_dir})")
    store = Store(settings.db_path)
    try:
        yield LocalTeam(store)
    finally:
        store.close()


def cmd_users_add(args: argparse.Namespace) -> int:
    with team_backend(args) as backend:
        user = backend.add_user(args.name, args.role)
    print(f"added {user['role']} {user['name']}")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    with team_backend(args) as backend:
        show(args, backend.users(), *USERS)
    return 0


def cmd_users_remove(args: argparse.Namespace) -> int:
    with team_backend(args) as backend:
        backend.remove_user(args.name)
    print(f"removed {args.name} with their keys and grants")
    return 0


def cmd_users_grant(args: argparse.Namespace) -> int:
    with team_backend(args) as backend:
        backend.grant(args.name, args.project)
    print(f"{args.name} may now push to and read {args.project}")
    return 0


def cmd_users_revoke(args: argparse.Namespace) -> int:
    with team_backend(args) as backend:
        backend.revoke(args.name, args.project)
    print(f"{args.name} no longer has access to {args.project}")
    return 0


def cmd_keys_add(args: argparse.Namespace) -> int:
    key_line = _read_key(args.file)
    with team_backend(args) as backend:
        key = backend.add_key(args.name, key_line)
    print(f"added {key['type']} key {key['fingerprint']} for {key['user']}")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    with team_backend(args) as backend:
        show(args, backend.keys(args.user), *SSH_KEYS)
    return 0


def cmd_keys_remove(args: argparse.Namespace) -> int:
    with team_backend(args) as backend:
        key = backend.remove_key(args.fingerprint)
    print(f"removed key {key['fingerprint']} of {key['user']}")
    return 0


def _read_key(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text()
    except OSError as err:
        raise CLIError(f"cannot read key file {source}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise CLIError(f"{source} is not a text file: expected an OpenSSH public key (.pub)") from None
