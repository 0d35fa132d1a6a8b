"""The `disco` commands a team uses from their laptops, through the REST API of a server."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cli.client import ApiClient, ClientError, Login, load_login, save_login
from cli.output import show
from runtime.store import WENT_LIVE


def client(args: argparse.Namespace) -> ApiClient:
    return ApiClient(load_login(getattr(args, "server", None)))


def project(args: argparse.Namespace) -> str:
    """--project, else the project named by the `disco` git remote of the current directory."""
    if getattr(args, "project", None):
        return args.project
    result = subprocess.run(["git", "remote", "get-url", "disco"], capture_output=True, text=True)
    if result.returncode != 0:
        raise ClientError("no project given: pass --project NAME, or run this in a repo with a `disco` git remote")
    name = result.stdout.strip().rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return name.removesuffix(".git")


# -- login ----------------------------------------------------------------------------------

def cmd_login(args: argparse.Namespace) -> int:
    if args.key:
        key = args.key
    elif sys.stdin.isatty():
        key = getpass.getpass("API key (from `disco init` or `disco apikeys:create`): ").strip()
    else:
        key = sys.stdin.readline().strip()
    if not key:
        raise ClientError("no API key given: pass --key KEY or type it when asked")
    login = Login(args.name, args.url.rstrip("/"), key)
    me = ApiClient(login).get("/meta")
    path = save_login(login)
    print(f"logged in to {login.url} as {me['user']['name']} ({me['user']['role']}); saved in {path}")
    for warning in (me.get("disk") or {}).get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """A one-time sign-in link to the dashboard, opened in a browser where there is one."""
    api = client(args)
    made = api.post("/dashboard/links", None)
    # The address this login reaches the server by (it may be a tunnel), with the server's token;
    # the token is in the fragment, which a browser never sends to a server.
    url = f"{api.login.url}/sign-in/link#{made['url'].split('#', 1)[1]}"
    minutes = made["expires_in"] // 60
    print(f"sign in to the dashboard with this link (works once, for {minutes} minutes):\n  {url}")
    if not args.no_open and _has_a_browser():
        import webbrowser

        webbrowser.open(url)
    return 0


def _has_a_browser() -> bool:
    """A graphical browser can open: a display, a Mac, or $BROWSER. On a bare server Python's
    webbrowser would start a text browser in this terminal instead."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("BROWSER")
                or sys.platform == "darwin")


# -- projects and deployments ------------------------------------------------------------------

def cmd_projects(args: argparse.Namespace) -> int:
    show(args, client(args).get("/projects"), ["NAME", "LIVE", "DEPLOY BRANCH", "CREATED BY"],
         lambda p: [p["name"], f"#{p['live_deployment']}" if p["live_deployment"] else "-", p["deploy_branch"],
                    p["created_by"]])
    return 0


def cmd_projects_create(args: argparse.Namespace) -> int:
    if args.github:
        created = client(args).post("/projects", {"name": args.name, "github": args.github, "branch": args.branch})
        print(f"created project {created['name']}, linked through the GitHub App to {args.github} {args.branch}; "
              f"deployment #{created['deployment']} queued")
        return 0 if args.no_follow else follow(args, created["name"], created["deployment"])
    created = client(args).post("/projects", {"name": args.name})
    print(f"created project {created['name']}; deploy it with: git remote add disco <ssh url>/{created['name']} "
          "&& git push disco main")
    return 0


def cmd_projects_info(args: argparse.Namespace) -> int:
    info = client(args).get(f"/projects/{project(args)}")
    if args.json:
        show(args, info)
        return 0
    live = info["live_deployment"]
    print(f"project   {info['name']}")
    print(f"live      {'#%d %s (%s)' % (live['number'], live['commit'][:7], live['finished_at']) if live else 'none'}")
    print(f"domains   {', '.join(info['domains']) or '-'}")
    print(f"scale     {', '.join(f'{k}={v}' for k, v in info['scale'].items()) or 'from disco.toml'}")
    for shared in info.get("internal", []):  # reachable from other projects' containers by this name
        print(f"internal  {shared['service']} as {shared['name']}")
    for placed in client(args).get(f"/projects/{project(args)}/placement"):
        running = ", ".join(f"{count} on {node}" for node, count in placed["running"].items()) or "no task running"
        kept = f"; kept to {', '.join(placed['kept_to'])} (its volume data)" if placed["kept_to"] else ""
        waiting = f"; waiting: {placed['waiting']}" if placed["waiting"] else ""
        print(f"runs      {placed['service']}: {running}{kept}{waiting}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    shown = client(args).get(f"/projects/{project(args)}/config", ref=args.ref)
    if args.json:
        show(args, shown)
        return 0
    print(shown["toml"], end="")
    return 0


def cmd_projects_remove(args: argparse.Namespace) -> int:
    name = project(args)
    if args.confirm != name:
        raise ClientError(f"this deletes {name} with its services and images; repeat with --confirm {name}")
    removed = client(args).delete(f"/projects/{name}", volumes=args.volumes)["removed"]
    print(f"removed {name}" + (f": {', '.join(removed)}" if removed else ""))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    body = {k: v for k, v in {"commit": args.commit, "branch": args.branch}.items() if v}
    name = project(args)
    queued = client(args).post(f"/projects/{name}/deployments", body)
    print(f"deployment #{queued['number']} of {name} queued")
    return 0 if args.no_follow else follow(args, name, queued["number"])


def follow(args: argparse.Namespace, name: str, number: int) -> int:
    """Stream a deployment's output live; exit status says whether it went live."""
    started = time.monotonic()
    final = _follow_output(args, f"/projects/{name}/deployments/{number}/output")
    elapsed = time.monotonic() - started
    if final["status"] in WENT_LIVE:
        print(f"deployment #{number} is {final['status']} ({elapsed:.1f} s)")
        return 0
    print(f"deployment #{number} {final['status']}: {final['reason']}", file=sys.stderr)
    return 1


def _follow_output(args: argparse.Namespace, path: str) -> dict:
    """Print a log's lines as they come (its SSE stream, resumed with Last-Event-ID if it
    drops) and return its `end` event."""
    last_id = None
    while True:
        try:
            for event_id, event, data in client(args).events(path, last_event_id=last_id):
                if event == "line":
                    last_id = event_id
                    print(data, flush=True)
                elif event == "end":
                    return dict(json.loads(data))
        except ClientError as err:
            if "lost the connection" not in str(err):
                raise
            print(f"(reconnecting: {err})", file=sys.stderr)
            time.sleep(1)


def cmd_deployments(args: argparse.Namespace) -> int:
    show(args, client(args).get(f"/projects/{project(args)}/deployments", limit=args.limit),
         ["#", "STATUS", "COMMIT", "SOURCE", "BY", "CREATED", "REASON"],
         lambda d: [d["number"], d["status"], d["commit"][:7], d["source"], d["user"], d["created_at"],
                    d["reason"][:60]])
    return 0


def _number(args: argparse.Namespace, name: str) -> int:
    if args.number:
        return args.number
    found = client(args).get(f"/projects/{name}/deployments", limit=1)
    if not found:
        raise ClientError(f"{name} has no deployments yet")
    return found[0]["number"]


def cmd_deployments_output(args: argparse.Namespace) -> int:
    name = project(args)
    return follow(args, name, _number(args, name))


def cmd_deployments_cancel(args: argparse.Namespace) -> int:
    name = project(args)
    number = _number(args, name)
    client(args).post(f"/projects/{name}/deployments/{number}/cancel")
    print(f"cancel of deployment #{number} requested")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    name = project(args)
    queued = client(args).post(f"/projects/{name}/rollback", {"number": args.number} if args.number else {})
    print(f"rollback queued as deployment #{queued['number']}")
    return 0 if args.no_follow else follow(args, name, queued["number"])


# -- env, domains, scale -----------------------------------------------------------------------

def cmd_env(args: argparse.Namespace) -> int:
    data = client(args).get(f"/projects/{project(args)}/env", values=True if args.values else None)
    if args.json:
        show(args, data)
    elif args.values:
        for key, value in data["values"].items():
            print(f"{key}={value}")
    else:
        print("\n".join(data["names"]) if data["names"] else "(no env vars)")
    return 0


def cmd_env_set(args: argparse.Namespace) -> int:
    values = {}
    for pair in args.pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ClientError(f"expected KEY=VALUE, got {key!r}")
        values[key] = value
    name = project(args)
    result = client(args).post(f"/projects/{name}/env", {"values": values, "deploy": not args.no_deploy})
    print(f"set {', '.join(sorted(values))} on {name}")
    return _maybe_follow(args, name, result["deployment"])


def cmd_env_unset(args: argparse.Namespace) -> int:
    name = project(args)
    result = client(args).post(f"/projects/{name}/env/unset", {"names": args.names, "deploy": not args.no_deploy})
    print(f"unset {', '.join(args.names)} on {name}")
    return _maybe_follow(args, name, result["deployment"])


def _maybe_follow(args: argparse.Namespace, name: str, number: int | None) -> int:
    if number is None:
        return 0
    print(f"redeploying as deployment #{number}")
    return follow(args, name, number)


def cmd_domains(args: argparse.Namespace) -> int:
    domains = client(args).get(f"/projects/{project(args)}/domains")
    if not domains and not args.json:
        print("(no domains)")
        return 0
    show(args, domains, ["DOMAIN", "CERTIFICATE", "ISSUER", "EXPIRES", "REASON"],
         lambda d: [d["domain"], d["certificate"]["state"], d["certificate"]["issuer"] or "-",
                    d["certificate"]["expires_at"][:10] or "-", d["certificate"]["reason"] or "-"])
    return 0


def cmd_domains_add(args: argparse.Namespace) -> int:
    name = project(args)
    added = client(args).post(f"/projects/{name}/domains", {"domain": args.domain})
    print(f"{added['domain']} now routes to {name}")
    if added.get("warning"):
        print(f"warning: {added['warning']}", file=sys.stderr)
    return 0


def cmd_domains_remove(args: argparse.Namespace) -> int:
    name = project(args)
    client(args).delete(f"/projects/{name}/domains/{args.domain}")
    print(f"{args.domain} no longer routes to {name}")
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    counts = client(args).get(f"/projects/{project(args)}/scale")
    show(args, counts) if args.json else print("\n".join(f"{k}={v}" for k, v in counts.items()) or "(nothing runs)")
    return 0


def cmd_scale_set(args: argparse.Namespace) -> int:
    counts = {}
    for pair in args.counts:
        service, sep, value = pair.partition("=")
        if not sep or not value.isdigit():
            raise ClientError(f"expected SERVICE=COUNT like web=3, got {pair!r}")
        counts[service] = int(value)
    result = client(args).post(f"/projects/{project(args)}/scale", counts)
    print(" ".join(f"{k}={v}" for k, v in result.items()))
    return 0


# -- logs and run -----------------------------------------------------------------------------

def cmd_logs(args: argparse.Namespace) -> int:
    for line in client(args).lines(f"/projects/{project(args)}/logs", service=args.service, tail=args.tail,
                                   follow=args.follow or None):
        print(line, flush=True)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ClientError("give the command after --, like: disco run -- ls /data")
    exit_code = 1
    for _, event, data in client(args).events(f"/projects/{project(args)}/run", "POST",
                                              {"command": command, "service": args.service}):
        if event == "output":
            print(data, flush=True)
        elif event == "exit":
            exit_code = json.loads(data)["exit_code"]
    return exit_code


# -- scheduled services ------------------------------------------------------------------------

def cmd_cron(args: argparse.Namespace) -> int:
    def last(run: dict | None) -> str:
        if run is None:
            return "never"
        return f"#{run['id']} {run['status']} {run['started_at']}" + (f" ({run['reason']})" if run["reason"] else "")

    show(args, client(args).get(f"/projects/{project(args)}/cron"), ["SERVICE", "SCHEDULE", "NEXT (UTC)", "LAST RUN"],
         lambda s: [s["service"], s["schedule"], s["next_at"], last(s["last_run"])])
    return 0


def cmd_cron_runs(args: argparse.Namespace) -> int:
    runs = client(args).get(f"/projects/{project(args)}/cron/{args.service}/runs", limit=args.limit)
    show(args, runs, ["#", "STATUS", "TRIGGER", "DUE", "STARTED", "FINISHED", "EXIT", "REASON"],
         lambda r: [r["id"], r["status"], r["trigger"] + (f" by {r['user']}" if r["user"] else ""),
                    r["due_at"] or "-", r["started_at"], r["finished_at"] or "-",
                    "-" if r["exit_code"] is None else r["exit_code"], r["reason"][:60]])
    return 0


def cmd_cron_run(args: argparse.Namespace) -> int:
    name = project(args)
    run = client(args).post(f"/projects/{name}/cron/{args.service}/runs")
    print(f"run #{run['id']} of {args.service} started", file=sys.stderr)
    if args.no_follow:
        return 0
    final = _follow_output(args, f"/projects/{name}/cron/{args.service}/runs/{run['id']}/output")
    if final["status"] == "succeeded":
        return 0
    print(f"run #{run['id']} {final['status']}: {final['reason']}", file=sys.stderr)
    return final["exit_code"] or 1


# -- API keys ---------------------------------------------------------------------------------

def cmd_apikeys(args: argparse.Namespace) -> int:
    keys = client(args).get("/api-keys", all=True if args.all else None)
    show(args, keys, ["ID", "USER", "LABEL", "PREFIX", "LAST USED", "EXPIRES", "REVOKED"],
         lambda k: [k["id"], k["user"], k["label"], k["prefix"] + "…", k["last_used_at"] or "never",
                    k["expires_at"] or "never", k["revoked_at"] or "-"])
    return 0


def cmd_apikeys_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"label": args.label}
    if args.expires_in_days:
        body["expires_in_days"] = args.expires_in_days
    if args.user:
        body["user"] = args.user
    key = client(args).post("/api-keys", body)
    if args.json:
        show(args, key)
    else:
        print(f"API key {key['id']} for {key['user']} ({key['label']}); shown once, store it now:")
        print(key["key"])
    return 0


def cmd_apikeys_revoke(args: argparse.Namespace) -> int:
    key = client(args).delete(f"/api-keys/{args.id}")
    print(f"revoked API key {key['id']} ({key['label']}) of {key['user']}")
    return 0


# -- GitHub -----------------------------------------------------------------------------------

def _print_form(form: dict) -> None:
    print("In GitHub: the repo's Settings > Webhooks > Add webhook, then:")
    print(f"  Payload URL:   {form['payload_url']}")
    print(f"  Content type:  {form['content_type']}")
    print(f"  Secret:        {form['secret']}")
    print(f"  Events:        {form['events']}")
    print(f"Pushes to {form['branch']} of {form['repo']} deploy; fetched from {form['clone_url']}.")


def cmd_github_link(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"repo": args.repo, "branch": args.branch, "force_mirror": args.force_mirror}
    if args.clone_url:
        body["clone_url"] = args.clone_url
    if args.token:
        body["token"] = args.token
    form = client(args).post(f"/projects/{project(args)}/github", body)
    show(args, form) if args.json else _print_form(form)
    return 0


def cmd_github_unlink(args: argparse.Namespace) -> int:
    name = project(args)
    client(args).delete(f"/projects/{name}/github")
    print(f"{name} is no longer linked to GitHub (remove the webhook in GitHub too)")
    return 0


def cmd_github_secret(args: argparse.Namespace) -> int:
    name = project(args)
    if not args.rotate:
        raise ClientError("the secret is shown only when made: use --rotate to make a new one")
    form = client(args).post(f"/projects/{name}/github/secret")
    show(args, form) if args.json else _print_form(form)
    return 0


def cmd_github_deploy_key(args: argparse.Namespace) -> int:
    key = client(args).post(f"/projects/{project(args)}/github/deploy-key")["public_key"]
    if args.json:
        show(args, {"public_key": key})
    else:
        print("Add this as a read-only deploy key in GitHub (the repo's Settings > Deploy keys):")
        print(key)
    return 0


def cmd_github_app_create(args: argparse.Namespace) -> int:
    made = client(args).post("/github/app", {"org": args.org} if args.org else {})
    print("Open this link in your browser within 10 minutes; it works once, and only the browser that opens it")
    print("can finish creating the App. GitHub then asks you to install it on your repos.")
    print(made["url"])
    return 0


def cmd_github_app(args: argparse.Namespace) -> int:
    state = client(args).get("/github/app")
    if args.json:
        show(args, state)
        return 0
    app = state["app"]
    if app is None:
        print("no GitHub App yet: disco github:app:create makes one")
        return 0
    print(f"app       {app['name']} ({app['slug']}, id {app['id']}) by {app['owner']}")
    print(f"install   {app['install_url']}")
    for installation in state["installations"]:
        suspended = " (suspended)" if installation["suspended"] else ""
        print(f"installed on {installation['account']}{suspended}: {', '.join(installation['repos']) or '-'}")
    if not state["installations"]:
        print("not installed on any repo yet")
    return 0


def cmd_github_app_remove(args: argparse.Namespace) -> int:
    if not args.yes:
        raise ClientError("this forgets the App and unlinks the projects linked through it; repeat with --yes")
    unlinked = client(args).delete("/github/app")["unlinked"]
    print("the GitHub App is forgotten here (delete it on GitHub too)"
          + (f"; unlinked: {', '.join(unlinked)}" if unlinked else ""))
    return 0


def cmd_github_repos(args: argparse.Namespace) -> int:
    show(args, client(args).get("/github/repos"), ["REPO", "PRIVATE", "DEFAULT BRANCH", "PROJECT"],
         lambda r: [r["repo"], "yes" if r["private"] else "no", r["default_branch"], r["project"] or "-"])
    return 0


def cmd_github_deliveries(args: argparse.Namespace) -> int:
    show(args, client(args).get(f"/projects/{project(args)}/github/deliveries"),
         ["DELIVERY", "EVENT", "DEPLOYMENT", "RECEIVED", "RESULT"],
         lambda d: [d["delivery"], d["event"], d["deployment"] or "-", d["received_at"], d["result"][:60]])
    return 0


# -- nodes of the swarm ------------------------------------------------------------------------

# Sent to the new machine by nodes:add --ssh: the one beside this command (a checkout of the project).
SETUP_SCRIPT = Path(__file__).resolve().parent.parent / "setup.sh"
SWARM_PORTS = "2377/tcp, 7946/tcp and udp, 4789/udp (and IP protocol 50, ESP, with overlay encryption)"
REGISTRY_WAIT = 240.0  # seconds nodes:add waits for the join command: the server's registry may be starting


def cmd_nodes(args: argparse.Namespace) -> int:
    def labels(node: dict) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(node["labels"].items())) or "-"

    def role(node: dict) -> str:
        return "manager (leader)" if node["leader"] else node["role"]

    show(args, client(args).get("/nodes"), ["NAME", "ADDRESS", "ROLE", "AVAILABILITY", "STATE", "TASKS", "LABELS"],
         lambda n: [n["name"] + (" (this server)" if n["here"] else ""), n["address"], role(n), n["availability"],
                    n["state"], n["tasks"], labels(n)])
    return 0


def cmd_nodes_add(args: argparse.Namespace) -> int:
    # The first time, the server makes its registry and waits until it answers (hooks/registry.py).
    print("asking the server for the join command (the first time, it starts its image registry)", file=sys.stderr)
    joining = client(args).post("/nodes/join", timeout=REGISTRY_WAIT)
    if args.json and not args.ssh:
        show(args, joining)
        return 0
    if not args.ssh:
        print("On the new machine, as root, in a copy of this repository (setup.sh installs Docker, starts it and")
        print(f"joins the swarm at {joining['manager']}; the machines must reach each other on {SWARM_PORTS},")
        print(f"and it must reach the registry at {joining['registry']}, which carries the apps' images to it):")
        print(f"  {joining['command']}")
        print("The token lets any machine join this swarm: keep it secret.", file=sys.stderr)
        return 0
    if not SETUP_SCRIPT.is_file():
        raise ClientError(f"no setup.sh beside this disco command ({SETUP_SCRIPT}); copy setup.sh to the new machine "
                          f"and run there: {joining['command']}")
    # The arguments go in with the script on stdin: the token stays out of both machines' process lists.
    words = ["set", "--", "join", joining["manager"], joining["token"]]
    if joining["registry_ca"]:
        words += ["--registry", joining["registry"], joining["registry_ca"]]
    script = shlex.join(words) + "\n" + SETUP_SCRIPT.read_text()
    print(f"joining {args.ssh} to the swarm at {joining['manager']} (setup.sh join, over ssh)", file=sys.stderr)
    result = subprocess.run(["ssh", "--", args.ssh, "bash", "-s"], input=script, text=True)
    if result.returncode != 0:
        raise ClientError(f"setup.sh join on {args.ssh} exited {result.returncode} (its output is above)")
    print(f"{args.ssh} joined; `disco nodes` lists it")
    return 0


def cmd_nodes_label(args: argparse.Namespace) -> int:
    set_labels: dict[str, str] = {}
    remove: list[str] = []
    for change in args.changes:
        key, sep, value = change.partition("=")
        if sep:
            set_labels[key] = value
        elif change.endswith("-") and len(change) > 1:
            remove.append(change[:-1])
        else:
            raise ClientError(f"expected KEY=VALUE to set a label or KEY- to remove one, got {change!r}")
    body: dict[str, Any] = {}
    if set_labels:
        body["set"] = set_labels
    if remove:
        body["remove"] = remove
    node = client(args).post(f"/nodes/{args.name}/labels", body)
    if args.json:
        show(args, node)
    else:
        print(f"{node['name']}: " + (" ".join(f"{k}={v}" for k, v in sorted(node["labels"].items())) or "no labels"))
    return 0


def cmd_nodes_remove(args: argparse.Namespace) -> int:
    path = f"/nodes/{args.name}" + ("?force=true" if args.force else "")
    for _, event, data in client(args).events(path, "DELETE"):
        if event == "progress":
            print(data, flush=True)
        elif event == "error":
            print(f"disco: {json.loads(data)['message']}", file=sys.stderr)
            return 1
        elif event == "removed":
            removed = json.loads(data)
            if args.json:
                show(args, removed)
                return 0
            node = removed["node"]
            print(f"{node['name']} ({node['id']}) is no longer a node of the swarm")
            if removed["was_up"]:
                print(f"it was still up: run `docker swarm leave` on {node['name']}, or its Docker keeps asking to "
                      "rejoin", file=sys.stderr)
            return 0
    raise ClientError("the server ended the removal without saying how it went; `disco nodes` shows where it is")
